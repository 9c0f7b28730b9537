"""The paper's figures of a sweep (matplotlib, drawn only where the grid varies what they plot):
accuracy vs incremental batch (one line per grid point, mean over runs with the spread shaded, the
published reference dashed), final accuracy and train time per batch vs latent layer (the
trade-off), final accuracy vs replay memory size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from ...models import mobilenet_v1 as net
from .report import KEYS, reference


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _varying(grid: List[Dict[str, Any]], skip: Tuple[str, ...] = ()) -> List[str]:
    keys = [k for k in KEYS if k not in skip] + sorted({k for g in grid for k in g if k.startswith("set:")})
    return [k for k in keys if len({str(g.get(k)) for g in grid}) > 1]


def _label(row: Dict[str, Any], keys: List[str]) -> str:
    parts = []
    for k in keys:
        v = row.get(k)
        parts.append(f"M={v}" if k == "replay_memory" else (f"{k[4:]}={v}" if k.startswith("set:") else str(v)))
    return ", ".join(parts) or str(row["method"])


def accuracy_vs_batch(path: Path, grid: List[Dict[str, Any]]) -> Path:
    plt = _plt()
    keys = _varying(grid)
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    refs = set()
    for g in grid:
        mean, std = 100 * np.array(g["curve"]), 100 * np.array(g["curve_std"])
        line, = ax.plot(mean, lw=1.6, label=_label(g, keys) + f" ({len(g['runs'])} run{'s' * (len(g['runs']) > 1)})")
        if len(g["runs"]) > 1:
            ax.fill_between(np.arange(len(mean)), mean - std, mean + std, color=line.get_color(), alpha=0.18)
        ref = reference(g)
        if ref is not None and ref not in refs:
            refs.add(ref)
            ax.axhline(100 * ref, ls="--", color=line.get_color(), lw=1, label=f"published ({100 * ref:.0f}%)")
    ax.set_xlabel("incremental batch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2 if len(grid) > 8 else 1)
    ax.set_title("accuracy vs incremental batch (mean over runs, spread shaded)", fontsize=10)
    return _save(fig, path)


def _series(grid: List[Dict[str, Any]], axis: str) -> Dict[str, List[Dict[str, Any]]]:
    """The grid points grouped by everything but `axis` (one line per group)."""
    keys = _varying(grid, skip=(axis,))
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for g in grid:
        groups.setdefault(_label(g, keys), []).append(g)
    return groups


def layer_tradeoff(path: Path, grid: List[Dict[str, Any]]) -> Path:
    plt = _plt()
    fig, (acc, cost) = plt.subplots(2, 1, figsize=(8, 6.2), dpi=110, sharex=True)
    for label, rows in _series(grid, "latent_layer").items():
        rows = sorted(rows, key=lambda r: net.LATENT_LAYERS.index(r["latent_layer"]))
        x = [net.LATENT_LAYERS.index(r["latent_layer"]) for r in rows]
        final = 100 * np.array([r["final"] for r in rows])
        spread = 100 * np.array([r["final_std"] or 0.0 for r in rows])
        acc.errorbar(x, final, yerr=spread, marker="o", ms=4, capsize=3, label=label)
        cost.plot(x, [r["train_s"] for r in rows], marker="o", ms=4, label=label)
    acc.set_ylabel("final accuracy (%)")
    acc.set_ylim(0, 102)
    cost.set_ylabel("train time per batch (s)")
    cost.set_yscale("log")
    cost.set_xticks(range(len(net.LATENT_LAYERS)))
    cost.set_xticklabels(net.LATENT_LAYERS, rotation=60, ha="right", fontsize=7)
    cost.set_xlabel("latent layer (layers above it train; earlier = more trained, slower)")
    for ax in (acc, cost):
        ax.grid(alpha=0.3)
    acc.legend(fontsize=7)
    acc.set_title("the latent-layer trade-off (mean ± spread over runs)", fontsize=10)
    return _save(fig, path)


def memory_curve(path: Path, grid: List[Dict[str, Any]]) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    for label, rows in _series(grid, "replay_memory").items():
        rows = sorted(rows, key=lambda r: int(r["replay_memory"]))
        ax.errorbar([int(r["replay_memory"]) for r in rows], [100 * r["final"] for r in rows],
                    yerr=[100 * (r["final_std"] or 0.0) for r in rows], marker="o", capsize=3, label=label)
    ax.set_xlabel("replay memory size M (patterns)")
    ax.set_ylabel("final accuracy (%)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("accuracy vs memory size (mean ± spread over runs)", fontsize=10)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    _plt().close(fig)
    return path


def _has_line(grid: List[Dict[str, Any]], axis: str) -> bool:
    """Whether some line of the figure over `axis` has two points or more."""
    return any(len({str(r[axis]) for r in rows}) > 1 for rows in _series(grid, axis).values())


def draw_all(out: Path, grid: List[Dict[str, Any]]) -> List[Path]:
    """Every figure the grid has data for, written into `out`."""
    drawn = [accuracy_vs_batch(out / "accuracy_vs_batch.png", grid)]
    if _has_line(grid, "latent_layer"):
        drawn.append(layer_tradeoff(out / "latent_layer_tradeoff.png", grid))
    if _has_line(grid, "replay_memory"):
        drawn.append(memory_curve(out / "accuracy_vs_memory.png", grid))
    return drawn
