"""Read and write Caffe `.caffemodel` files without Caffe.

A caffemodel is a serialized `NetParameter` protobuf. Only a small subset of `caffe.proto` matters
for MobileNetV1, so the protobuf wire format is decoded directly (no generated code, no Caffe):

  NetParameter      layer=100 (LayerParameter), layers=2 (legacy V1LayerParameter)
  LayerParameter    name=1, type=2 (string), blobs=7, batch_norm_param=139 (eps=3)
  V1LayerParameter  name=4, type=5 (enum), blobs=6
  BlobProto         shape=7 (BlobShape dim=1, int64), data=5 (float), double_data=8,
                    legacy num=1, channels=2, height=3, width=4

Layer layout (seed lrzpellegrini/Latent-Replay prototxts, shicai/MobileNet-Caffe): conv `X` (one OIHW
blob, no bias), then `X/bn` (BatchNorm) or `X/brn` (the seed's BatchReNorm), both with blobs
[mean_sum, var_sum, scale_factor(, iteration)], then `X/scale` (Scale: gamma, beta). The seed's head is
`mid_fc7`, a 1x1 Convolution with bias; the ImageNet model's head is `fc7`.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import mobilenet_v1 as net
from .weights import WeightsError
from .weights import CAFFE_PREPROCESSING, ConvParams, MobileNetWeights

NORM_SUFFIXES = ("/bn", "/brn")  # BatchNorm (first-batch prototxts) and BatchReNorm (later batches)
SCALE_SUFFIX = "/scale"
HEAD_NAMES = (net.HEAD, "fc7")  # the seed's head first; the ImageNet head only as a fallback
DEFAULT_EPS = 1e-5

# V1LayerParameter.LayerType values for the layer kinds this project reads or writes.
_V1_TYPES = {"Convolution": 4, "InnerProduct": 14, "Pooling": 17, "ReLU": 18, "Softmax": 20}
_V1_NAMES = {v: k for k, v in _V1_TYPES.items()}

# wire types
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


@dataclass
class CaffeLayer:
    """One layer of a caffemodel: its name, type and parameter blobs (float32 arrays)."""

    name: str
    type: str
    blobs: List[np.ndarray] = field(default_factory=list)
    eps: Optional[float] = None  # batch_norm_param.eps when present


class _Corrupt(Exception):
    """Malformed protobuf bytes."""


# ---------------------------------------------------------------------------------------------
# decoding


def _varint(buf: memoryview, pos: int) -> Tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise _Corrupt(f"truncated varint at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Corrupt(f"varint too long at byte {pos}")


def _fields(buf: memoryview) -> Iterator[Tuple[int, int, Union[int, memoryview]]]:
    """Yield (field number, wire type, value) of one message; LEN values are memoryview slices."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Corrupt(f"field number 0 at byte {pos}")
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire == _LEN:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise _Corrupt(f"length {size} at byte {pos} runs past the end")
            value, pos = buf[pos:pos + size], pos + size
        elif wire in (_I64, _I32):
            width = 8 if wire == _I64 else 4
            if pos + width > end:
                raise _Corrupt(f"truncated fixed-width field at byte {pos}")
            value, pos = buf[pos:pos + width], pos + width
        else:
            raise _Corrupt(f"unsupported wire type {wire} at byte {pos}")
        yield number, wire, value


def _packed_varints(value: Union[int, memoryview], wire: int) -> List[int]:
    if wire == _VARINT:
        return [int(value)]  # type: ignore[arg-type]
    out, pos = [], 0
    while pos < len(value):  # type: ignore[arg-type]
        v, pos = _varint(value, pos)  # type: ignore[arg-type]
        out.append(v)
    return out


