"""Run every method on the built-in synthetic stream and draw them in one figure.

    python benchmarks/synthetic_methods.py [--out runs/synthetic-methods] [--png docs/synthetic_methods.png]

Each method is one `latent-replay run` (same stream, same seed, random weights, no downloads); the
script then prints a Markdown table of final accuracy and median train time per batch and plots
accuracy vs. batch for all methods. Cumulative retrains on everything seen so far: it takes longest.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from latent_replay.cli import main as cli

METHODS = [  # (label, run arguments)
    ("naive fine-tuning (no replay), conv5_4/dw", ["naive", "--replay", "no"]),
    ("CWR* (head only), pool6", ["CWR"]),
    ("AR1*-free + latent replay, conv5_4/dw (default)", ["AR1F"]),
    ("cumulative (upper bound), conv5_4/dw", ["cumulative"]),
]


def run_all(out: Path, extra: list) -> list:
    rows = []
    for i, (label, args) in enumerate(METHODS):
        target = out / f"m{i}"
        code = cli(["run"] + args + ["--out", str(target), "--quiet"] + extra)
        if code != 0:
            raise SystemExit(f"{label}: latent-replay run failed with exit code {code}")
        result = json.loads((target / "results.json").read_text())
        batches = result["runs"][0]["batches"]
        rows.append({"label": label, "accuracy": [b["accuracy"] for b in batches],
                     "train_s": float(np.median([b["train_s"] for b in batches])),
                     "latent_layer": result["latent_layer"]})
    return rows


def plot(rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for row in rows:
        ax.plot(100 * np.array(row["accuracy"]), lw=1.8, label=row["label"])
    ax.set_xlabel("training batch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 102)
    ax.set_title("synthetic stream (10 objects, 26 batches, random weights)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/synthetic-methods", help="folder for the runs")
    p.add_argument("--png", default="docs/synthetic_methods.png", help="where to write the figure")
    p.add_argument("--seed", default="0", help="stream and weights seed")
    args = p.parse_args(argv)
    rows = run_all(Path(args.out), ["--seed", args.seed])
    plot(rows, Path(args.png))
    print("| method | final accuracy | median train s / batch |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['label']} | {100 * row['accuracy'][-1]:.1f}% | {row['train_s']:.2f} |")
    print(f"figure: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
