"""Reading one weights file by its format (a Caffe model, or a timm/pytorchcv state dict), checked.

Shared by `load.py` (a user's --weights) and `fetch.py` (verifying a download before it is kept).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from .weights import MobileNetWeights, WeightsError

CAFFE_SUFFIXES = (".caffemodel",)
STATE_DICT_SUFFIXES = (".safetensors", ".pth", ".pt", ".npz")
SUPPORTED = "'random', a .caffemodel, .safetensors, .pth/.pt or .npz file"


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
