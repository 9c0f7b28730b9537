"""One entry point for every weight source: `load_weights("random" | file | known name)`.

Importers (`caffe`, `torch_state`, `random_init`) are imported lazily so that this module stays
cheap to import; they share `WeightsError` with it through `weights.py`.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Optional

from .files import load_weights_file
from .mobilenet_v1 import Architecture
from .weights import CAFFE_PREPROCESSING, TF_PREPROCESSING, TORCH_PREPROCESSING, MobileNetWeights, Preprocessing, \
    WeightsError

_PREPROCESSING = {
    "caffe": CAFFE_PREPROCESSING,
    "imagenet": TORCH_PREPROCESSING,
    "torch": TORCH_PREPROCESSING,
    "tf": TF_PREPROCESSING,
}
_RANDOM = re.compile(r"^random(?::(\d+)|\(seed=(\d+)\))?$")


def preprocessing_named(name: str) -> Preprocessing:
    """The preprocessing preset called `name` ("caffe", "imagenet" or "tf")."""
    try:
        return _PREPROCESSING[name.lower()]
    except KeyError:
        raise WeightsError(
            f"unknown preprocessing {name!r}; use 'caffe' (BGR, mean 104/117/123), 'imagenet' (RGB, mean/std) "
            f"or 'tf' (RGB, x / 127.5 - 1)"
        ) from None


def _known_path(name: str) -> Path:
    from .fetch import cached_path
    path = cached_path(name)
    if not path.is_file():
        raise WeightsError(
            f"weights {name!r} are not downloaded yet (expected {path}); run `latent-replay fetch weights {name}`"
        )
    return path


def load_weights(spec: str, seed: int = 0, preprocessing: Optional[str] = None,
                 width: Optional[float] = None) -> MobileNetWeights:
    """Weights from "random" (or "random:N"), a file path, or a known name such as "caffe", "timm"
    or "keras:1.0_128".

    `preprocessing` ("caffe", "imagenet" or "tf") overrides the preset that travels with the weights.
    `width` is the width multiplier of random weights; a file's width is read from the file, and a
    `width` that contradicts it is refused.
    """
    override = preprocessing_named(preprocessing) if preprocessing else None
    match = _RANDOM.match(spec.strip())
    if match:
        from .random_init import random_weights
        seed = int(match.group(1) or match.group(2) or seed)
        try:
            arch = Architecture(1.0 if width is None else float(width))
        except ValueError as e:
            raise WeightsError(f"--width: {e}") from None
        weights = random_weights(seed=seed, preprocessing=override or TORCH_PREPROCESSING, arch=arch)
    else:
        from .fetch import known_weights
        if not os.path.exists(spec) and known_weights(spec) is not None:
            path = _known_path(spec)
        else:
            path = Path(spec).expanduser()
        weights = load_weights_file(path)
        if width is not None and float(width) != weights.arch.width:
            raise WeightsError(f"--width {width:g} contradicts {path}: its layers are those of width "
                               f"{weights.arch.width:g}; drop --width (a file's width is read from the file)")
    if override is not None and weights.preprocessing != override:
        weights = dataclasses.replace(weights, preprocessing=override)
        weights.notes["preprocessing"] = f"overridden to {override.name}"
    return weights
