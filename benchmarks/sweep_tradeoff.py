"""The latent-layer trade-off on the synthetic stream as a sweep: AR1*-free + latent replay at every one
of the 15 latent layers, 2 runs each; prints (and with --readme writes) the README's example block.

    python benchmarks/sweep_tradeoff.py [--out runs/sweep-tradeoff] [--png docs/sweep_tradeoff.png]
                                        [--batches 8] [--size 32] [--cpus N] [--readme README.md]

The figure is the sweep's own latent_layer_tradeoff.png, copied to --png; the table is its
summary.md. A stopped run of this script continues where it stopped (the sweep's cells).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import synthetic_methods as common  # noqa: E402
from latent_replay.cli import main as cli  # noqa: E402

BEGIN, END = "<!-- sweep example: begin -->", "<!-- sweep example: end -->"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/sweep-tradeoff", help="the sweep's folder")
    p.add_argument("--png", default="docs/sweep_tradeoff.png", help="where to copy the trade-off figure")
    p.add_argument("--batches", type=int, default=8, help="synthetic batches per run (default 8)")
    p.add_argument("--size", type=int, default=32,
                   help="synthetic frame size (default 32: the 15 layers x 2 runs in well under an hour on 2 cores)")
    p.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--readme", help="also write the block into this README, between its markers")
    args = p.parse_args(argv)
    made_at, load, t0 = common.commit(), [os.getloadavg()[0]], time.monotonic()
    sweep = ["sweep", "AR1F", "--latent-layer", "all", "--runs", "0-1", "--synthetic-batches", str(args.batches),
             "--synthetic-size", str(args.size),
             "--out", args.out, "--quiet"]
    code = cli(sweep + (["--cpus", str(args.cpus)] if args.cpus else []))
    if code != 0:
        raise SystemExit(f"the sweep failed with exit code {code}")
    wall = time.monotonic() - t0
    load.append(os.getloadavg()[0])
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(args.out) / "latent_layer_tradeoff.png", args.png)
    table = (Path(args.out) / "summary.md").read_text(encoding="utf-8").strip()
    command = f"latent-replay {' '.join(a for a in sweep if a not in ('--out', args.out, '--quiet'))}"
    block = (f"Measured: `{command}` (AR1\\*-free + latent replay at each latent layer, random weights, "
             f"{args.batches} batches of the synthetic stream at {args.size} px, 2 runs; {wall / 60:.0f} minutes of wall time for "
             f"the 30 cells with Ray on this machine{f' limited to {args.cpus} CPUs' if args.cpus else ''}):\n\n"
             f"{table}\n\n![the latent-layer trade-off on the synthetic stream]({args.png})\n\n"
             f"{common.provenance(made_at, load, 'sweep_tradeoff.py --readme README.md')}")
    print(block)
    if args.readme:
        common.write_readme(Path(args.readme), block, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
