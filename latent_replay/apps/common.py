"""What every command shares: the user-error type, the weights options, and announcing random weights."""
from __future__ import annotations

import argparse
import sys
from typing import Any


class UserError(ValueError):
    """A user-facing failure: printed as one line by the `latent-replay` command, exit code 2."""


def add_weights_arguments(p: argparse.ArgumentParser) -> None:
    """--weights / --width / --preprocessing / --seed, shared by every command that builds a network."""
    p.add_argument("--weights", default="random",
                   help="weights: 'random' (seeded, for smoke tests), a .caffemodel, a state dict (.safetensors, "
                        ".pth/.pt, or .npz: a timm/pytorchcv state dict as numpy arrays), a Keras .h5, a TF.js "
                        "model.json (or its folder), or a name fetched with `latent-replay fetch weights` "
                        "('caffe', 'timm', 'keras:1.0_128', ...)")
    add_width_argument(p, "of random weights (default 1.0); a weights file's own width is read from the file, and "
                          "a --width that contradicts it is refused")
    p.add_argument("--preprocessing", choices=["caffe", "imagenet", "tf"], default=None,
                   help="override the input preprocessing that travels with the weights (caffe: BGR minus mean; "
                        "imagenet: RGB mean/std; tf: RGB x / 127.5 - 1)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights (default 0)")


def add_width_argument(p: argparse.ArgumentParser, what: str, default: Any = None) -> None:
    """--width: MobileNetV1's width multiplier alpha."""
    from ..models.mobilenet_v1 import WIDTHS

    p.add_argument("--width", type=float, choices=WIDTHS, default=default, metavar="ALPHA",
                   help=f"width multiplier {'/'.join(f'{w:g}' for w in WIDTHS)} {what}")


def load_weights_announced(weights: str, seed: int = 0, preprocessing: Any = None, width: Any = None):
    """Load weights; random weights are announced loudly because they recognise nothing."""
    from ..models.load import load_weights

    loaded = load_weights(weights, seed=seed, preprocessing=preprocessing, width=width)
    if loaded.source.startswith("random"):
        print(f"WARNING: using RANDOM weights ({loaded.source}): fine for smoke tests, useless for real "
              f"objects. Run `latent-replay fetch weights` and pass --weights caffe (or keras:1.0_128).",
              file=sys.stderr)
    return loaded


def export_for(directory: Any, spec: Any, weights: str, seed: int = 0, preprocessing: Any = None,
               announce: bool = False, width: Any = None):
    """Export artifacts that fit a workspace `ArtifactSpec` into `directory` (its engine included);
    returns the manifest."""
    from ..export.exporter import export

    loaded = load_weights_announced(weights, seed, preprocessing, width)
    if announce:
        print(f"exporting {spec.describe()} (weights {loaded.source}) into {directory} ...", file=sys.stderr)
    engines = ("step",) if spec.engine == "step" else ("step", spec.engine)
    return export(loaded, spec.latent_layer, spec.classes, directory, input_size=spec.input_size, engines=engines)
