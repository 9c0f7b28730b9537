"""Import PyTorch MobileNetV1 state dicts (timm `mobilenetv1_100`, pytorchcv `mobilenet_w1`).

Key layouts (checked against the sources):

* timm (`timm/models/efficientnet.py` `_gen_mobilenet_v1`, blocks from `_efficientnet_blocks.py`
  `DepthwiseSeparableConv`): `conv_stem.weight`, `bn1.*`, then `blocks.{s}.{u}.conv_dw.weight`,
  `.bn1.*`, `.conv_pw.weight`, `.bn2.*` for stages of 1, 2, 2, 6, 2 units, head `classifier.*`.
* pytorchcv (`pytorchcv/models/mobilenet.py`, `dwsconv3x3_block`): `features.init_block.conv.weight`,
  `features.init_block.bn.*`, then `features.stage{s}.unit{u}.dw_conv.conv.weight`, `.dw_conv.bn.*`,
  `.pw_conv.conv.weight`, `.pw_conv.bn.*`, head `output.*`.

Both use BatchNorm2d with eps 1e-5 and ImageNet mean/std RGB preprocessing. Only `.pth` needs torch;
`.safetensors` and `.npz` are read with numpy alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np

from . import mobilenet_v1 as net
from .weights import WeightsError
from .weights import TORCH_PREPROCESSING, ConvParams, MobileNetWeights

STAGE_UNITS = (1, 2, 2, 6, 2)  # depthwise-separable units per stage, conv2_1 .. conv6
BN_EPS = 1e-5
TORCH_HINT = "reading .pth needs PyTorch: pip install torch, or convert to .safetensors"

# (conv weight key, batch-norm prefix) for one conv block
Keys = Tuple[str, str]


def _units() -> Iterator[Tuple[int, int]]:
    """(stage, unit) indices, 0-based, of the 13 depthwise-separable units in forward order."""
    for stage, units in enumerate(STAGE_UNITS):
        for unit in range(units):
            yield stage, unit


def _timm_unit(stage: int, unit: int) -> Tuple[Keys, Keys]:
    p = f"blocks.{stage}.{unit}."
    return (p + "conv_dw.weight", p + "bn1."), (p + "conv_pw.weight", p + "bn2.")


def _pytorchcv_unit(stage: int, unit: int) -> Tuple[Keys, Keys]:
    p = f"features.stage{stage + 1}.unit{unit + 1}."
    return (p + "dw_conv.conv.weight", p + "dw_conv.bn."), (p + "pw_conv.conv.weight", p + "pw_conv.bn.")


# family -> (marker key, stem keys, unit keys, head prefix)
FAMILIES: Dict[str, Tuple[str, Keys, Callable[[int, int], Tuple[Keys, Keys]], str]] = {
    "timm": ("conv_stem.weight", ("conv_stem.weight", "bn1."), _timm_unit, "classifier."),
    "pytorchcv": ("features.init_block.conv.weight",
                  ("features.init_block.conv.weight", "features.init_block.bn."), _pytorchcv_unit, "output."),
}


def key_map(family: str) -> Dict[str, Keys]:
    """Caffe conv name -> (weight key, batch-norm prefix) for a state-dict family."""
    _, stem, unit_keys, _ = FAMILIES[family]
    keys: List[Keys] = [stem]
    for stage, unit in _units():
        keys.extend(unit_keys(stage, unit))
    return dict(zip(net.conv_names(), keys))


def detect_family(state: Mapping[str, np.ndarray]) -> Optional[str]:
    """"timm" or "pytorchcv" from the key names, None if neither."""
    return next((name for name, (marker, *_rest) in FAMILIES.items() if marker in state), None)


def _get(state: Mapping[str, np.ndarray], key: str, source: str) -> np.ndarray:
    if key not in state:
        raise WeightsError(f"{source} lacks {key!r}; is it a complete MobileNetV1 state dict?")
    return np.asarray(state[key], dtype=np.float32)


def state_dict_to_weights(state: Mapping[str, np.ndarray], source: str) -> MobileNetWeights:
    """Map a timm or pytorchcv MobileNetV1 state dict (numpy arrays) onto the weight container."""
    family = detect_family(state)
    if family is None:
        raise WeightsError(
            f"{source} is not a known MobileNetV1 state dict (expected timm 'conv_stem.weight' "
            f"or pytorchcv 'features.init_block.conv.weight' keys)"
        )
    stem = _get(state, FAMILIES[family][1][0], source)
    try:
        arch = net.Architecture(net.infer_width({"conv1": int(stem.shape[0])}, source))
    except ValueError as e:
        raise WeightsError(str(e)) from None
    convs = {}
    for name, (weight_key, bn) in key_map(family).items():
        convs[name] = ConvParams(
            weight=_get(state, weight_key, source),
            mean=_get(state, bn + "running_mean", source), var=_get(state, bn + "running_var", source),
            gamma=_get(state, bn + "weight", source), beta=_get(state, bn + "bias", source), eps=BN_EPS,
        )
    head = FAMILIES[family][3]
    head_weight = np.asarray(state[head + "weight"], np.float32) if head + "weight" in state else None
    head_bias = np.asarray(state[head + "bias"], np.float32) if head + "bias" in state else None
    weights = MobileNetWeights(convs, TORCH_PREPROCESSING, f"{family}:{source}", head_weight, head_bias,
                               notes={"format": family}, arch=arch)
    return weights.checked(f"is it a complete MobileNetV1 of width {arch.width:g}?")


def _unwrap(obj: object) -> Mapping[str, object]:
    """The state dict inside a checkpoint ({'state_dict': ...} / {'model': ...}), without 'module.'."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise WeightsError("the checkpoint does not contain a state dict")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def _read_pth(path: Path) -> Dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise WeightsError(f"{path}: {TORCH_HINT}") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except TypeError:  # torch < 1.13 has no weights_only
        obj = torch.load(str(path), map_location="cpu")
    except Exception as e:  # torch raises many types for a bad file
        raise WeightsError(f"cannot read {path} with torch.load ({e}); is it a PyTorch checkpoint?") from None
    state = _unwrap(obj)
    return {k: v.detach().cpu().float().numpy() for k, v in state.items() if hasattr(v, "detach")}


