"""The weight container every importer produces and the graph builder consumes.

Weights are plain numpy arrays keyed by the Caffe layer names of `mobilenet_v1`, with inference
normalization statistics (mean, var, eps) and the per-channel scale/shift kept apart so that the
exporter can fold them for the frozen front and keep them as Batch Renormalization state in the back.
Preprocessing and the architecture (width, padding rule, activation) travel with the weights because
they depend on where the weights came from.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import mobilenet_v1 as net


class WeightsError(ValueError):
    """Weights cannot be found, read or used; the message names the file and the fix."""


@dataclass(frozen=True)
class Preprocessing:
    """How a uint8 pixel becomes a network input: pick channel order, subtract mean, divide by std.

    `mean` and `std` are in 0..255 pixel units and in the network's channel order.
    """

    channel_order: str  # channel order the network expects: "BGR" (Caffe) or "RGB" (PyTorch, TF)
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    name: str

    def to_dict(self) -> dict:
        return {"name": self.name, "channel_order": self.channel_order,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(d["channel_order"], tuple(d["mean"]), tuple(d["std"]), d["name"])

    def apply(self, frames_bgr: np.ndarray) -> np.ndarray:
        """Reference (numpy) preprocessing of NHWC uint8 BGR frames to NCHW float32; used by tests."""
        x = frames_bgr.astype(np.float32)
        if self.channel_order == "RGB":
            x = x[..., ::-1]
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


CAFFE_PREPROCESSING = Preprocessing("BGR", (104.0, 117.0, 123.0), (1.0, 1.0, 1.0), "caffe")
TORCH_PREPROCESSING = Preprocessing(
    "RGB", (0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255), "imagenet"
)
TF_PREPROCESSING = Preprocessing("RGB", (127.5, 127.5, 127.5), (127.5, 127.5, 127.5), "tf")  # x / 127.5 - 1


@dataclass
class ConvParams:
    """A conv block's arrays: OIHW weight, normalization statistics and the scale/shift after it."""

    weight: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    eps: float = 1e-5

    def folded(self) -> Tuple[np.ndarray, np.ndarray]:
        """Weight and bias with inference normalization folded in (for the frozen front)."""
        scale = self.gamma / np.sqrt(self.var + self.eps)
        w = self.weight * scale.reshape(-1, 1, 1, 1)
        b = self.beta - self.mean * scale
        return w.astype(np.float32), b.astype(np.float32)


@dataclass
class MobileNetWeights:
    """All arrays of one MobileNetV1, the preprocessing they expect and where they came from."""

    convs: Dict[str, ConvParams]
    preprocessing: Preprocessing
    source: str
    head_weight: Optional[np.ndarray] = None  # (classes, features); None: a new head is initialised
    head_bias: Optional[np.ndarray] = None
    notes: Dict[str, str] = field(default_factory=dict)
    arch: net.Architecture = net.DEFAULT_ARCH
    class_names: Optional[List[str]] = None  # names of the imported head's outputs, when the file has them

    def validate(self, input_size: int = net.DEFAULT_INPUT_SIZE) -> None:
        """Raise ValueError naming the first missing layer or wrong shape, or an input size these
        weights cannot be run at exactly."""
        layers = net.conv_layers(input_size, self.arch)
        odd = next((l for l in layers if self.arch.padding == "same" and l.stride == 2 and l.in_hw % 2), None)
        if odd is not None:
            # TF 'same' (Keras 2.1, TF.js) and Keras >= 2.2's ZeroPadding2D((0, 1), (0, 1)) + 'valid' agree on
            # even maps only, and a weights file does not always say which one it was trained with
            raise ValueError(f"weights from {self.source} are a TF/Keras MobileNet, whose Keras versions pad the "
                             f"stride-2 layer {odd.name} differently on its odd {odd.in_hw}x{odd.in_hw} map at input "
                             f"size {input_size}; use an input size that is a multiple of 32 (128, 160, 192, 224)")
        for layer in layers:
            if layer.name not in self.convs:
                raise ValueError(f"weights from {self.source} lack layer {layer.name!r}")
            p = self.convs[layer.name]
            if tuple(p.weight.shape) != layer.weight_shape:
                raise ValueError(
                    f"weights from {self.source}: layer {layer.name!r} has shape {tuple(p.weight.shape)}, "
                    f"expected {layer.weight_shape}"
                )
            for key in ("mean", "var", "gamma", "beta"):
                arr = getattr(p, key)
                if tuple(arr.shape) != (layer.out_channels,):
                    raise ValueError(
                        f"weights from {self.source}: {layer.name!r} {key} has shape {tuple(arr.shape)}, "
                        f"expected ({layer.out_channels},)"
                    )
            if np.any(p.var < 0) or not all(np.all(np.isfinite(getattr(p, k))) for k in ("weight", "mean", "var", "gamma", "beta")):
                raise ValueError(f"weights from {self.source}: layer {layer.name!r} holds invalid values")

    def checked(self, hint: str) -> "MobileNetWeights":
        """These weights, validated by an importer: WeightsError with `hint` (what the file should be)."""
        try:
            self.validate()
        except ValueError as e:
            raise WeightsError(f"{e}; {hint}") from None
        return self

    def head_for(self, classes: int, rng: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, np.ndarray, bool]:
        """mid_fc7 weight and bias for `classes` outputs; reuse the imported head only if it matches.

        Returns (weight, bias, reused). A new head starts at zero: CWR* consolidates from zero weights.
        """
        final = net.features(self.arch)
        if self.head_weight is not None and self.head_weight.shape == (classes, final):
            bias = self.head_bias if self.head_bias is not None else np.zeros(classes, np.float32)
            return self.head_weight.astype(np.float32), bias.astype(np.float32), True
        return np.zeros((classes, final), np.float32), np.zeros(classes, np.float32), False
