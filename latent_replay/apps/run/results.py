"""Experiment results: the JSON record, the accuracy plot and the short table.

Kept apart from the runner so that benchmarks and the stream demo can reuse the atomic JSON writer
and the plot without pulling in the experiment loop.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ...atomic import write_bytes_atomic


def summarize(runs: List[dict]) -> dict:
    """Mean and spread of the accuracy curves over the finished runs (curves of equal length)."""
    curves = [[b["accuracy"] for b in r["batches"]] for r in runs if r["batches"]]
    if not curves:
        return {}
    n = min(len(c) for c in curves)
    arr = np.array([c[:n] for c in curves])
    finals = arr[:, -1]
    return {
        "runs": len(curves),
        "batches": n,
        "mean_curve": arr.mean(0).round(6).tolist(),
        "std_curve": arr.std(0).round(6).tolist(),
        "final_accuracy_mean": float(finals.mean()),
        "final_accuracy_std": float(finals.std()),
        "final_accuracy_min": float(finals.min()),
        "final_accuracy_max": float(finals.max()),
        "train_seconds_median_per_batch": float(np.median([b["train_s"] for r in runs for b in r["batches"]])),
        "front_seconds_median_per_batch": float(np.median([b["front_s"] for r in runs for b in r["batches"]])),
    }


def plot_accuracy(path: Path, runs: List[dict], title: str, reference: Optional[float] = None) -> None:
    """Accuracy vs. training batch: one thin line per run, the mean in bold (like the paper's figures)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for r in runs:
        acc = [100 * b["accuracy"] for b in r["batches"]]
        ax.plot(range(len(acc)), acc, lw=0.9, alpha=0.55, label=f"run {r['run']}")
    summary = summarize(runs)
    if summary and summary["runs"] > 1:
        mean = 100 * np.array(summary["mean_curve"])
        std = 100 * np.array(summary["std_curve"])
        x = np.arange(len(mean))
        ax.plot(x, mean, color="black", lw=2.2, label="mean")
        ax.fill_between(x, mean - std, mean + std, color="black", alpha=0.12, lw=0)
    if reference is not None:
        ax.axhline(100 * reference, color="tab:red", ls="--", lw=1, label=f"reference {100 * reference:.0f}%")
    ax.set_xlabel("training batch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    write_bytes_atomic(Path(path), png.getvalue())


def table(runs: List[dict]) -> str:
    """A short human table: per run final accuracy and timings, then the mean and spread."""
    lines = [f"{'run':>4} {'batches':>8} {'final acc':>10} {'train s/batch':>14} {'front s/batch':>14} "
             f"{'pool MiB':>9} {'peak RSS MiB':>13}"]
    for r in runs:
        if not r["batches"]:
            continue
        last = r["batches"][-1]
        lines.append(f"{r['run']:>4} {len(r['batches']):>8} {100 * last['accuracy']:>9.2f}% "
                     f"{np.median([b['train_s'] for b in r['batches']]):>14.3f} "
                     f"{np.median([b['front_s'] for b in r['batches']]):>14.3f} "
                     f"{last['pool_bytes'] / 2**20:>9.1f} {last['peak_rss_mb']:>13.0f}")
    s = summarize(runs)
    if s:
        lines.append(f"final accuracy over {s['runs']} run(s): {100 * s['final_accuracy_mean']:.2f}% "
                     f"+- {100 * s['final_accuracy_std']:.2f} (min {100 * s['final_accuracy_min']:.2f}, "
                     f"max {100 * s['final_accuracy_max']:.2f})")
    return "\n".join(lines)


def load_results(path: Path) -> Optional[Dict]:
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