def _read_safetensors(path: Path) -> Dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    try:
        return dict(load_file(str(path)))
    except Exception as e:  # safetensors raises its own error types
        raise WeightsError(f"cannot read {path} as safetensors ({e}); the file is truncated or corrupt") from None


def _read_npz(path: Path) -> Dict[str, np.ndarray]:
    try:
        with np.load(str(path), allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as e:
        raise WeightsError(f"cannot read {path} as .npz ({e}); the file is truncated or corrupt") from None


_READERS = {".pth": _read_pth, ".pt": _read_pth, ".safetensors": _read_safetensors, ".npz": _read_npz}


def read_state_dict(path: Union[str, Path], suffix: Optional[str] = None) -> Dict[str, np.ndarray]:
    """The arrays of a .safetensors, .npz or .pth/.pt file as numpy float arrays."""
    path = Path(path)
    suffix = (suffix or path.suffix).lower()
    if suffix not in _READERS:
        raise WeightsError(f"{path}: unsupported state-dict format {suffix!r}; use .safetensors, .npz or .pth")
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist; check the path")
    return _READERS[suffix](path)


def load_state_dict_file(path: Union[str, Path], suffix: Optional[str] = None) -> MobileNetWeights:
    """Read a timm/pytorchcv MobileNetV1 state dict file into the container (ImageNet preprocessing)."""
    path = Path(path)
    return state_dict_to_weights(read_state_dict(path, suffix), path.name)


def weights_to_state_dict(weights: MobileNetWeights, family: str = "timm") -> Dict[str, np.ndarray]:
    """The inverse mapping: a state dict of `family` holding `weights` (tests, exports)."""
    state: Dict[str, np.ndarray] = {}
    for name, (weight_key, bn) in key_map(family).items():
        p = weights.convs[name]
        state[weight_key] = p.weight
        state.update({bn + "running_mean": p.mean, bn + "running_var": p.var,
                      bn + "weight": p.gamma, bn + "bias": p.beta})
    head = FAMILIES[family][3]
    if weights.head_weight is not None:
        state[head + "weight"] = weights.head_weight
    if weights.head_bias is not None:
        state[head + "bias"] = weights.head_bias
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}
