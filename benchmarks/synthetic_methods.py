"""Run every method on the built-in synthetic stream, draw them in one figure and print the README's table.

    python benchmarks/synthetic_methods.py [--out runs/synthetic-methods] [--png docs/synthetic_methods.png]
                                           [--readme README.md]

Each method is one `latent-replay run` (same stream, same seed, random weights, no downloads), started
afresh in its own folder under --out. The script then prints the Markdown table of the README's
"Synthetic stream" results (final and average accuracy, forgetting, BWT, median train time per batch,
from each run's results.json) with the commit it was made at, and plots accuracy vs. batch for all
methods. `--readme README.md` also replaces the table between the README's markers, so the README
holds exactly what the script printed. Cumulative retrains on everything seen so far: it takes longest.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from latent_replay.cli import main as cli  # noqa: E402

METHODS = [  # (label in the figure, label in the README table, run arguments)
    ("naive fine-tuning (no replay), conv5_4/dw", "`naive --replay no` (fine-tuning, forgets)",
     ["naive", "--replay", "no"]),
    ("CWR* (head only), pool6", "`CWR` (CWR\\*, head only)", ["CWR"]),
    ("AR1*-free + latent replay, conv5_4/dw (default)", "`AR1F` (AR1\\*-free + latent replay, **the default**)",
     ["AR1F"]),
    ("cumulative (upper bound), conv5_4/dw", "`cumulative` (retrains on everything: the upper bound)", ["cumulative"]),
]
HEADER = ("| method (`latent-replay run ...`) | latent layer | final accuracy | average accuracy | forgetting | BWT "
          "| median train time per batch |\n|---|---|---|---|---|---|---|")
BEGIN, END = "<!-- synthetic-methods table: begin -->", "<!-- synthetic-methods table: end -->"


def row_from_results(path: Path, label: str, figure_label: str = "") -> Dict:
    """One table row from a run's results.json (the mean over its runs, as `latent-replay run` prints)."""
    result = json.loads(Path(path).read_text(encoding="utf-8"))
    s = result["summary"]
    if result.get("stopped"):  # a run stopped early says so in its row and its line
        label, figure_label = f"{label} ({result['stopped']})", f"{figure_label or label} ({result['stopped']})"
    return {"label": label, "figure_label": figure_label or label, "latent_layer": result["latent_layer"],
            "final": s["final_accuracy_mean"], "average": s["average_accuracy_mean"],
            "forgetting": s["forgetting_mean"], "bwt": s["backward_transfer_mean"],
            "train_s": s["train_seconds_median_per_batch"], "accuracy": s["mean_curve"]}


def _run_command(args: Sequence[str], target: Path, extra: Sequence[str], resume: bool,
                 threads: Optional[int]) -> List[str]:
    command = ["run"] + list(args) + ["--out", str(target), "--quiet"] + ([] if resume else ["--fresh"])
    return command + (["--threads", str(threads)] if threads else []) + list(extra)