def _floats(chunks: List[Tuple[int, memoryview]], dtype: str) -> np.ndarray:
    """Concatenate packed (LEN) and unpacked (fixed-width) occurrences of a repeated float field."""
    width = np.dtype(dtype).itemsize
    if any(len(v) % width for _, v in chunks):
        raise _Corrupt(f"blob data is not a whole number of {width}-byte floats")
    parts = [np.frombuffer(bytes(v), dtype=dtype) for _, v in chunks]
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _parse_blob(buf: memoryview) -> np.ndarray:
    shape: Optional[List[int]] = None
    legacy: Dict[int, int] = {}
    data: List[Tuple[int, memoryview]] = []
    double: List[Tuple[int, memoryview]] = []
    for number, wire, value in _fields(buf):
        if number == 7 and wire == _LEN:
            shape = [d for n, w, v in _fields(value) if n == 1 for d in _packed_varints(v, w)]  # type: ignore[arg-type]
        elif number in (1, 2, 3, 4) and wire == _VARINT:
            legacy[number] = int(value)  # type: ignore[arg-type]
        elif number == 5 and wire in (_LEN, _I32):
            data.append((wire, value))  # type: ignore[arg-type]
        elif number == 8 and wire in (_LEN, _I64):
            double.append((wire, value))  # type: ignore[arg-type]
    arr = _floats(data, "<f4") if data else _floats(double, "<f8")
    arr = arr.astype(np.float32)
    if shape is None and legacy:
        shape = [legacy.get(i, 1) for i in (1, 2, 3, 4)]
    if shape is not None and int(np.prod(shape)) == arr.size:
        arr = arr.reshape(shape)
    return arr


def _parse_eps(buf: memoryview) -> Optional[float]:
    for number, wire, value in _fields(buf):
        if number == 3 and wire == _I32:
            return struct.unpack("<f", bytes(value))[0]  # type: ignore[arg-type]
    return None


def _parse_layer(buf: memoryview, legacy: bool) -> CaffeLayer:
    name_f, type_f, blobs_f = (4, 5, 6) if legacy else (1, 2, 7)
    layer = CaffeLayer(name="", type="")
    for number, wire, value in _fields(buf):
        if number == name_f and wire == _LEN:
            layer.name = bytes(value).decode("utf-8", "replace")  # type: ignore[arg-type]
        elif number == type_f:
            if legacy and wire == _VARINT:
                layer.type = _V1_NAMES.get(int(value), f"V1:{value}")  # type: ignore[arg-type]
            elif wire == _LEN:
                layer.type = bytes(value).decode("utf-8", "replace")  # type: ignore[arg-type]
        elif number == blobs_f and wire == _LEN:
            layer.blobs.append(_parse_blob(value))  # type: ignore[arg-type]
        elif number == 139 and wire == _LEN and not legacy:
            layer.eps = _parse_eps(value)  # type: ignore[arg-type]
    return layer


def parse_caffemodel(data: bytes) -> List[CaffeLayer]:
    """All layers of a serialized NetParameter, new-style `layer` and legacy `layers` alike."""
    layers = []
    for number, wire, value in _fields(memoryview(data)):
        if number in (100, 2) and wire == _LEN:
            layers.append(_parse_layer(value, legacy=number == 2))  # type: ignore[arg-type]
    return layers


