"""Run the methods on a folder stream of real images with real weights, draw them in one figure and
print the README's table (the "Real features" results).

    python benchmarks/folder_methods.py DIR --weights W [--out runs/folder-methods] [--png docs/folder_methods.png]
                                        [--jobs 2] [--resume] [--readme README.md]

DIR is a `latent-replay run METHOD folder:DIR` folder (e.g. COIL-100 laid out by
benchmarks/coil_folders.py). Each row is one `latent-replay run` under --out, on the same stream
(same seed, same held-out test images): CWR* and AR1*-free with the CORe50 preset as it is and with
the small-stream settings (one learning rate for every batch, BRN statistics that follow:
`small_stream_flags` of the run command), naive and AR1* with the small-stream settings. The upper
bound is joint training: `cumulative` on the same training images given as one batch (OUT/joint,
links to DIR's images, with the same held-out images as its test/ folder). Cumulative over the
stream itself retrains on everything at every one of its ~190 batches, ~10x AR1*'s cost per batch
on average (hours on 2 cores), and ends where joint training is. The table and the provenance line
are what the runs' results.json files hold; `--readme` writes them between the README's markers.
"""
from __future__ import annotations

import argparse
import os
import shutil
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
]
JOINT = ("joint training (all training images in one batch: the upper bound), conv5_4/dw",
         "`cumulative --first-classes {k}` on all training images as one batch (joint training: the upper bound)",
         ["cumulative"])
BEGIN, END = "<!-- folder-methods table: begin -->", "<!-- folder-methods table: end -->"


def joint_folder(stream: Path, target: Path) -> int:
    """The stream's training images as one session per class and its held-out test images as
    target/test/ (links, so nothing is copied): the same images for joint training. Its classes."""
    from latent_replay.runtime.sources.folder import TEST_FOLDER, FolderScenario

    scenario = FolderScenario(stream)
    if target.exists():
        shutil.rmtree(target)
    names = scenario.class_names
    train = [e for i in range(scenario.n_batches) for e in scenario.batch_entries(i)]
    for entries, base in ((train, target), (scenario.test_entries(), target / TEST_FOLDER)):
        for path, label in entries:
            source = (Path(stream) / path).resolve()
            link = base / names[label] / "_".join(Path(path).parts[1:])  # SESSION_NAME.png: unique per class
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source)
    return len(names)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="the image folder (DIR/CLASS/SESSION/*)")
    p.add_argument("--weights", required=True, help="pretrained weights (e.g. a Keras .h5 or TF.js model.json)")
    p.add_argument("--out", default="runs/folder-methods",
                   help="folder for the runs (each one started afresh unless --resume)")
    p.add_argument("--png", default="docs/folder_methods.png", help="where to write the figure")
    common.add_run_options(p)
    p.add_argument("--readme", help="also write the table into this README, between its markers")
    p.add_argument("--title", default="", help="figure title (default: the folder's name)")
    args = p.parse_args(argv)
    made_at, load = common.commit(), [os.getloadavg()[0]]
    out = Path(args.out)
    stream = ["--core50", f"folder:{args.folder}", "--weights", args.weights]
    rows = common.run_all(out, stream, METHODS, jobs=args.jobs, resume=args.resume, keep=args.keep)
    joint = out / "joint"
    k = joint_folder(Path(args.folder), joint)
    label = (JOINT[0], JOINT[1].format(k=k), JOINT[2])
    rows += common.run_all(out, ["--core50", f"folder:{joint}", "--weights", args.weights, "--first-classes", str(k)],
                           [label], resume=args.resume, first=len(METHODS), keep=args.keep)
    load.append(os.getloadavg()[0])
    title = args.title or f"{Path(args.folder).name}: real images, {Path(args.weights).name}"
    common.plot(rows[:-1], Path(args.png), title, levels=[(rows[-1]["figure_label"], rows[-1]["final"])])
    command = "folder_methods.py DIR --weights W" + (f" --jobs {args.jobs}" if args.jobs > 1 else "") + \
        (" --keep" if args.keep else "") + " --readme README.md"
    block = f"{common.markdown_table(rows)}\n\n{common.provenance(made_at, load, command)}"
    print(block)
    if args.readme:
        common.write_readme(Path(args.readme), block, BEGIN, END)
    print(f"figure: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
