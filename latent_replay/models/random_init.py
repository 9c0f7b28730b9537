"""Seeded random MobileNetV1 weights with calibrated normalization statistics.

Why calibrate: with made-up running statistics (mean 0, var 1) the activations of an untrained
27-layer network drift by orders of magnitude, so latent patterns, replay quantization and the BRN
back would all work on garbage scales. Instead each layer's mean/var is measured on a few generated
frames with a small numpy forward pass, exactly what BatchNorm would have learned on that data, so every
normalized pre-activation is ~N(0, 1) (then scale 1, shift BETA_MEAN, ReLU).

Why shift by +1: with a zero shift half of every layer's ReLUs are off, and a deep random ReLU network
with centred normalization is chaotic -- nearby images end up with unrelated pool6 features (a linear
probe on the synthetic stream falls from ~100% at conv3 to ~30% at pool6). A shift of +1 keeps ~84% of
the units on, the network stays in the ordered regime, and pool6 separates simple objects (~100%).

Initialization: He/Kaiming normal with mode "fan_out" as torchvision's MobileNets and PyTorch compute it
(std = sqrt(2 / fan_out), fan_out = out_channels * k * k for the OIHW weight, depthwise included).
"""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import numpy as np

from . import mobilenet_v1 as net
from .weights import TORCH_PREPROCESSING, ConvParams, MobileNetWeights, Preprocessing

CALIBRATION_FRAMES = 4
BETA_MEAN = 1.0
BETA_STD = 0.01
HEAD_STD = 0.01
EPS = 1e-5


def _kaiming_fan_out(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    out_channels, _, kh, kw = shape
    std = np.sqrt(2.0 / (out_channels * kh * kw))
    return (rng.standard_normal(shape) * std).astype(np.float32)


def calibration_frames(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """Smooth, image-like NHWC uint8 BGR frames: blocky low-frequency noise plus fine noise."""
    coarse = rng.uniform(0, 255, size=(count, 8, 8, 3))
    reps = -(-size // 8)
    smooth = np.repeat(np.repeat(coarse, reps, axis=1), reps, axis=2)[:, :size, :size]
    frames = smooth + rng.normal(0, 20, size=smooth.shape)
    return np.clip(frames, 0, 255).astype(np.uint8)


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, group: int, pads: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """NCHW convolution, zero padding `pads` = (before, after) on H and W (default k//2 on both sides,
    as Caffe's MobileNetV1): full/1x1 via matmul, depthwise via shifts."""
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    if k == 1:
        y = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x[:, :, ::stride, ::stride], optimize=True)
        return np.ascontiguousarray(y, dtype=np.float32)
    before, after = pads if pads is not None else (k // 2, k // 2)
    xp = np.pad(x, ((0, 0), (0, 0), (before, after), (before, after)))
    ho, wo = (h + before + after - k) // stride + 1, (wd + before + after - k) // stride + 1
    taps = [xp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride] for i in range(k) for j in range(k)]
    if group == c and o == c:  # depthwise
        y = np.zeros((n, c, ho, wo), np.float32)
        for t, tap in enumerate(taps):
            y += tap * w[:, 0, t // k, t % k].reshape(1, c, 1, 1)
        return y
    cols = np.stack(taps, axis=2)  # n, c, k*k, ho, wo  (im2col)
    y = np.einsum("ock,nckhw->nohw", w.reshape(o, c, k * k), cols, optimize=True)
    return np.ascontiguousarray(y, dtype=np.float32)


def _calibrate(layers: Iterable[net.ConvLayer], convs: dict, x: np.ndarray) -> None:
    """Forward `x` through the convs, setting each layer's mean/var to its measured statistics."""
    for layer in layers:
        p = convs[layer.name]
        y = conv2d(x, p.weight, layer.stride, layer.group, (layer.pad_begin, layer.pad_end)).astype(np.float64)
        p.mean = y.mean(axis=(0, 2, 3)).astype(np.float32)
        p.var = y.var(axis=(0, 2, 3)).astype(np.float32)
        scale = (p.gamma / np.sqrt(p.var + p.eps)).reshape(1, -1, 1, 1)
        shift = (p.beta - p.mean * p.gamma / np.sqrt(p.var + p.eps)).reshape(1, -1, 1, 1)
        x = np.maximum(y * scale + shift, 0)
        if layer.activation == "relu6":
            x = np.minimum(x, net.RELU6_MAX)
        x = x.astype(np.float32)


def random_weights(seed: int = 0, preprocessing: Preprocessing = TORCH_PREPROCESSING,
                   input_size: int = net.DEFAULT_INPUT_SIZE, classes: Optional[int] = None,
                   arch: net.Architecture = net.DEFAULT_ARCH) -> MobileNetWeights:
    """Deterministic random MobileNetV1 of `arch` (width, padding, activation) for `seed`,
    normalization calibrated at `input_size`.

    With `classes` a small random mid_fc7 head (std 0.01, zero bias) is included; otherwise none.
    """
    rng = np.random.default_rng(seed)
    layers = net.conv_layers(input_size, arch)
    convs = {}
    for layer in layers:
        c = layer.out_channels
        convs[layer.name] = ConvParams(
            weight=_kaiming_fan_out(rng, layer.weight_shape),
            mean=np.zeros(c, np.float32), var=np.ones(c, np.float32),
            gamma=np.ones(c, np.float32), beta=(BETA_MEAN + rng.standard_normal(c) * BETA_STD).astype(np.float32), eps=EPS,
        )
    frames = calibration_frames(rng, CALIBRATION_FRAMES, input_size)
    _calibrate(layers, convs, preprocessing.apply(frames))
    head_weight = head_bias = None
    if classes is not None:
        head_weight = (rng.standard_normal((classes, layers[-1].out_channels)) * HEAD_STD).astype(np.float32)
        head_bias = np.zeros(classes, np.float32)
    width = "" if arch.width == 1.0 else f", width={arch.width:g}"
    return MobileNetWeights(
        convs=convs, preprocessing=preprocessing, source=f"random(seed={seed}{width})",
        head_weight=head_weight, head_bias=head_bias,
        notes={"init": "kaiming_normal fan_out", "calibration": f"{CALIBRATION_FRAMES} frames at {input_size}px"},
        arch=arch,
    )
