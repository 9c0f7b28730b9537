"""Import Google's Keras/TF MobileNet (v1): `keras.applications` HDF5 files (with or without the
ImageNet top) and the TF.js layers format (model.json + binary shards, float32 or quantized).

Both formats hold the same Keras layers, so one mapping serves them (`KERAS_LAYERS`):
`conv1` / `conv1_bn`, `conv_dw_N` / `conv_dw_N_bn`, `conv_pw_N` / `conv_pw_N_bn` for N = 1..13, and
the ImageNet classifier `conv_preds` (a 1x1 convolution with bias, 1000 classes, no background).
Kernels are HWIO (`[kh, kw, in, out]`; depthwise `[kh, kw, C, 1]`) and become OIHW here.

What TF computes travels with the weights: 'same' padding (a stride-2 3x3 conv on an even map pads 0
before and 1 after), ReLU6, BatchNormalization epsilon from the file's layer configuration (Keras's
default 1e-3 when the file has none), preprocessing RGB `x / 127.5 - 1`. The width multiplier is read
from the kernels' channel counts.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from . import mobilenet_v1 as net
from .weights import TF_PREPROCESSING, ConvParams, MobileNetWeights, WeightsError

KERAS_EPS = 1e-3  # Keras BatchNormalization's default epsilon
HEAD_LAYER = "conv_preds"
H5_SUFFIXES = (".h5", ".hdf5")
TFJS_MANIFEST = "model.json"
TFJS_METADATA = "metadata.json"  # tfjs-models' companion file with the class labels
H5PY_HINT = "reading Keras .h5 files needs h5py: pip install h5py"

# keras layer -> {variable name (kernel, depthwise_kernel, gamma, ...): array}
LayerArrays = Dict[str, Dict[str, np.ndarray]]


def _keras_names() -> Dict[str, str]:
    names, block = {}, 0
    for name in net.conv_names():
        if name == "conv1":
            names[name] = "conv1"
        elif name.endswith("/dw"):
            block += 1
            names[name] = f"conv_dw_{block}"
        else:
            names[name] = f"conv_pw_{block}"
    return names


KERAS_LAYERS: Dict[str, str] = _keras_names()  # Caffe conv name -> Keras layer name
BN_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")


# ---------------------------------------------------------------------------------------------
# the layer configuration (TF.js modelTopology, an HDF5 file's model_config)


def topology_layers(topology: Optional[Mapping[str, Any]]) -> Dict[str, Tuple[str, Mapping[str, Any]]]:
    """{layer name: (class name, config)} of a Keras model configuration, nested models included."""
    found: Dict[str, Tuple[str, Mapping[str, Any]]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            config = node.get("config")
            if "class_name" in node and isinstance(config, Mapping) and "name" in config:
                found.setdefault(str(config["name"]), (str(node["class_name"]), config))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(topology or {})
    return found


def _activation(layers: Mapping[str, Tuple[str, Mapping[str, Any]]]) -> str:
    """relu6 unless the configuration says the blocks use a plain ReLU."""
    kind, config = layers.get("conv1_relu", ("", {}))
    if kind == "ReLU":
        return "relu6" if config.get("max_value") == net.RELU6_MAX else "relu"
    if kind == "Activation":
        return "relu" if config.get("activation") == "relu" else "relu6"
    return "relu6"


def _eps(layers: Mapping[str, Tuple[str, Mapping[str, Any]]], name: str) -> float:
    return float(layers.get(name, ("", {}))[1].get("epsilon", KERAS_EPS))


# ---------------------------------------------------------------------------------------------
# layer arrays -> the weight container


def _variable(arrays: LayerArrays, layer: str, variable: str, source: str) -> np.ndarray:
    if variable not in arrays.get(layer, {}):
        raise WeightsError(f"{source}: layer {layer!r} lacks its {variable!r} array; is the file complete?")
    return np.asarray(arrays[layer][variable], np.float32)


def _kernel_oihw(arrays: LayerArrays, caffe_name: str, source: str) -> np.ndarray:
    layer = KERAS_LAYERS[caffe_name]
    if caffe_name.endswith("/dw"):
        k = _variable(arrays, layer, "depthwise_kernel", source)
        if k.ndim != 4 or k.shape[3] != 1:
            raise WeightsError(f"{source}: {layer!r} has a depthwise kernel of shape {k.shape}, expected "
                               f"(3, 3, C, 1) (depth multiplier 1)")
        return np.ascontiguousarray(k.transpose(2, 3, 0, 1))
    k = _variable(arrays, layer, "kernel", source)
    if k.ndim != 4:
        raise WeightsError(f"{source}: {layer!r} has a kernel of shape {k.shape}, expected HWIO (4 axes)")
    return np.ascontiguousarray(k.transpose(3, 2, 0, 1))


def keras_arrays_to_weights(arrays: LayerArrays, source: str, topology: Optional[Mapping[str, Any]] = None,
                            class_names: Optional[List[str]] = None, fmt: str = "keras") -> MobileNetWeights:
    """Map the arrays of a Keras MobileNet (by Keras layer and variable name) onto the weight
    container; `topology` (the model configuration, when the file has one) gives eps and activation."""
    missing = [layer for layer in ("conv1", "conv_dw_1", "conv_pw_13") if layer not in arrays]
    if missing:
        present = ", ".join(sorted(arrays)[:6]) or "none"
        raise WeightsError(f"{source} is not a Keras MobileNet (v1): it has no layer {missing[0]!r} "
                           f"(its layers with weights: {present}{', ...' if len(arrays) > 6 else ''})")
    layers = topology_layers(topology)
    kernels = {name: _kernel_oihw(arrays, name, source) for name in net.conv_names()}
    try:
        width = net.infer_width({n: k.shape[0] for n, k in kernels.items() if not n.endswith("/dw")}, source)
    except ValueError as e:
        raise WeightsError(str(e)) from None
    arch = dataclasses.replace(net.keras_architecture(width), activation=_activation(layers))
    convs = {}
    for name, weight in kernels.items():
        bn = KERAS_LAYERS[name] + "_bn"
        gamma, beta, mean, var = (_variable(arrays, bn, v, source) for v in BN_VARIABLES)
        convs[name] = ConvParams(weight, mean, var, gamma, beta, _eps(layers, bn))
    head_weight = head_bias = None
    if HEAD_LAYER in arrays:
        head = _variable(arrays, HEAD_LAYER, "kernel", source)
        head_weight = np.ascontiguousarray(head.reshape(head.shape[-2], head.shape[-1]).T)
        if "bias" in arrays[HEAD_LAYER]:
            head_bias = _variable(arrays, HEAD_LAYER, "bias", source).reshape(-1)
    names = class_names if class_names and head_weight is not None and len(class_names) == len(head_weight) else None
    weights = MobileNetWeights(convs, TF_PREPROCESSING, f"{fmt}:{source if fmt == 'tfjs' else Path(source).name}",
                               head_weight, head_bias,
                               notes={"format": fmt, "head": HEAD_LAYER if head_weight is not None else "none"},
                               arch=arch, class_names=names)
    return weights.checked("is it a complete Keras MobileNet?")


def _split_name(name: str) -> Tuple[str, str]:
    """('conv_dw_1', 'depthwise_kernel') from 'conv_dw_1/depthwise_kernel:0' (any model prefix)."""
    parts = name.split(":")[0].split("/")
    return (parts[-2] if len(parts) > 1 else ""), parts[-1]


# ---------------------------------------------------------------------------------------------
# HDF5


def _h5_groups(path: Path) -> Iterator[Tuple[str, str, np.ndarray]]:
    """(layer, variable, array) of every weight of a Keras 2 / tf.keras HDF5 file (`save_weights`,
    or a whole-model `save` with its `model_weights` group)."""
    try:
        import h5py
    except ImportError:
        raise WeightsError(f"{path}: {H5PY_HINT}") from None
    try:
        f = h5py.File(str(path), "r")
    except OSError as e:
        raise WeightsError(f"cannot read {path} as HDF5 ({e}); the file is truncated or not a Keras .h5 file") from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            if "layers" in f or "_layer_checkpoint_dependencies" in f:
                raise WeightsError(f"{path} is a Keras 3 weights file; save it in the Keras 2 HDF5 layout "
                                   f"(tf.keras `model.save_weights('x.h5')`) or use keras.applications' own file")
            raise WeightsError(f"{path} is an HDF5 file but not Keras weights (no 'layer_names')")
        for layer in root.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else str(layer)
            group = root[layer]
            for weight in group.attrs.get("weight_names", []):
                weight = weight.decode() if isinstance(weight, bytes) else str(weight)
                try:
                    array = np.asarray(group[weight][()])
                except (KeyError, OSError) as e:
                    raise WeightsError(f"{path}: cannot read {layer}/{weight} ({e}); the file is truncated") from None
                yield layer, _split_name(weight)[1], array


def _h5_topology(path: Path) -> Optional[Mapping[str, Any]]:
    import h5py

    with h5py.File(str(path), "r") as f:
        config = f.attrs.get("model_config")
    if config is None:
        return None
    return json.loads(config.decode() if isinstance(config, bytes) else config)


def load_keras_h5(path: Path) -> MobileNetWeights:
    """A `keras.applications` MobileNet HDF5 file (with or without top) or a tf.keras save of one."""
    path = Path(path)
    arrays: LayerArrays = {}
    for layer, variable, array in _h5_groups(path):
        arrays.setdefault(layer, {})[variable] = array
    return keras_arrays_to_weights(arrays, str(path), _h5_topology(path), fmt="keras-h5")


# ---------------------------------------------------------------------------------------------
# TF.js layers format

_TFJS_DTYPES = {"float32": "<f4", "int32": "<i4", "uint8": "u1", "uint16": "<u2", "float16": "<f2"}


def _tfjs_array(entry: Mapping[str, Any], data: bytes, offset: int, where: str) -> Tuple[np.ndarray, int]:
    """One weight of a group's concatenated shards at `offset`: (float32 array, next offset)."""
    shape = [int(d) for d in entry.get("shape", [])]
    quant = entry.get("quantization")
    stored = (quant or {}).get("dtype", entry.get("dtype", "float32"))
    if stored not in _TFJS_DTYPES:
        raise WeightsError(f"{where}: weight {entry.get('name')!r} has dtype {stored!r}, which this reader does not know")
    dtype = np.dtype(_TFJS_DTYPES[stored])
    size = int(np.prod(shape)) * dtype.itemsize
    if offset + size > len(data):
        raise WeightsError(f"{where}: the shards hold {len(data)} bytes, but weight {entry.get('name')!r} needs bytes "
                           f"{offset}..{offset + size}; a shard is short (truncated download?)")
    values = np.frombuffer(data, dtype, int(np.prod(shape)), offset).reshape(shape).astype(np.float32)
    if quant and stored in ("uint8", "uint16"):  # affine quantization: q * scale + min
        values = values * np.float32(quant["scale"]) + np.float32(quant["min"])
    return values, offset + size


