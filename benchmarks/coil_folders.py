"""Lay COIL-100 out as a folder stream: DIR/objN/sK/ holding the poses of viewpoint range K.

COIL-100 (Nene, Nayar, Murase, Columbia University, 1996; research use) ships flat files
`obj<N>__<degrees>.png`, 72 poses per object at 5-degree steps. `latent-replay run METHOD folder:DIR`
reads DIR/CLASS/SESSION/*: this script links (or copies) the files into that layout, one session per
range of 360 / --sessions degrees, so that a session is a new viewpoint range of a known object
(NICv2's "new instances"). Nothing is downloaded; the images are not part of this project.

    python benchmarks/coil_folders.py /data/coil-100 /data/coil-sessions --objects 1-50 --sessions 4
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

NAME = re.compile(r"^obj(\d+)__(\d+)\.png$")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("coil", help="folder with COIL-100's obj<N>__<degrees>.png files")
    p.add_argument("out", help="new folder to write DIR/objN/sK/ into")
    p.add_argument("--objects", default="1-100", help="object range, e.g. 1-50 (default 1-100)")
    p.add_argument("--sessions", type=int, default=4, help="viewpoint ranges per object (default 4: 90 degrees each)")
    p.add_argument("--copy", action="store_true", help="copy the files instead of linking them")
    args = p.parse_args(argv)
    lo, hi = (int(x) for x in args.objects.split("-"))
    src, out = Path(args.coil), Path(args.out)
    if not src.is_dir():
        print(f"coil_folders: {src} is not a folder", file=sys.stderr)
        return 2
    if out.exists() and any(out.iterdir()):
        print(f"coil_folders: {out} exists and is not empty; choose a new folder", file=sys.stderr)
        return 2
    if not 1 <= args.sessions <= 72:
        print("coil_folders: --sessions must be 1..72", file=sys.stderr)
        return 2
    width = 360 / args.sessions
    n = 0
    for f in sorted(src.iterdir()):
        m = NAME.match(f.name)
        if not m or not lo <= int(m.group(1)) <= hi:
            continue
        folder = out / f"obj{int(m.group(1))}" / f"s{int(int(m.group(2)) // width) + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        if args.copy:
            shutil.copy2(f, folder / f.name)
        else:
            os.symlink(f.resolve(), folder / f.name)
        n += 1
    if not n:
        print(f"coil_folders: no obj<N>__<degrees>.png files of objects {args.objects} in {src}", file=sys.stderr)
        return 2
    print(f"{out}: {n} images of objects {lo}-{hi}, {args.sessions} sessions each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
