"""One entry point for every weight source: `load_weights("random" | file | known name)`.

Importers (`caffe`, `torch_state`, `random_init`) are imported lazily so that this module stays
cheap to import and so they can import `WeightsError` from here without an import cycle.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Optional, Union

from .weights import CAFFE_PREPROCESSING, TORCH_PREPROCESSING, MobileNetWeights, Preprocessing

CAFFE_SUFFIXES = (".caffemodel",)
STATE_DICT_SUFFIXES = (".safetensors", ".pth", ".pt", ".npz")
SUPPORTED = "'random', a .caffemodel, .safetensors, .pth/.pt or .npz file"

_PREPROCESSING = {
    "caffe": CAFFE_PREPROCESSING,
    "imagenet": TORCH_PREPROCESSING,
    "torch": TORCH_PREPROCESSING,
}
_RANDOM = re.compile(r"^random(?::(\d+)|\(seed=(\d+)\))?$")


class WeightsError(ValueError):
    """Weights cannot be found, read or used; the message names the file and the fix."""


def preprocessing_named(name: str) -> Preprocessing:
    """The preprocessing preset called `name` ("caffe" or "imagenet")."""
    try:
        return _PREPROCESSING[name.lower()]
    except KeyError:
        raise WeightsError(
            f"unknown preprocessing {name!r}; use 'caffe' (BGR, mean 104/117/123) or 'imagenet' (RGB, mean/std)"
        ) from None


def load_weights_file(path: Union[str, "os.PathLike[str]"], suffix: Optional[str] = None) -> MobileNetWeights:
    """Read and validate one weights file; `suffix` overrides the format implied by its name."""
    path = Path(path)
    suffix = (suffix or path.suffix).lower()
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist; pass an existing file, a known name or 'random'")
    try:
        if suffix in CAFFE_SUFFIXES:
            from .caffe import load_caffemodel
            weights = load_caffemodel(path)
        elif suffix in STATE_DICT_SUFFIXES:
            from .torch_state import load_state_dict_file
            weights = load_state_dict_file(path, suffix=suffix)
        else:
            raise WeightsError(f"cannot tell the format of {path} from its name; use {SUPPORTED}")
        weights.validate()
    except WeightsError:
        raise
    except (ValueError, OSError, KeyError, EOFError) as e:
        raise WeightsError(f"cannot use weights file {path}: {e}; re-download or re-export it") from e
    return weights


def _known_path(name: str) -> Path:
    from .fetch import cached_path
    path = cached_path(name)
    if not path.is_file():
        raise WeightsError(
            f"weights {name!r} are not downloaded yet (expected {path}); run `latent-replay fetch weights {name}`"
        )
    return path


def load_weights(spec: str, seed: int = 0, preprocessing: Optional[str] = None) -> MobileNetWeights:
    """Weights from "random" (or "random:N"), a file path, or a known name such as "caffe" or "timm".

    `preprocessing` ("caffe" or "imagenet") overrides the preset that travels with the weights.
    """
    override = preprocessing_named(preprocessing) if preprocessing else None
    match = _RANDOM.match(spec.strip())
    if match:
        from .random_init import random_weights
        seed = int(match.group(1) or match.group(2) or seed)
        weights = random_weights(seed=seed, preprocessing=override or TORCH_PREPROCESSING)
    else:
        from .fetch import KNOWN_WEIGHTS
        if spec in KNOWN_WEIGHTS and not os.path.exists(spec):
            path = _known_path(spec)
        else:
            path = Path(spec).expanduser()
        weights = load_weights_file(path)
    if override is not None and weights.preprocessing != override:
        weights = dataclasses.replace(weights, preprocessing=override)
        weights.notes["preprocessing"] = f"overridden to {override.name}"
    return weights
