"""Eager PyTorch MobileNetV1 pieces for the benchmark's PyTorch side, built from the same numpy arrays
as the exported ONNX graphs: the frozen front and the trainable back, with either the official
port's elementwise Batch Renormalization (`BatchRenorm2D`, as `models/batch_renorm.py` of
github vlomonaco/ar1-pytorch) or the `nn.BatchNorm2d` a user would write (one fused kernel).

This module imports torch at import time: import it only where torch is known to be installed
(`torch_baseline.available()`).
"""
from __future__ import annotations

from typing import List

import numpy as np
import torch
from torch import nn

from ...models import mobilenet_v1 as net
from ...models.weights import MobileNetWeights

NORMS = ("brn", "bn")  # the back's normalization: elementwise BRN (port) or nn.BatchNorm2d (fused)


class BatchRenorm2D(nn.Module):
    """Batch Renormalization as the port's models/batch_renorm.py (running std, not var)."""

    def __init__(self, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, std: np.ndarray,
                 momentum: float, r_max: float, d_max: float, eps: float = 1e-5,
                 inc_step: float = 0.0, max_r_max: float = 1.25, max_d_max: float = 0.5) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.gamma = nn.Parameter(torch.tensor(gamma).view(1, -1, 1, 1))
        self.beta = nn.Parameter(torch.tensor(beta).view(1, -1, 1, 1))
        self.running_avg_mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.running_avg_std = torch.tensor(std).view(1, -1, 1, 1)
        self.r_max, self.d_max = r_max, d_max
        self.inc_step, self.max_r_max, self.max_d_max = inc_step, max_r_max, max_d_max

    def forward(self, x):
        mean = torch.mean(x, dim=(0, 2, 3), keepdim=True)
        std = torch.sqrt(torch.var(x, dim=(0, 2, 3), keepdim=True, unbiased=False) + self.eps)
        if not self.training:
            x = (x - self.running_avg_mean) / self.running_avg_std
            return self.gamma * x + self.beta
        r = torch.clamp(std / self.running_avg_std, 1.0 / self.r_max, self.r_max).detach()
        d = torch.clamp((mean - self.running_avg_mean) / self.running_avg_std, -self.d_max, self.d_max).detach()
        x = ((x - mean) * r) / std + d
        x = self.gamma * x + self.beta
        if self.r_max < self.max_r_max:
            self.r_max += self.inc_step * x.shape[0]
        if self.d_max < self.max_d_max:
            self.d_max += self.inc_step * x.shape[0]
        self.running_avg_mean = self.running_avg_mean + self.momentum * (mean.detach() - self.running_avg_mean)
        self.running_avg_std = self.running_avg_std + self.momentum * (std.detach() - self.running_avg_std)
        return x


def conv(layer: net.ConvLayer, weight: np.ndarray) -> nn.Module:
    """The layer's convolution with its padding (asymmetric TF 'same' padding as an explicit ZeroPad2d)."""
    symmetric = layer.pad_begin == layer.pad_end
    c = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel, layer.stride,
                  layer.pad_begin if symmetric else 0, groups=layer.group, bias=False)
    with torch.no_grad():
        c.weight.copy_(torch.from_numpy(weight))
    if symmetric:
        return c
    return nn.Sequential(nn.ZeroPad2d((layer.pad_begin, layer.pad_end) * 2), c)


def activation(layer: net.ConvLayer) -> nn.Module:
    return nn.ReLU6(inplace=True) if layer.activation == "relu6" else nn.ReLU(inplace=True)


def batch_norm(weights: MobileNetWeights, name: str, channels: int, momentum: float = 0.1) -> nn.BatchNorm2d:
    """nn.BatchNorm2d holding the layer's exported scale, shift and running statistics."""
    p = weights.convs[name]
    bn = nn.BatchNorm2d(channels, eps=p.eps, momentum=momentum)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(p.gamma))
        bn.bias.copy_(torch.from_numpy(p.beta))
        bn.running_mean.copy_(torch.from_numpy(p.mean))
        bn.running_var.copy_(torch.from_numpy(p.var))
    return bn


class Front(nn.Module):
    """Frozen front: conv -> BatchNorm2d (eval) -> ReLU up to the latent layer (mean for pool6)."""

    def __init__(self, weights: MobileNetWeights, latent_layer: str) -> None:
        super().__init__()
        layers, _ = net.split_layers(latent_layer, arch=weights.arch)
        mods: List[nn.Module] = []
        for layer in layers:
            mods += [conv(layer, weights.convs[layer.name].weight), batch_norm(weights, layer.name, layer.out_channels),
                     activation(layer)]
        self.features = nn.Sequential(*mods)
        self.pool = latent_layer == net.POOL
        pre = weights.preprocessing
        self.flip = pre.channel_order == "RGB"  # frames arrive BGR (OpenCV order), as for the ONNX front
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1))
        for prm in self.parameters():
            prm.requires_grad_(False)
        self.eval()

    def preprocess(self, frames_uint8_nhwc):
        x = frames_uint8_nhwc.permute(0, 3, 1, 2).float()
        if self.flip:
            x = x.flip(1)
        return (x - self.mean) / self.std

    def forward(self, x):
        x = self.features(x)
        return x.mean((2, 3)) if self.pool else x


class Back(nn.Module):
    """Trainable back: conv -> normalization -> ReLU, global average pool, mid_fc7 without bias.

    `norm` "brn": the port's BatchRenorm2D with `brn` (momentum, r_max, d_max); "bn": nn.BatchNorm2d
    in training mode (batch statistics, running statistics moved at `brn["momentum"]`)."""

    def __init__(self, weights: MobileNetWeights, latent_layer: str, classes: int, brn: dict,
                 norm: str = "brn") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        _, layers = net.split_layers(latent_layer, arch=weights.arch)
        mods: List[nn.Module] = []
        for layer in layers:
            p = weights.convs[layer.name]
            if norm == "brn":
                std = np.sqrt(p.var + p.eps).astype(np.float32)
                norm_layer: nn.Module = BatchRenorm2D(p.gamma, p.beta, p.mean, std, **brn)
            else:
                norm_layer = batch_norm(weights, layer.name, layer.out_channels, brn["momentum"])
            mods += [conv(layer, p.weight), norm_layer, activation(layer)]
        self.features = nn.Sequential(*mods)
        self.pool = latent_layer != net.POOL
        head, _, _ = weights.head_for(classes)
        self.output = nn.Linear(head.shape[1], classes, bias=False)
        with torch.no_grad():
            self.output.weight.copy_(torch.from_numpy(head))

    def forward(self, x):
        x = self.features(x)
        if self.pool:
            x = x.mean((2, 3))
        return self.output(x)


def set_threads(threads: int) -> None:
    """Same thread count as ONNX Runtime; denormals flushed to zero (random weights produce some,
    which slow x86 float math several-fold; pretrained weights rarely do)."""
    torch.set_num_threads(int(threads))
    torch.set_flush_denormal(True)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