def run_all(out: Path, extra: Sequence[str], methods: Sequence = METHODS, jobs: int = 1,
            resume: bool = False, first: int = 0, keep: bool = False) -> List[Dict]:
    """One `latent-replay run` per method (its arguments + `extra`) in OUT/mK (K from `first` on); their rows.

    Each run starts afresh unless `resume` (then a finished run is read back and a stopped one goes
    on from its last saved batch) or `keep` (every run with results is read back as it is, a stopped
    one with where it stopped in its label; only the others run). `jobs` > 1 runs that many at once as
    child processes, each with an equal share of the cores (the median train times are then those of
    that many threads)."""
    targets = [out / f"m{first + i}" for i in range(len(methods))]
    todo = [i for i, t in enumerate(targets) if not (keep and (t / "results.json").is_file())]
    resume = resume or keep
    codes = [0] * len(methods)
    if jobs <= 1:
        for i in todo:
            codes[i] = cli(_run_command(methods[i][2], targets[i], extra, resume, None))
    else:
        from concurrent.futures import ThreadPoolExecutor

        threads = max(1, (os.cpu_count() or 1) // jobs)

        def child(i: int) -> int:
            command = _run_command(methods[i][2], targets[i], extra, resume, threads)
            return subprocess.run([sys.executable, "-m", "latent_replay.cli"] + command, cwd=REPO).returncode

        with ThreadPoolExecutor(jobs) as pool:
            for i, code in zip(todo, pool.map(child, todo)):
                codes[i] = code
    rows = []
    for (figure_label, label, _), target, code in zip(methods, targets, codes):
        if code != 0:
            raise SystemExit(f"{label}: latent-replay run failed with exit code {code}")
        rows.append(row_from_results(target / "results.json", label, figure_label))
    return rows


def _pct(value: Optional[float], signed: bool = False, unit: str = "%") -> str:
    if value is None:
        return "-"
    return (f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}") + unit


def _seconds(value: float) -> str:
    return f"{value:.3f} s" if value < 0.1 else f"{value:.1f} s"


def markdown_table(rows: List[Dict]) -> str:
    """The README's table: one line per method."""
    lines = [HEADER]
    for r in rows:
        lines.append(f"| {r['label']} | {r['latent_layer']} | {_pct(r['final'])} | {_pct(r['average'])} | "
                     f"{_pct(r['forgetting'], unit=' pts')} | {_pct(r['bwt'], signed=True, unit=' pts')} | "
                     f"{_seconds(r['train_s'])} |")
    return "\n".join(lines)


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def commit() -> str:
    """The commit the code runs at, and whether tracked files had uncommitted changes."""
    dirty = " plus uncommitted changes" if _git("status", "--porcelain", "--untracked-files=no") else ""
    return (_git("rev-parse", "--short", "HEAD") or "unknown") + dirty


def provenance(made_at: str, load: Sequence[float], command: str = "synthetic_methods.py --readme README.md") -> str:
    """Which commit made the table, when, on how many cores and under which load."""
    return (f"Made by `python benchmarks/{command}` at commit {made_at} "
            f"({datetime.date.today().isoformat()}, {os.cpu_count()} cores, 1-minute load average "
            f"{min(load):.1f}-{max(load):.1f} at the start and end of the runs).")


def replace_block(text: str, block: str, begin: str = BEGIN, end: str = END) -> str:
    """`text` with what stands between `begin` and `end` replaced by `block`; ValueError without the markers."""
    pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.S)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"the README needs exactly one {begin} ... {end} block")
    return pattern.sub(lambda _: f"{begin}\n{block}\n{end}", text)


def write_readme(path: Path, block: str, begin: str = BEGIN, end: str = END) -> None:
    path.write_text(replace_block(path.read_text(encoding="utf-8"), block, begin, end), encoding="utf-8")
    print(f"table written into {path}")


def plot(rows: List[Dict], path: Path, title: str = "synthetic stream (10 objects, 26 batches, random weights)",
         levels: Sequence = ()) -> None:
    """Accuracy vs batch, one line per row; `levels`: (label, accuracy) pairs drawn as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for row in rows:
        ax.plot(100 * np.array(row["accuracy"]), lw=1.8, label=row["figure_label"])
    for label, value in levels:
        ax.axhline(100 * value, ls="--", lw=1.2, color="0.35", label=label)
    ax.set_xlabel("training batch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 102)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """--jobs, --resume and --keep (see run_all), for every script that runs its rows with run_all."""
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each with its share of the cores (default 1)")
    p.add_argument("--resume", action="store_true",
                   help="keep what --out holds: finished runs are read back, stopped ones go on")
    p.add_argument("--keep", action="store_true",
                   help="read back every run --out has results of, stopped ones as they are (their rows say where "
                        "they stopped); run only the missing ones")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/synthetic-methods", help="folder for the runs (each one started afresh unless --resume)")
    p.add_argument("--png", default="docs/synthetic_methods.png", help="where to write the figure")
    p.add_argument("--seed", default="0", help="stream and weights seed")
    add_run_options(p)
    p.add_argument("--readme", help="also write the table into this README, between its markers")
    args = p.parse_args(argv)
    made_at, load = commit(), [os.getloadavg()[0]]  # before anything runs: the README is written at the end
    rows = run_all(Path(args.out), ["--seed", args.seed], jobs=args.jobs, resume=args.resume, keep=args.keep)
    load.append(os.getloadavg()[0])
    plot(rows, Path(args.png))
    block = f"{markdown_table(rows)}\n\n{provenance(made_at, load)}"
    print(block)
    if args.readme:
        write_readme(Path(args.readme), block)
    print(f"figure: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
