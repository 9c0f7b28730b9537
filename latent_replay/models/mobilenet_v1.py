"""MobileNetV1 as used by Latent Replay: layer list, shapes and cost, with the Caffe layer names.

This module is the single description of the network. The ONNX graph builder (`graph.py`), the
weight importers (`weights.py`, `caffe.py`, `torch_state.py`, `keras.py`), the layer table and the
runtime all read it, so a layer name or a shape is written down exactly once.

What differs between the published MobileNetV1 families travels with the weights as an
`Architecture` (like timm's pretrained config): the width multiplier alpha (channels
`int(filters * alpha)`, as Keras computes them), the padding rule of the 3x3 convolutions (Caffe and
PyTorch pad 1 on every side; TF/Keras 'same' pads a stride-2 conv on an even map 0 before and 1
after) and the activation (ReLU; Keras clips at 6, ReLU6).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Tuple

DEFAULT_INPUT_SIZE = 128
DEFAULT_CLASSES = 50
DEFAULT_LATENT_LAYER = "conv5_4/dw"
HEAD = "mid_fc7"
POOL = "pool6"
DATA = "data"

WIDTHS = (0.25, 0.5, 0.75, 1.0)  # the width multipliers with published ImageNet weights (Keras)
PADDINGS = ("symmetric", "same")
ACTIVATIONS = ("relu", "relu6")
RELU6_MAX = 6.0


@dataclass(frozen=True)
class Architecture:
    """The family-specific choices of a MobileNetV1: width multiplier, padding rule, activation."""

    width: float = 1.0
    padding: str = "symmetric"  # "symmetric": 1 on each side (Caffe, PyTorch); "same": TF/Keras 'same'
    activation: str = "relu"  # "relu", or "relu6" (Keras: min(max(x, 0), 6))

    def __post_init__(self) -> None:
        if self.width not in WIDTHS:
            raise ValueError(f"width {self.width} is not a MobileNetV1 width multiplier; choose one of "
                             f"{', '.join(str(w) for w in WIDTHS)}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, not {self.padding!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {self.activation!r}")

    def channels(self, filters: int) -> int:
        """Channels of a layer with `filters` at width 1.0 (Keras: `int(filters * alpha)`)."""
        return int(filters * self.width)

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


DEFAULT_ARCH = Architecture()  # Caffe's layout, also timm's and pytorchcv's


def keras_architecture(width: float) -> Architecture:
    """Keras/TF MobileNet at `width`: 'same' padding, ReLU6."""
    return Architecture(width, "same", "relu6")


# (name, kind, out_channels, stride); kind: "conv" (3x3 full), "dw" (3x3 depthwise), "sep" (1x1)
_CONV_SPEC: List[Tuple[str, str, int, int]] = [("conv1", "conv", 32, 2)]
for _name, _out, _stride in [
    ("conv2_1", 64, 1), ("conv2_2", 128, 2), ("conv3_1", 128, 1), ("conv3_2", 256, 2),
    ("conv4_1", 256, 1), ("conv4_2", 512, 2), ("conv5_1", 512, 1), ("conv5_2", 512, 1),
    ("conv5_3", 512, 1), ("conv5_4", 512, 1), ("conv5_5", 512, 1), ("conv5_6", 1024, 2),
    ("conv6", 1024, 1),
]:
    _CONV_SPEC.append((f"{_name}/dw", "dw", -1, _stride))  # depthwise keeps the channel count
    _CONV_SPEC.append((f"{_name}/sep", "sep", _out, 1))

# The seed's `list_layers`: where latent replay may split the network.
LATENT_LAYERS: List[str] = [
    DATA, "conv2_1/dw", "conv2_2/dw", "conv3_1/dw", "conv3_2/dw", "conv4_1/dw", "conv4_2/dw",
    "conv5_1/dw", "conv5_2/dw", "conv5_3/dw", "conv5_4/dw", "conv5_5/dw", "conv5_6/dw", "conv6/dw",
    POOL,
]


@dataclass(frozen=True)
class ConvLayer:
    """One conv + normalization + scale/shift + ReLU block, with its shapes at a given input size."""

    name: str
    kind: str  # "conv", "dw" or "sep"
    in_channels: int
    out_channels: int
    stride: int
    in_hw: int
    out_hw: int
    pad_begin: int = 1  # zero rows/columns added before (top, left) the input of a 3x3 conv
    pad_end: int = 1  # ... and after (bottom, right)
    activation: str = "relu"

    @property
    def kernel(self) -> int:
        return 1 if self.kind == "sep" else 3

    @property
    def pads(self) -> List[int]:
        """ONNX Conv `pads` (top, left, bottom, right)."""
        return [self.pad_begin, self.pad_begin, self.pad_end, self.pad_end]

    @property
    def group(self) -> int:
        return self.in_channels if self.kind == "dw" else 1

    @property
    def weight_shape(self) -> Tuple[int, int, int, int]:
        """OIHW, as ONNX Conv and PyTorch expect it."""
        return (self.out_channels, self.in_channels // self.group, self.kernel, self.kernel)

    @property
    def params(self) -> int:
        """Weights plus the per-channel scale and shift (running statistics are not parameters)."""
        o, i, kh, kw = self.weight_shape
        return o * i * kh * kw + 2 * self.out_channels

    @property
    def macs(self) -> int:
        o, i, kh, kw = self.weight_shape
        return o * i * kh * kw * self.out_hw * self.out_hw


def _conv_out(hw: int, stride: int) -> int:
    # 3x3 convs pad to keep ceil(hw / stride) outputs under both rules, 1x1 convs pad 0
    return (hw + stride - 1) // stride


def _pads(kind: str, hw: int, out_hw: int, stride: int, padding: str) -> Tuple[int, int]:
    """(before, after) zero padding of one spatial axis."""
    if kind == "sep":
        return 0, 0
    if padding == "symmetric":
        return 1, 1
    total = max((out_hw - 1) * stride + 3 - hw, 0)  # TF 'same': the extra row goes after
    return total // 2, total - total // 2


def conv_layers(input_size: int = DEFAULT_INPUT_SIZE, arch: Architecture = DEFAULT_ARCH) -> List[ConvLayer]:
    """All conv blocks in order, with their shapes and paddings for a square `input_size` input."""
    if input_size < 32:
        raise ValueError(f"input size {input_size} is too small for MobileNetV1 (at least 32)")
    layers: List[ConvLayer] = []
    channels, hw = 3, input_size
    for name, kind, out, stride in _CONV_SPEC:
        out_channels = channels if kind == "dw" else arch.channels(out)
        out_hw = _conv_out(hw, stride)
        before, after = _pads(kind, hw, out_hw, stride, arch.padding)
        layers.append(ConvLayer(name, kind, channels, out_channels, stride, hw, out_hw, before, after,
                                arch.activation))
        channels, hw = out_channels, out_hw
    return layers


def infer_width(out_channels: Mapping[str, int], source: str) -> float:
    """The width multiplier whose channel counts a weight file's layers have (name of conv1 or a
    /sep layer -> output channels, any subset); ValueError naming a layer that fits no width."""
    base = {name: out for name, kind, out, _ in _CONV_SPEC if kind != "dw"}
    for width in WIDTHS:
        if all(Architecture(width).channels(base[name]) == c for name, c in out_channels.items()):
            return width
    widths = ", ".join(str(w) for w in WIDTHS)
    for name, c in out_channels.items():
        expected = [Architecture(w).channels(base[name]) for w in WIDTHS]
        if c not in expected:
            raise ValueError(f"{source} is not a MobileNetV1 of width {widths}: layer {name!r} has {c} output "
                             f"channels, not one of {', '.join(map(str, expected))}")
    shown = ", ".join(f"{n} {c}" for n, c in out_channels.items())
    raise ValueError(f"{source} is not a MobileNetV1 of one width ({widths}): its layers' channels ({shown}) mix widths")


def check_latent_layer(name: str) -> str:
    """Return `name` if it is a valid latent layer, else raise ValueError listing the valid ones."""
    if name not in LATENT_LAYERS:
        raise ValueError(
            f"unknown latent layer {name!r}; valid latent layers: {', '.join(LATENT_LAYERS)}"
        )
    return name


def latent_shape(latent_layer: str, input_size: int = DEFAULT_INPUT_SIZE,
                 arch: Architecture = DEFAULT_ARCH) -> Tuple[int, ...]:
    """Shape of one stored pattern (without batch): CxHxW, (features,) for pool6 (1024 at width
    1.0), HxWx3 uint8 for data."""
    check_latent_layer(latent_layer)
    if latent_layer == DATA:
        return (input_size, input_size, 3)
    layers = conv_layers(input_size, arch)
    if latent_layer == POOL:
        return (layers[-1].out_channels,)
    layer = next(l for l in layers if l.name == latent_layer)
    return (layer.out_channels, layer.out_hw, layer.out_hw)


def split_layers(latent_layer: str, input_size: int = DEFAULT_INPUT_SIZE,
                 arch: Architecture = DEFAULT_ARCH) -> Tuple[List[ConvLayer], List[ConvLayer]]:
    """Conv blocks of the frozen front (up to and including the latent layer) and of the back."""
    check_latent_layer(latent_layer)
    layers = conv_layers(input_size, arch)
    if latent_layer == DATA:
        return [], layers
    if latent_layer == POOL:
        return layers, []
    idx = next(i for i, l in enumerate(layers) if l.name == latent_layer)
    return layers[: idx + 1], layers[idx + 1:]


@dataclass(frozen=True)
class SplitCost:
    """Cost of the front and the back for one split, per image."""

    latent_layer: str
    latent_shape: Tuple[int, ...]
    front_macs: int
    front_params: int
    back_macs: int
    back_params: int

    @property
    def latent_values(self) -> int:
        n = 1
        for s in self.latent_shape:
            n *= s
        return n

    def bytes_per_pattern(self, storage: str) -> int:
        """Bytes one stored pattern takes: fp32, fp16, or uint8 (the per-channel scale is shared)."""
        if self.latent_layer == DATA:
            return self.latent_values  # raw frames are uint8 whatever the storage setting
        return self.latent_values * {"fp32": 4, "fp16": 2, "uint8": 1}[storage]


def split_cost(latent_layer: str, input_size: int = DEFAULT_INPUT_SIZE, classes: int = DEFAULT_CLASSES,
               arch: Architecture = DEFAULT_ARCH) -> SplitCost:
    """MACs and parameter counts of front and back (the back includes pool6 and mid_fc7)."""
    front, back = split_layers(latent_layer, input_size, arch)
    last = conv_layers(input_size, arch)[-1]
    final_channels = last.out_channels
    head_macs = final_channels * classes
    head_params = final_channels * classes  # mid_fc7 has no bias in the default (PyTorch) preset
    pool_macs = final_channels * last.out_hw ** 2  # additions, counted as MACs
    return SplitCost(
        latent_layer=latent_layer,
        latent_shape=latent_shape(latent_layer, input_size, arch),
        front_macs=sum(l.macs for l in front) + (pool_macs if latent_layer == POOL else 0),
        front_params=sum(l.params for l in front),
        back_macs=sum(l.macs for l in back) + (0 if latent_layer == POOL else pool_macs) + head_macs,
        back_params=sum(l.params for l in back) + head_params,
    )


def layer_table(input_size: int = DEFAULT_INPUT_SIZE, classes: int = DEFAULT_CLASSES,
                arch: Architecture = DEFAULT_ARCH) -> List[SplitCost]:
    """One row per valid latent layer, in forward order."""
    return [split_cost(name, input_size, classes, arch) for name in LATENT_LAYERS]


def features(arch: Architecture = DEFAULT_ARCH) -> int:
    """Channels of pool6, the input of mid_fc7 (1024 at width 1.0, 768 at 0.75)."""
    return arch.channels(_CONV_SPEC[-1][2])


def conv_names() -> List[str]:
    return [name for name, _, _, _ in _CONV_SPEC]
