"""Run the methods on a folder stream of real images with real weights, draw them in one figure and
print the README's table (the "Real features" results).

    python benchmarks/folder_methods.py DIR --weights W [--out runs/folder-methods] [--png docs/folder_methods.png]
                                        [--readme README.md]

DIR is a `latent-replay run METHOD folder:DIR` folder (e.g. COIL-100 laid out by
benchmarks/coil_folders.py). Each row is one `latent-replay run` started afresh under --out, on the
same stream (same seed, same held-out test images): CWR* and AR1*-free with the CORe50 preset as it
is and with the small-stream settings (one learning rate for every batch, BRN statistics that follow:
`small_stream_flags` of the run command), naive, AR1* and cumulative with the small-stream settings.
The table and the provenance line are what the runs' results.json files hold; `--readme` writes them
between the README's markers.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import synthetic_methods as common  # noqa: E402
from latent_replay.apps.run.experiment import small_stream_flags as small  # noqa: E402

METHODS = [  # (label in the figure, label in the README table, run arguments)
    ("naive fine-tuning (no replay), conv5_4/dw", "`naive --replay no` (fine-tuning, forgets), small-stream lr",
     ["naive", "--replay", "no"] + small("naive")),
    ("CWR* (head only), pool6, CORe50 preset", "`CWR` (CWR\\*, head only), CORe50 preset", ["CWR"]),
    ("CWR* (head only), pool6", "`CWR`, small-stream lr", ["CWR"] + small("cwr")),
    ("AR1* (CWR* + SI) + latent replay, conv5_4/dw", "`AR1` (AR1\\* + latent replay), small-stream lr",
     ["AR1"] + small("ar1")),
    ("AR1*-free + latent replay, conv5_4/dw, CORe50 preset", "`AR1F` (AR1\\*-free + latent replay), CORe50 preset",
     ["AR1F"]),
    ("AR1*-free + latent replay, conv5_4/dw", "`AR1F`, small-stream lr", ["AR1F"] + small("ar1free")),
    ("cumulative (upper bound), conv5_4/dw", "`cumulative` (retrains on everything: the upper bound), small-stream lr",
     ["cumulative"] + small("cumulative")),
]
BEGIN, END = "<!-- folder-methods table: begin -->", "<!-- folder-methods table: end -->"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="the image folder (DIR/CLASS/SESSION/*)")
    p.add_argument("--weights", required=True, help="pretrained weights (e.g. a Keras .h5 or TF.js model.json)")
    p.add_argument("--out", default="runs/folder-methods", help="folder for the runs (each one started afresh unless --resume)")
    p.add_argument("--png", default="docs/folder_methods.png", help="where to write the figure")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each with its share of the cores (default 1)")
    p.add_argument("--resume", action="store_true",
                   help="keep what --out holds: finished runs are read back, stopped ones go on")
    p.add_argument("--readme", help="also write the table into this README, between its markers")
    p.add_argument("--title", default="", help="figure title (default: the folder's name)")
    args = p.parse_args(argv)
    made_at, load = common.commit(), [os.getloadavg()[0]]
    stream = ["--core50", f"folder:{args.folder}", "--weights", args.weights]
    rows = common.run_all(Path(args.out), stream, METHODS, jobs=args.jobs, resume=args.resume)
    load.append(os.getloadavg()[0])
    common.plot(rows, Path(args.png), args.title or f"{Path(args.folder).name}: real images, {args.weights}")
    command = "folder_methods.py DIR --weights W" + (f" --jobs {args.jobs}" if args.jobs > 1 else "") + " --readme README.md"
    block = f"{common.markdown_table(rows)}\n\n{common.provenance(made_at, load, command)}"
    print(block)
    if args.readme:
        common.write_readme(Path(args.readme), block, BEGIN, END)
    print(f"figure: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