def read_caffemodel(path: Union[str, Path]) -> List[CaffeLayer]:
    """The layers of the caffemodel at `path`; WeightsError if it is not one."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise WeightsError(f"cannot read Caffe model {path}: {e.strerror or e}; check the path") from e
    try:
        layers = parse_caffemodel(data)
    except _Corrupt as e:
        raise WeightsError(
            f"{path} is not a valid Caffe model ({e}); the file is truncated or corrupt, download it again"
        ) from None
    if not any(layer.blobs for layer in layers):
        raise WeightsError(f"{path} holds no Caffe layers with weights; is it really a .caffemodel?")
    return layers


# ---------------------------------------------------------------------------------------------
# mapping to the container


def _by_name(layers: Sequence[CaffeLayer]) -> Dict[str, CaffeLayer]:
    """Layers by name, preferring the occurrence that carries blobs (TRAIN/TEST duplicates)."""
    found: Dict[str, CaffeLayer] = {}
    for layer in layers:
        if layer.name not in found or (layer.blobs and not found[layer.name].blobs):
            found[layer.name] = layer
    return found


def _vector(arr: np.ndarray, size: int, what: str, path: Path) -> np.ndarray:
    if arr.size != size:
        raise WeightsError(f"{path}: {what} has {arr.size} values, expected {size}; is this a MobileNetV1 model?")
    return arr.reshape(size).astype(np.float32)


def _norm_stats(norm: CaffeLayer, channels: int, path: Path) -> Tuple[np.ndarray, np.ndarray, float]:
    """Mean, variance and eps of a BatchNorm/BatchReNorm layer: stored sums divided by the count."""
    if len(norm.blobs) < 3:
        raise WeightsError(f"{path}: layer {norm.name!r} has {len(norm.blobs)} blobs, expected 3 (mean, var, count)")
    factor = float(norm.blobs[2].reshape(-1)[0])
    factor = factor if factor != 0 else 1.0  # an untouched layer: sums are zero too
    mean = _vector(norm.blobs[0], channels, f"{norm.name} mean", path) / factor
    var = _vector(norm.blobs[1], channels, f"{norm.name} variance", path) / factor
    return mean, var, norm.eps if norm.eps is not None else DEFAULT_EPS


def _conv_params(layers: Dict[str, CaffeLayer], layer: net.ConvLayer, path: Path) -> ConvParams:
    conv = layers.get(layer.name)
    if conv is None or not conv.blobs:
        raise WeightsError(f"{path} lacks conv layer {layer.name!r}; is this a MobileNetV1 caffemodel?")
    weight = conv.blobs[0]
    if weight.size != int(np.prod(layer.weight_shape)):
        raise WeightsError(
            f"{path}: layer {layer.name!r} has {weight.size} weights, expected shape {layer.weight_shape}"
        )
    norm = next((layers[layer.name + s] for s in NORM_SUFFIXES if layer.name + s in layers), None)
    if norm is None:
        raise WeightsError(f"{path} has no normalization layer {layer.name}/bn or {layer.name}/brn")
    c = layer.out_channels
    mean, var, eps = _norm_stats(norm, c, path)
    if len(conv.blobs) > 1:  # a conv bias shifts the statistics: BN(x + b) uses mean - b
        mean = mean - _vector(conv.blobs[1], c, f"{layer.name} bias", path)
    scale = layers.get(layer.name + SCALE_SUFFIX)
    gamma = _vector(scale.blobs[0], c, f"{scale.name} gamma", path) if scale and scale.blobs else np.ones(c, np.float32)
    beta = (_vector(scale.blobs[1], c, f"{scale.name} beta", path) if scale and len(scale.blobs) > 1
            else np.zeros(c, np.float32))
    return ConvParams(weight.reshape(layer.weight_shape).astype(np.float32), mean, var, gamma, beta, float(eps))


def _head(layers: Dict[str, CaffeLayer], features: int, path: Path) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], str]:
    for name in HEAD_NAMES:
        head = layers.get(name)
        if head is None or not head.blobs:
            continue
        weight = head.blobs[0]
        if weight.size % features:
            raise WeightsError(f"{path}: head {name!r} has {weight.size} weights, not a multiple of {features}")
        weight = weight.reshape(-1, features).astype(np.float32)  # InnerProduct or 1x1 Convolution
        bias = _vector(head.blobs[1], weight.shape[0], f"{name} bias", path) if len(head.blobs) > 1 else None
        return weight, bias, name
    return None, None, ""


def _width(layers: Dict[str, CaffeLayer], path: Path) -> float:
    """The width multiplier, read from conv1's weight count (out x 3 x 3 x 3)."""
    conv1 = layers.get("conv1")
    if conv1 is None or not conv1.blobs:
        raise WeightsError(f"{path} lacks conv layer 'conv1'; is this a MobileNetV1 caffemodel?")
    try:
        return net.infer_width({"conv1": conv1.blobs[0].size // 27}, str(path))
    except ValueError as e:
        raise WeightsError(str(e)) from None


def caffe_layers_to_weights(layers: Sequence[CaffeLayer], path: Union[str, Path]) -> MobileNetWeights:
    """Map parsed caffemodel layers onto the weight container (Caffe preprocessing)."""
    path = Path(path)
    named = _by_name(layers)
    arch = net.Architecture(_width(named, path))
    convs = {layer.name: _conv_params(named, layer, path) for layer in net.conv_layers(arch=arch)}
    head_weight, head_bias, head_name = _head(named, net.features(arch), path)
    norm_types = sorted({named[n + s].type for n in convs for s in NORM_SUFFIXES if n + s in named})
    weights = MobileNetWeights(
        convs=convs, preprocessing=CAFFE_PREPROCESSING, source=f"caffe:{path.name}",
        head_weight=head_weight, head_bias=head_bias,
        notes={"format": "caffemodel", "normalization": ",".join(norm_types), "head": head_name or "none"},
        arch=arch,
    )
    return weights.checked("is this a MobileNetV1 caffemodel?")


def load_caffemodel(path: Union[str, Path]) -> MobileNetWeights:
    """Read a MobileNetV1 `.caffemodel` (BatchNorm+Scale or BatchReNorm+Scale) into the container."""
    return caffe_layers_to_weights(read_caffemodel(path), path)


# ---------------------------------------------------------------------------------------------
# encoding (tests and stand-in models)


def _enc_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _enc_key(number: int, wire: int) -> bytes:
    return _enc_varint(number << 3 | wire)


def _enc_len(number: int, payload: bytes) -> bytes:
    return _enc_key(number, _LEN) + _enc_varint(len(payload)) + payload


def _enc_blob(arr: np.ndarray, legacy: bool) -> bytes:
    arr = np.asarray(arr, dtype="<f4")
    if legacy:  # V1 blobs are 4D: pad the shape on the left with ones
        dims = (1,) * (4 - arr.ndim) + tuple(arr.shape) if arr.ndim <= 4 else (arr.size, 1, 1, 1)
        head = b"".join(_enc_key(i, _VARINT) + _enc_varint(int(d)) for i, d in zip((1, 2, 3, 4), dims))
    else:
        packed = b"".join(_enc_varint(int(d)) for d in arr.shape)
        head = _enc_len(7, _enc_len(1, packed))
    return head + _enc_len(5, arr.tobytes())


def _enc_layer(layer: CaffeLayer, legacy: bool) -> bytes:
    if legacy:
        out = _enc_len(4, layer.name.encode()) + _enc_key(5, _VARINT) + _enc_varint(_V1_TYPES.get(layer.type, 0))
        return out + b"".join(_enc_len(6, _enc_blob(b, True)) for b in layer.blobs)
    out = _enc_len(1, layer.name.encode()) + _enc_len(2, layer.type.encode())
    out += b"".join(_enc_len(7, _enc_blob(b, False)) for b in layer.blobs)
    if layer.eps is not None:
        out += _enc_len(139, _enc_key(3, _I32) + struct.pack("<f", layer.eps))
    return out


def encode_caffemodel(layers: Sequence[Union[CaffeLayer, Tuple[str, str, Sequence[np.ndarray]]]],
                      legacy: bool = False, name: str = "MobileNetV1") -> bytes:
    """Serialize layers as a NetParameter (`layers` as legacy V1 messages when `legacy`)."""
    out = _enc_len(1, name.encode())
    for layer in layers:
        if not isinstance(layer, CaffeLayer):
            layer = CaffeLayer(layer[0], layer[1], list(layer[2]))
        out += _enc_len(2 if legacy else 100, _enc_layer(layer, legacy))
    return out


def write_caffemodel(path: Union[str, Path],
                     layers: Sequence[Union[CaffeLayer, Tuple[str, str, Sequence[np.ndarray]]]],
                     legacy: bool = False) -> Path:
    """Write `layers` (CaffeLayer or (name, type, blobs) tuples) as a .caffemodel file."""
    path = Path(path)
    path.write_bytes(encode_caffemodel(layers, legacy=legacy))
    return path


def weights_to_caffe_layers(weights: MobileNetWeights, norm: str = "BatchNorm", count: float = 1.0,
                            head: bool = True) -> List[CaffeLayer]:
    """The caffemodel layers of `weights`, laid out like the seed's prototxts.

    `norm` is "BatchNorm" (`X/bn`) or "BatchReNorm" (`X/brn`); statistics are stored as sums times
    `count` with `count` as the scale factor, as Caffe keeps them.
    """
    suffix = {"BatchNorm": "/bn", "BatchReNorm": "/brn"}[norm]
    out: List[CaffeLayer] = []
    for layer in net.conv_layers(arch=weights.arch):
        p = weights.convs[layer.name]
        stats = [p.mean * count, p.var * count, np.array([count], np.float32)]
        if norm == "BatchReNorm":
            stats.append(np.zeros(1, np.float32))  # iteration counter
        conv_type = "DepthwiseConvolution" if layer.kind == "dw" else "Convolution"
        out += [CaffeLayer(layer.name, conv_type, [p.weight]),
                CaffeLayer(layer.name + suffix, norm, stats, eps=p.eps),
                CaffeLayer(layer.name + SCALE_SUFFIX, "Scale", [p.gamma, p.beta])]
    if head and weights.head_weight is not None:
        blobs = [weights.head_weight.reshape(weights.head_weight.shape + (1, 1))]
        if weights.head_bias is not None:
            blobs.append(weights.head_bias)
        out.append(CaffeLayer(net.HEAD, "Convolution", blobs))
    return out
