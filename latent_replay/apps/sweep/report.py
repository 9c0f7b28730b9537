"""A sweep's results in one place: every cell's results.json gathered into a table per cell and per
grid point (mean and spread over runs), as summary.csv and summary.md (figures.py draws them).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ...models import mobilenet_v1 as net
from ..run.command import PAPER_REFERENCE

GRID_FILE = "sweep.json"
KEYS = ("method", "scenario", "replay", "latent_layer", "replay_memory")
METRICS = (("final", "final accuracy"), ("average", "average accuracy"), ("forgetting", "forgetting"),
           ("bwt", "BWT"), ("train_s", "train s/batch"), ("peak_rss_mb", "peak RSS MB"))


def cell_rows(out: Path) -> List[Dict[str, Any]]:
    """One row per finished run of every cell folder under `out` (cells of a sweep, or any `run` folders)."""
    points = {}
    grid = Path(out) / GRID_FILE
    if grid.is_file():
        points = {c["name"]: c["point"] for c in json.loads(grid.read_text(encoding="utf-8"))["cells"]}
    rows = []
    for results in sorted(Path(out).glob("*/results.json")):
        try:
            data = json.loads(results.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a cell that is being written: the next report has it
        point = {k: data.get(k) for k in KEYS}
        point["scenario"] = str(point["scenario"])
        point.update({k: v for k, v in points.get(results.parent.name, {}).items() if k.startswith("set:")})
        for run in data.get("runs") or []:
            batches = run.get("batches") or []
            if not batches:
                continue
            m = run.get("metrics") or {}
            rows.append(dict(point, cell=results.parent.name, run=run["run"], complete=bool(run.get("complete")),
                             batches=len(batches), final=batches[-1]["accuracy"], average=m.get("average_accuracy"),
                             forgetting=m.get("forgetting"), bwt=m.get("backward_transfer"),
                             train_s=float(np.median([b["train_s"] for b in batches])),
                             peak_rss_mb=max((b.get("peak_rss_mb") or 0) for b in batches),
                             curve=[b["accuracy"] for b in batches]))
    return rows


def point_of(row: Dict[str, Any]) -> Tuple:
    return tuple((k, row[k]) for k in sorted(row) if k in KEYS or k.startswith("set:"))


def grid_rows(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The cells' rows grouped by grid point: mean and spread (std) of every metric over the runs."""
    groups: Dict[Tuple, List[Dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(point_of(row), []).append(row)
    out = []
    for point, members in groups.items():
        agg: Dict[str, Any] = dict(point)
        agg["runs"] = sorted(r["run"] for r in members)
        agg["complete"] = all(r["complete"] for r in members)
        for key, _ in METRICS:
            vals = [r[key] for r in members if r[key] is not None]
            agg[key] = float(np.mean(vals)) if vals else None
            agg[f"{key}_std"] = float(np.std(vals)) if vals else None
        n = min(len(r["curve"]) for r in members)
        curves = np.array([r["curve"][:n] for r in members])
        agg["curve"], agg["curve_std"] = curves.mean(0).tolist(), curves.std(0).tolist()
        out.append(agg)
    return sorted(out, key=_order)


def _order(row: Dict[str, Any]) -> Tuple:
    layer = row.get("latent_layer")
    index = net.LATENT_LAYERS.index(layer) if layer in net.LATENT_LAYERS else -1
    return (str(row.get("method")), str(row.get("scenario")), str(row.get("replay")), index,
            int(row.get("replay_memory") or 0), str(sorted((k, str(v)) for k, v in row.items() if k.startswith("set:"))))


def _set_keys(rows: List[Dict[str, Any]]) -> List[str]:
    return sorted({k for r in rows for k in r if k.startswith("set:")})


def write_csv(path: Path, rows: List[Dict[str, Any]], grid: List[Dict[str, Any]]) -> None:
    """summary.csv: the grid points (kind=point, over runs) and then the cells (kind=cell, one run)."""
    sets = _set_keys(rows)
    fields = ["kind", *KEYS, *sets, "runs", "complete", "batches"] + \
             [f for key, _ in METRICS for f in (key, f"{key}_std")]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for g in grid:
            w.writerow(dict(g, kind="point", runs=" ".join(map(str, g["runs"])), batches=len(g["curve"])))
        for r in rows:
            w.writerow(dict(r, kind="cell", runs=r["run"]))


def _fmt(value: Optional[float], std: Optional[float], pct: bool, signed: bool = False) -> str:
    if value is None:
        return "-"
    scale = 100.0 if pct else 1.0
    text = f"{scale * value:+.1f}" if signed else (f"{scale * value:.1f}" if pct else f"{value:.3g}")
    return text + (f" ± {scale * std:.1f}" if pct and std else (f" ± {std:.2g}" if std else ""))


def markdown(grid: List[Dict[str, Any]]) -> str:
    """summary.md: one row per grid point, mean ± spread over its runs."""
    sets = _set_keys(grid)
    head = ["method", "scenario", "replay", "latent layer", "M", *[s[4:] for s in sets], "runs", "final accuracy %",
            "average accuracy %", "forgetting pts", "BWT pts", "train s/batch", "peak RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in grid:
        cells = [str(g[k]) for k in KEYS] + [str(g[s]) for s in sets] + [
            ",".join(map(str, g["runs"])) + ("" if g["complete"] else " (unfinished)"),
            _fmt(g["final"], g["final_std"], True), _fmt(g["average"], g["average_std"], True),
            _fmt(g["forgetting"], g["forgetting_std"], True), _fmt(g["bwt"], g["bwt_std"], True, signed=True),
            _fmt(g["train_s"], None, False), _fmt(g["peak_rss_mb"], None, False)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def reference(row: Dict[str, Any]) -> Optional[float]:
    """The published final accuracy of this grid point, where there is one (CORe50 NICv2-391, AR1*-free,
    conv5_4/dw, M = 1500: docs/algorithms.md)."""
    if row.get("latent_layer") != net.DEFAULT_LATENT_LAYER or row.get("replay_memory") != 1500:
        return None
    try:
        scenario = int(row["scenario"])
    except (TypeError, ValueError):
        return None
    return PAPER_REFERENCE.get((row["method"], scenario, row["replay"]))
