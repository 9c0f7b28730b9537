"""Experiment results: the JSON record (with the accuracy matrix and the continual-learning metrics
of `metrics.py`), the accuracy plot, the accuracy-matrix heat map and the short table.

Kept apart from the runner so that benchmarks and the stream demo can reuse the atomic JSON writer
and the plot without pulling in the experiment loop.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ...atomic import write_bytes_atomic


MATRIX_KEYS = ("accuracy_matrix", "first_batch", "metrics")  # what `run_entry` adds to a run


def run_entry(run: dict) -> dict:
    """A run as results.json holds it: the per-class accuracies of its batch records gathered into
    `accuracy_matrix` (batches x classes, None where a class has no test frame), the batch where each
    class first appears (`first_batch`, None if never) and its `metrics` (see metrics.py). Runs whose
    records predate per-class accuracies get None for all three. Idempotent."""
    from .metrics import as_matrix, first_batches, metrics

    batches = run.get("batches") or []
    if not batches or "class_accuracy" not in batches[-1]:
        return run if all(k in run for k in MATRIX_KEYS) else dict(run, **{k: None for k in MATRIX_KEYS})
    out = dict(run, batches=[{k: v for k, v in b.items() if k != "class_accuracy"} for b in batches])
    if not all("class_accuracy" in b and "classes" in b for b in batches):  # resumed from an older record
        return dict(out, **{k: None for k in MATRIX_KEYS})
    rows = [b["class_accuracy"] for b in batches]
    matrix = as_matrix(rows)
    first = first_batches([b["classes"] for b in batches], matrix.shape[1])
    m = metrics(matrix, first, [b["accuracy"] for b in batches])
    return dict(out, accuracy_matrix=[[None if v is None else round(float(v), 6) for v in row] for row in rows],
                first_batch=[int(f) if f >= 0 else None for f in first], metrics=m)


def _mean_std(values: List[Optional[float]]) -> Tuple[Optional[float], Optional[float]]:
    vals = [v for v in values if v is not None]
    return (float(np.mean(vals)), float(np.std(vals))) if vals else (None, None)


def mean_matrix(runs: List[dict]) -> Optional[np.ndarray]:
    """The accuracy matrices of the runs averaged element-wise (over the first batches all runs have;
    NaN where no run has a value), or None when no run has one or their class counts differ."""
    from .metrics import as_matrix

    mats = [as_matrix(r["accuracy_matrix"]) for r in map(run_entry, runs) if r.get("accuracy_matrix")]
    if not mats or len({m.shape[1] for m in mats}) != 1:
        return None
    n = min(m.shape[0] for m in mats)
    stack = np.stack([m[:n] for m in mats])
    count = (~np.isnan(stack)).sum(0)
    total = np.nansum(stack, axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def summarize(runs: List[dict]) -> dict:
    """Mean and spread over the finished runs: accuracy curve (curves of equal length), final and
    average accuracy, forgetting and backward transfer, and the mean accuracy matrix."""
    runs = [run_entry(r) for r in runs]
    curves = [[b["accuracy"] for b in r["batches"]] for r in runs if r["batches"]]
    if not curves:
        return {}
    n = min(len(c) for c in curves)
    arr = np.array([c[:n] for c in curves])
    finals = arr[:, -1]
    summary = {
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
    for key in ("average_accuracy", "forgetting", "backward_transfer", "mean_accuracy_over_batches"):
        mean, std = _mean_std([(r["metrics"] or {}).get(key) for r in runs if r["batches"]])
        summary[f"{key}_mean"], summary[f"{key}_std"] = mean, std
    matrix = mean_matrix(runs)
    summary["accuracy_matrix_mean"] = None if matrix is None else \
        [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in matrix]
    return summary


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_batches(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, plt, path: Path) -> None:
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    write_bytes_atomic(Path(path), png.getvalue())


def plot_accuracy(path: Path, runs: List[dict], title: str, reference: Optional[float] = None) -> None:
    """Accuracy vs. training batch: the mean over the runs in bold (also for a single run), one thin
    line per run and the spread when there are several (like the paper's figures)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    summary = summarize(runs)
    if summary and summary["runs"] > 1:
        for r in runs:
            acc = [100 * b["accuracy"] for b in r["batches"]]
            ax.plot(range(len(acc)), acc, lw=0.9, alpha=0.55, label=f"run {r['run']}")
    if summary:
        mean = 100 * np.array(summary["mean_curve"])
        std = 100 * np.array(summary["std_curve"])
        x = np.arange(len(mean))
        label = "mean of %d runs" % summary["runs"] if summary["runs"] > 1 else f"run {runs[0]['run']}"
        ax.plot(x, mean, color="black", lw=2.2, marker="o" if len(mean) <= 30 else None, ms=3.5, label=label)
        if summary["runs"] > 1:
            ax.fill_between(x, mean - std, mean + std, color="black", alpha=0.12, lw=0, label="+- 1 std")
        ax.annotate(f"{mean[-1]:.1f}%", (x[-1], mean[-1]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if reference is not None:
        ax.axhline(100 * reference, color="tab:red", ls="--", lw=1, label=f"reference {100 * reference:.0f}%")
    ax.set_xlabel("training batch")
    _integer_batches(ax)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _save(fig, plt, path)


def plot_accuracy_matrix(path: Path, runs: List[dict], title: str, class_names: Optional[List[str]] = None) -> bool:
    """The accuracy matrix as a heat map: one row per class (in order of first appearance), one column
    per training batch, colour = test accuracy on that class after that batch; the mean over the runs
    when there are several. A dot marks the batch where a class first appears (single run). Returns
    False (nothing written) when no run has a matrix."""
    entries = [run_entry(r) for r in runs]
    matrix = mean_matrix(entries)
    if matrix is None or not matrix.size:
        return False
    firsts = np.array([[np.inf if f is None else f for f in r["first_batch"]] for r in entries if r["first_batch"]])
    first = firsts.mean(0)[: matrix.shape[1]]
    order = [c for c in np.argsort(first, kind="stable") if not np.isnan(matrix[:, c]).all()]
    plt = _figure()
    height = min(12.0, max(3.0, 0.6 + 0.2 * len(order)))
    fig, ax = plt.subplots(figsize=(min(12.0, max(6.0, 2.5 + 0.12 * matrix.shape[0])), height), dpi=110)
    shown = np.ma.masked_invalid(100 * matrix[:, order].T)
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")  # grey: no test frame of that class
    image = ax.imshow(shown, aspect="auto", interpolation="nearest", cmap=cmap, vmin=0, vmax=100)
    if len(entries) == 1:
        ys = [k for k, c in enumerate(order) if np.isfinite(first[c])]
        ax.scatter([first[order[k]] for k in ys], ys, s=14, c="white", edgecolors="black", linewidths=0.5)
    if len(order) <= 60:
        names = class_names or []
        ax.set_yticks(range(len(order)))
        ax.set_yticklabels([names[c] if c < len(names) else str(c) for c in order], fontsize=6 if len(order) > 20 else 8)
    ax.set_xlabel("training batch" + ("  (dot: the batch where the class first appears)" if len(entries) == 1 else ""))
    _integer_batches(ax)
    ax.set_ylabel("class (in order of first appearance)")
    runs_note = f"mean of {len(entries)} runs" if len(entries) > 1 else f"run {entries[0]['run']}"
    ax.set_title(f"{title}\naccuracy per class after each batch ({runs_note})", fontsize=9)
    fig.colorbar(image, ax=ax, label="test accuracy (%)", fraction=0.04, pad=0.02)
    fig.tight_layout()
    _save(fig, plt, path)
    return True


def stopped_note(runs: List[dict]) -> Optional[str]:
    """'stopped at batch k of n' (with several runs: 'stopped run 0 at batch k of n, ...') for runs that
    ended before their last batch, as --max-batches stops them; None when every run is complete. Said in
    the table, results.json (`stopped`) and the plot title."""
    early = [r for r in runs if not r.get("complete", True) and r.get("n_batches")]
    if not early:
        return None
    return "stopped " + ", ".join((f"run {r['run']} " if len(runs) > 1 else "")
                                  + f"at batch {len(r['batches'])} of {r['n_batches']}" for r in early)


def _pct(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def table(runs: List[dict]) -> str:
    """A short human table: per run final and average accuracy, forgetting, backward transfer (in %
    or percentage points) and timings, then the mean and spread over the runs."""
    lines = [f"{'run':>4} {'batches':>8} {'final acc %':>11} {'avg acc %':>9} {'forgetting':>10} {'BWT':>7} "
             f"{'train s/batch':>14} {'front s/batch':>14} {'pool MiB':>9} {'peak RSS MiB':>13}"]
    for r in map(run_entry, runs):
        if not r["batches"]:
            continue
        last = r["batches"][-1]
        m = r["metrics"] or {}
        lines.append(f"{r['run']:>4} {len(r['batches']):>8} {100 * last['accuracy']:>11.2f} "
                     f"{_pct(m.get('average_accuracy')):>9} {_pct(m.get('forgetting')):>10} "
                     f"{_pct(m.get('backward_transfer'), True):>7} "
                     f"{np.median([b['train_s'] for b in r['batches']]):>14.3f} "
                     f"{np.median([b['front_s'] for b in r['batches']]):>14.3f} "
                     f"{last['pool_bytes'] / 2**20:>9.1f} {last['peak_rss_mb']:>13.0f}")
    s = summarize(runs)
    stopped = stopped_note(runs)
    if stopped:
        lines.append(f"{stopped} (--max-batches): the same command continues")
    if s:
        what = "final accuracy" if not stopped else f"accuracy after {s['batches']} batches"
        lines.append(f"{what} over {s['runs']} run(s): {100 * s['final_accuracy_mean']:.2f}% "
                     f"+- {100 * s['final_accuracy_std']:.2f} (min {100 * s['final_accuracy_min']:.2f}, "
                     f"max {100 * s['final_accuracy_max']:.2f})")
        parts = []
        for key, name, signed in (("average_accuracy", "average accuracy", False), ("forgetting", "forgetting", False),
                                  ("backward_transfer", "BWT", True)):
            if s[f"{key}_mean"] is not None:
                unit = "%" if key == "average_accuracy" else " pts"
                parts.append(f"{name} {_pct(s[key + '_mean'], signed)}{unit} +- {100 * s[key + '_std']:.2f}")
        if parts:
            lines.append(", ".join(parts) + " (definitions: README, 'What the numbers mean')")
    return "\n".join(lines)


def load_results(path: Path) -> Optional[Dict]:
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
