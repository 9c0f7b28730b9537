"""ImageNet top-5 of pretrained weights on CORe50 frames: a check that imported weights compute
what they were trained to (`latent-replay predict --weights W --classes 1000`), as a README table.

    python benchmarks/imagenet_top5.py WEIGHTS FRAMES_DIR [--input-size 224] [--per-category 1]

FRAMES_DIR holds CORe50 frames and an index.csv (file, ..., category, object_name). A frame counts as
fitting when its top 5 holds an ImageNet class of `FITTING` for its CORe50 category (the list is
written here once, by what each category's objects are: e.g. CORe50's "glasses" are sunglasses).
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

CATEGORIES = ("plug_adapter", "mobile_phone", "scissor", "light_bulb", "can", "glass", "ball", "marker", "cup",
              "remote_control")
# ImageNet classes (first name of each WordNet synset) that name a CORe50 category's objects
FITTING: Dict[str, List[str]] = {
    "plug_adapter": ["switch", "plug", "power drill", "electric fan", "lighter", "adapter"],
    "mobile_phone": ["cellular telephone", "hand-held computer", "iPod", "dial telephone", "pay-phone",
                     "remote control", "modem"],
    "scissor": ["letter opener", "can opener", "corkscrew", "screwdriver", "hook", "safety pin", "scissors"],
    "light_bulb": ["spotlight", "table lamp", "lampshade", "maraca", "thimble", "pill bottle", "water bottle"],
    "can": ["beer bottle", "pop bottle", "water bottle", "hair spray", "lotion", "sunscreen", "pill bottle",
            "beer glass", "tin can", "soap dispenser"],
    "glass": ["sunglasses", "sunglass", "loupe", "ski mask"],
    "ball": ["tennis ball", "volleyball", "soccer ball", "ping-pong ball", "golf ball", "baseball", "basketball",
             "rugby ball", "croquet ball", "football helmet"],
    "marker": ["lipstick", "ballpoint", "fountain pen", "rubber eraser", "syringe", "screwdriver", "hair spray"],
    "cup": ["coffee mug", "cup", "beer glass", "measuring cup", "pitcher", "teapot", "coffeepot"],
    "remote_control": ["remote control", "cellular telephone", "hand-held computer", "joystick", "modem"],
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights")
    p.add_argument("frames", help="folder of CORe50 frames with index.csv")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--per-category", type=int, default=1, help="frames per category in the table (default 1)")
    args = p.parse_args(argv)
    rows = list(csv.DictReader(open(Path(args.frames) / "index.csv", encoding="utf-8")))
    cmd = [sys.executable, "-m", "latent_replay.cli", "predict", "--weights", args.weights, "--classes", "1000",
           "--input-size", str(args.input_size), "--top", "5", "--json"] + [str(Path(args.frames) / r["file"]) for r in rows]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        print(out.stderr.strip(), file=sys.stderr)
        return out.returncode
    answers = [json.loads(line) for line in out.stdout.splitlines()]
    fits, shown, per = 0, [], {c: 0 for c in CATEGORIES}
    for row, answer in zip(rows, answers):
        category = CATEGORIES[int(row["category"])]
        names = [t["class"].split(",")[0] for t in answer["top"]]
        fit = any(n in FITTING[category] for n in names)
        fits += fit
        if per[category] < args.per_category:
            per[category] += 1
            shown.append(f"| {row['file']} | {row['object_name']} | "
                         + "; ".join(f"**{n}**" if n in FITTING[category] else n for n in names)
                         + f" | {answer['top'][0]['probability']:.2f} |")
    print(f"weights {args.weights}, input {args.input_size}x{args.input_size}: a fitting class in the top 5 of "
          f"{fits} of {len(rows)} frames ({100 * fits / len(rows):.0f}%)\n")
    print("| frame | CORe50 object | ImageNet top 5 (fitting in bold) | top-1 p |\n|---|---|---|---|")
    print("\n".join(shown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
