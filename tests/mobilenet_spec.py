"""MobileNetV1 written down for the tests, independently of `latent_replay.models.mobilenet_v1`.

Typed from the MobileNetV1 paper (Howard et al. 2017, Table 1: "MobileNet Body Architecture") and
docs/algorithms.md, with the Caffe layer names and a 128x128 input. The paper lists the
last depthwise conv with stride 2 on a 7x7 input and a 7x7 output; every implementation (Caffe,
pytorchcv, timm) and docs/algorithms.md use stride 1 there (conv6/dw: 1024x4x4 -> 1024x4x4).

Every row: name, kind, in channels, out channels, stride, input H=W, output H=W. Kinds: "conv" (3x3
full conv, padding 1), "dw" (3x3 depthwise, padding 1, groups = channels), "sep" (1x1 pointwise,
padding 0). Nothing here is computed from the package: `torch_oracle` builds its reference network
from this table, and `test_layer_spec.py` checks the package's layer table against it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

INPUT = 128

SPEC: List[Tuple[str, str, int, int, int, int, int]] = [
    # name          kind    in    out  stride in_hw out_hw
    ("conv1",       "conv", 3,    32,   2,   128,  64),
    ("conv2_1/dw",  "dw",   32,   32,   1,   64,   64),
    ("conv2_1/sep", "sep",  32,   64,   1,   64,   64),
    ("conv2_2/dw",  "dw",   64,   64,   2,   64,   32),
    ("conv2_2/sep", "sep",  64,   128,  1,   32,   32),
    ("conv3_1/dw",  "dw",   128,  128,  1,   32,   32),
    ("conv3_1/sep", "sep",  128,  128,  1,   32,   32),
    ("conv3_2/dw",  "dw",   128,  128,  2,   32,   16),
    ("conv3_2/sep", "sep",  128,  256,  1,   16,   16),
    ("conv4_1/dw",  "dw",   256,  256,  1,   16,   16),
    ("conv4_1/sep", "sep",  256,  256,  1,   16,   16),
    ("conv4_2/dw",  "dw",   256,  256,  2,   16,   8),
    ("conv4_2/sep", "sep",  256,  512,  1,   8,    8),
    ("conv5_1/dw",  "dw",   512,  512,  1,   8,    8),
    ("conv5_1/sep", "sep",  512,  512,  1,   8,    8),
    ("conv5_2/dw",  "dw",   512,  512,  1,   8,    8),
    ("conv5_2/sep", "sep",  512,  512,  1,   8,    8),
    ("conv5_3/dw",  "dw",   512,  512,  1,   8,    8),
    ("conv5_3/sep", "sep",  512,  512,  1,   8,    8),
    ("conv5_4/dw",  "dw",   512,  512,  1,   8,    8),
    ("conv5_4/sep", "sep",  512,  512,  1,   8,    8),
    ("conv5_5/dw",  "dw",   512,  512,  1,   8,    8),
    ("conv5_5/sep", "sep",  512,  512,  1,   8,    8),
    ("conv5_6/dw",  "dw",   512,  512,  2,   8,    4),
    ("conv5_6/sep", "sep",  512,  1024, 1,   4,    4),
    ("conv6/dw",    "dw",   1024, 1024, 1,   4,    4),
    ("conv6/sep",   "sep",  1024, 1024, 1,   4,    4),
]

# Weight shapes (OIHW), typed out rather than derived from the rows above.
WEIGHT_SHAPES = {
    "conv1": (32, 3, 3, 3),
    "conv2_1/dw": (32, 1, 3, 3), "conv2_1/sep": (64, 32, 1, 1),
    "conv2_2/dw": (64, 1, 3, 3), "conv2_2/sep": (128, 64, 1, 1),
    "conv3_1/dw": (128, 1, 3, 3), "conv3_1/sep": (128, 128, 1, 1),
    "conv3_2/dw": (128, 1, 3, 3), "conv3_2/sep": (256, 128, 1, 1),
    "conv4_1/dw": (256, 1, 3, 3), "conv4_1/sep": (256, 256, 1, 1),
    "conv4_2/dw": (256, 1, 3, 3), "conv4_2/sep": (512, 256, 1, 1),
    "conv5_1/dw": (512, 1, 3, 3), "conv5_1/sep": (512, 512, 1, 1),
    "conv5_2/dw": (512, 1, 3, 3), "conv5_2/sep": (512, 512, 1, 1),
    "conv5_3/dw": (512, 1, 3, 3), "conv5_3/sep": (512, 512, 1, 1),
    "conv5_4/dw": (512, 1, 3, 3), "conv5_4/sep": (512, 512, 1, 1),
    "conv5_5/dw": (512, 1, 3, 3), "conv5_5/sep": (512, 512, 1, 1),
    "conv5_6/dw": (512, 1, 3, 3), "conv5_6/sep": (1024, 512, 1, 1),
    "conv6/dw": (1024, 1, 3, 3), "conv6/sep": (1024, 1024, 1, 1),
}

# docs/algorithms.md (analytic, 128x128, 50 classes): multiply-adds and parameters.
TOTAL_MACS_M = 185.4
TOTAL_PARAMS_M = 3.26  # with the 1024 x 50 head, without bias
CONV5_4_FRONT_MACS_M, CONV5_4_BACK_MACS_M, CONV5_4_BACK_PARAMS_M = 126.1, 59.3, 2.18

# The valid latent layers (the seed's list_layers) and their pattern shapes at 128x128.
LATENT_SHAPES = {
    "data": (128, 128, 3),
    "conv2_1/dw": (32, 64, 64), "conv2_2/dw": (64, 32, 32), "conv3_1/dw": (128, 32, 32),
    "conv3_2/dw": (128, 16, 16), "conv4_1/dw": (256, 16, 16), "conv4_2/dw": (256, 8, 8),
    "conv5_1/dw": (512, 8, 8), "conv5_2/dw": (512, 8, 8), "conv5_3/dw": (512, 8, 8),
    "conv5_4/dw": (512, 8, 8), "conv5_5/dw": (512, 8, 8), "conv5_6/dw": (512, 4, 4),
    "conv6/dw": (1024, 4, 4), "pool6": (1024,),
}


@dataclass(frozen=True)
class Layer:
    """One row of SPEC with what a convolution call needs."""

    name: str
    kind: str
    in_channels: int
    out_channels: int
    stride: int
    in_hw: int
    out_hw: int
    same_padding: bool = False  # TF 'same' (Keras): the odd padding pixel after, else 1 on each side
    relu6: bool = False  # Keras clips at 6

    @property
    def kernel(self) -> int:
        return 1 if self.kind == "sep" else 3

    @property
    def pads(self) -> Tuple[int, int]:
        """(before, after) zero padding of H and W."""
        if self.kind == "sep":
            return 0, 0
        if not self.same_padding:
            return 1, 1
        total = max((self.out_hw - 1) * self.stride + 3 - self.in_hw, 0)  # TF: out = ceil(in / stride)
        return total // 2, total - total // 2

    @property
    def group(self) -> int:
        return self.in_channels if self.kind == "dw" else 1

    @property
    def weight_shape(self) -> Tuple[int, int, int, int]:
        if not self.same_padding and self.out_channels == dict((r[0], r[3]) for r in SPEC)[self.name]:
            return WEIGHT_SHAPES[self.name]  # typed out above for width 1.0
        return (self.out_channels, self.in_channels // self.group, self.kernel, self.kernel)


LAYERS: List[Layer] = [Layer(*row) for row in SPEC]


def keras_layers(width: float, size: int = INPUT) -> List[Layer]:
    """Keras's MobileNet (`int(filters * alpha)` channels, 'same' padding, ReLU6) at `size`, with the
    Caffe names of SPEC's rows."""
    out, channels, hw = [], 3, size
    for name, kind, _, c, stride, _, _ in SPEC:
        c = channels if kind == "dw" else int(c * width)
        out_hw = -(-hw // stride)
        out.append(Layer(name, kind, channels, c, stride, hw, out_hw, True, True))
        channels, hw = c, out_hw
    return out


def split(latent_layer: str, layers: List[Layer] = LAYERS) -> Tuple[List[Layer], List[Layer]]:
    """Layers up to and including the latent layer (the front) and after it (the back)."""
    if latent_layer == "data":
        return [], list(layers)
    if latent_layer == "pool6":
        return list(layers), []
    names = [layer.name for layer in layers]
    if latent_layer not in names or not latent_layer.endswith("/dw"):
        raise ValueError(f"not a latent layer: {latent_layer}")
    k = names.index(latent_layer) + 1
    return layers[:k], layers[k:]
