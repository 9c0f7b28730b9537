"""MobileNetV1 as used by Latent Replay: layer list, shapes and cost, with the Caffe layer names.

This module is the single description of the network. The ONNX graph builder (`graph.py`), the
weight importers (`weights.py`, `caffe.py`, `torch_state.py`), the layer table and the runtime all
read it, so a layer name or a shape is written down exactly once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

DEFAULT_INPUT_SIZE = 128
DEFAULT_CLASSES = 50
DEFAULT_LATENT_LAYER = "conv5_4/dw"
HEAD = "mid_fc7"
POOL = "pool6"
DATA = "data"

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

    @property
    def kernel(self) -> int:
        return 1 if self.kind == "sep" else 3

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
    # 3x3 convs use padding 1, 1x1 convs padding 0: the output is ceil(hw / stride) either way.
    return (hw + stride - 1) // stride


def conv_layers(input_size: int = DEFAULT_INPUT_SIZE) -> List[ConvLayer]:
    """All conv blocks in order, with their shapes for a square `input_size` input."""
    if input_size < 32:
        raise ValueError(f"input size {input_size} is too small for MobileNetV1 (at least 32)")
    layers: List[ConvLayer] = []
    channels, hw = 3, input_size
    for name, kind, out, stride in _CONV_SPEC:
        out_channels = channels if kind == "dw" else out
        out_hw = _conv_out(hw, stride)
        layers.append(ConvLayer(name, kind, channels, out_channels, stride, hw, out_hw))
        channels, hw = out_channels, out_hw
    return layers


def check_latent_layer(name: str) -> str:
    """Return `name` if it is a valid latent layer, else raise ValueError listing the valid ones."""
    if name not in LATENT_LAYERS:
        raise ValueError(
            f"unknown latent layer {name!r}; valid latent layers: {', '.join(LATENT_LAYERS)}"
        )
    return name


def latent_shape(latent_layer: str, input_size: int = DEFAULT_INPUT_SIZE) -> Tuple[int, ...]:
    """Shape of one stored pattern (without batch): CxHxW, (1024,) for pool6, HxWx3 uint8 for data."""
    check_latent_layer(latent_layer)
    if latent_layer == DATA:
        return (input_size, input_size, 3)
    layers = conv_layers(input_size)
    if latent_layer == POOL:
        return (layers[-1].out_channels,)
    layer = next(l for l in layers if l.name == latent_layer)
    return (layer.out_channels, layer.out_hw, layer.out_hw)


def split_layers(latent_layer: str, input_size: int = DEFAULT_INPUT_SIZE) -> Tuple[List[ConvLayer], List[ConvLayer]]:
    """Conv blocks of the frozen front (up to and including the latent layer) and of the back."""
    check_latent_layer(latent_layer)
    layers = conv_layers(input_size)
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


def split_cost(latent_layer: str, input_size: int = DEFAULT_INPUT_SIZE, classes: int = DEFAULT_CLASSES) -> SplitCost:
    """MACs and parameter counts of front and back (the back includes pool6 and mid_fc7)."""
    front, back = split_layers(latent_layer, input_size)
    final_channels = conv_layers(input_size)[-1].out_channels
    head_macs = final_channels * classes
    head_params = final_channels * classes  # mid_fc7 has no bias in the default (PyTorch) preset
    pool_macs = final_channels * conv_layers(input_size)[-1].out_hw ** 2  # additions, counted as MACs
    return SplitCost(
        latent_layer=latent_layer,
        latent_shape=latent_shape(latent_layer, input_size),
        front_macs=sum(l.macs for l in front) + (pool_macs if latent_layer == POOL else 0),
        front_params=sum(l.params for l in front),
        back_macs=sum(l.macs for l in back) + (0 if latent_layer == POOL else pool_macs) + head_macs,
        back_params=sum(l.params for l in back) + head_params,
    )


def layer_table(input_size: int = DEFAULT_INPUT_SIZE, classes: int = DEFAULT_CLASSES) -> List[SplitCost]:
    """One row per valid latent layer, in forward order."""
    return [split_cost(name, input_size, classes) for name in LATENT_LAYERS]


def conv_names() -> List[str]:
    return [name for name, _, _, _ in _CONV_SPEC]