def load_tfjs(path: Path) -> MobileNetWeights:
    """A Keras MobileNet in TF.js layers format: `path` is model.json or the folder holding it."""
    path = Path(path)
    manifest_path = path / TFJS_MANIFEST if path.is_dir() else path
    where = str(manifest_path)
    try:
        model = json.loads(manifest_path.read_text(encoding="utf-8"))
        groups = model["weightsManifest"]
    except FileNotFoundError:
        raise WeightsError(f"{path} holds no {TFJS_MANIFEST} (a TF.js layers model)") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise WeightsError(f"{where} is not a TF.js layers model.json (no weightsManifest)") from None
    arrays: LayerArrays = {}
    for group in groups:
        chunks = []
        for shard in group.get("paths", []):
            shard_path = manifest_path.parent / shard
            if not shard_path.is_file():
                raise WeightsError(f"{where} lists weight shard {shard}, which is missing next to it; copy every "
                                   f"shard with model.json")
            chunks.append(shard_path.read_bytes())
        data, offset = b"".join(chunks), 0
        for entry in group.get("weights", []):
            values, offset = _tfjs_array(entry, data, offset, where)
            layer, variable = _split_name(str(entry.get("name", "")))
            arrays.setdefault(layer, {})[variable] = values
    labels = None
    metadata = manifest_path.parent / TFJS_METADATA
    if metadata.is_file():
        try:
            labels = [str(x) for x in json.loads(metadata.read_text(encoding="utf-8")).get("labels", [])] or None
        except (ValueError, AttributeError, UnicodeDecodeError):
            labels = None
    shown = f"{manifest_path.parent.name}/{manifest_path.name}"
    return keras_arrays_to_weights(arrays, shown, model.get("modelTopology"), labels, fmt="tfjs")
