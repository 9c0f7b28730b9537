"""Reading one weights file by its format (a Caffe model, a timm/pytorchcv state dict, a Keras/TF
MobileNet in HDF5 or TF.js layers format), checked.

Shared by `load.py` (a user's --weights) and `fetch.py` (verifying a download before it is kept).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from .weights import MobileNetWeights, WeightsError

CAFFE_SUFFIXES = (".caffemodel",)
STATE_DICT_SUFFIXES = (".safetensors", ".pth", ".pt", ".npz")
KERAS_SUFFIXES = (".h5", ".hdf5")
TFJS_SUFFIX = ".json"  # a TF.js layers model.json (the folder that holds one works too)
SUPPORTED = ("'random', a .caffemodel, .safetensors, .pth/.pt or .npz (a state dict), a Keras .h5, or a TF.js "
             "model.json (or its folder)")


def _is_tfjs(path: Path, suffix: str) -> bool:
    from .keras import TFJS_MANIFEST

    return (path.is_dir() and (path / TFJS_MANIFEST).is_file()) or (path.is_file() and suffix == TFJS_SUFFIX)


def load_weights_file(path: Union[str, "os.PathLike[str]"], suffix: Optional[str] = None) -> MobileNetWeights:
    """Read and validate one weights file; `suffix` overrides the format implied by its name."""
    path = Path(path)
    suffix = (suffix or path.suffix).lower()
    if _is_tfjs(path, suffix):
        from .keras import load_tfjs
        loader = load_tfjs
    elif not path.is_file():
        what = "is a folder without a TF.js model.json" if path.is_dir() else "does not exist"
        raise WeightsError(f"weights file {path} {what}; pass an existing file, a known name or 'random'")
    elif suffix in CAFFE_SUFFIXES:
        from .caffe import load_caffemodel
        loader = load_caffemodel
    elif suffix in STATE_DICT_SUFFIXES:
        from .torch_state import load_state_dict_file

        def loader(p: Path) -> MobileNetWeights:
            return load_state_dict_file(p, suffix=suffix)
    elif suffix in KERAS_SUFFIXES:
        from .keras import load_keras_h5
        loader = load_keras_h5
    elif suffix == ".keras":
        raise WeightsError(f"{path} is a Keras 3 .keras archive; pass keras.applications' .h5 file, or save the "
                           f"weights with tf.keras `model.save_weights('x.h5')`")
    else:
        raise WeightsError(f"cannot tell the format of {path} from its name; use {SUPPORTED}")
    try:
        weights = loader(path)
        weights.validate()
    except WeightsError:
        raise
    except (ValueError, OSError, KeyError, EOFError) as e:
        raise WeightsError(f"cannot use weights file {path}: {e}; re-download or re-export it") from e
    return weights
