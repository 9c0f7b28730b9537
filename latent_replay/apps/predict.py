"""`latent-replay predict`: classify images with exported artifacts."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List

from .common import UserError


def add_predict_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="run front + back on images (or a generated one) and print the top classes",
                       description="Load exported artifacts without PyTorch and classify images. Without "
                                   "images, a generated test frame is used (a smoke test of the artifacts).")
    p.add_argument("--artifacts", required=True, help="directory written by `latent-replay export`")
    p.add_argument("images", nargs="*", help="image files (any size: center-cropped and resized)")
    p.add_argument("--top", type=int, default=3, help="how many classes to print (default 3)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="execution provider")
    p.set_defaults(handler=_cmd_predict)


def _read_images(paths: List[str], size: int):
    import cv2
    import numpy as np

    from ..runtime.sources.video import center_crop_resize

    frames = []
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"image {path} does not exist")
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise UserError(f"cannot read image {path}")
        frames.append(center_crop_resize(img, size))
    return np.stack(frames)


def _cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from ..export.manifest import Manifest
    from ..runtime.engine import Back, Front

    manifest = Manifest.load(Path(args.artifacts), verify=True)
    size = manifest.input["size"]
    if args.images:
        frames, names = _read_images(args.images, size), args.images
    else:
        frames = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
        names = ["<generated frame>"]
    front, back = Front(Path(args.artifacts), manifest, args.device), Back(Path(args.artifacts), manifest, args.device)
    logits = back.logits(front(frames))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for name, p in zip(names, probs):
        top = np.argsort(-p)[: args.top]
        print(f"{name}: " + ", ".join(f"class {c} ({p[c]:.3f})" for c in top))
    return 0


