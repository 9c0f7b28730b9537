"""An independent PyTorch MobileNetV1 (front, back with Batch Renormalization) built from the same
numpy arrays as the ONNX graphs: the reference the ONNX/ORT outputs are compared against.

The network's geometry (layer order, strides, groups, paddings) comes from the hard-coded table of
`mobilenet_spec` (typed from the MobileNetV1 paper), not from the package's layer table, so a wrong
entry there shows as a mismatch instead of being copied into the reference."""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from latent_replay.models.weights import MobileNetWeights
import mobilenet_spec as spec

POOL, HEAD = "pool6", "mid_fc7"


def preprocess(frames: np.ndarray, weights: MobileNetWeights) -> torch.Tensor:
    """uint8 NHWC BGR frames -> float NCHW, written independently of the graph builder."""
    x = torch.from_numpy(frames.astype(np.float32))
    if weights.preprocessing.channel_order == "RGB":
        x = x.flip(-1)
    x = (x - torch.tensor(weights.preprocessing.mean)) / torch.tensor(weights.preprocessing.std)
    return x.permute(0, 3, 1, 2).contiguous()


def conv(layer: spec.Layer, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The layer's convolution with explicit zero padding (TF 'same' pads the odd pixel after)."""
    assert tuple(w.shape) == layer.weight_shape, (layer.name, tuple(w.shape))
    before, after = layer.pads
    return F.conv2d(F.pad(x, (before, after, before, after)), w, stride=layer.stride, groups=layer.group)


def activation(layer: spec.Layer, y: torch.Tensor) -> torch.Tensor:
    return torch.clamp(y, 0.0, 6.0) if layer.relu6 else F.relu(y)


def front(weights: MobileNetWeights, frames: np.ndarray, latent_layer: str,
          geometry: List[spec.Layer] = spec.LAYERS) -> np.ndarray:
    """Reference front: BN in eval mode (running statistics), ReLU (or ReLU6), up to the latent layer."""
    x = preprocess(frames, weights).double()
    layers, _ = spec.split(latent_layer, geometry)
    for layer in layers:
        p = weights.convs[layer.name]
        x = conv(layer, x, torch.from_numpy(p.weight).double())
        x = F.batch_norm(x, torch.from_numpy(p.mean).double(), torch.from_numpy(p.var).double(),
                         torch.from_numpy(p.gamma).double(), torch.from_numpy(p.beta).double(),
                         training=False, eps=p.eps)
        x = activation(layer, x)
    if latent_layer == POOL:
        x = x.mean((2, 3))
    return x.numpy()


class TorchBack(torch.nn.Module):
    """The trainable back: conv -> BRN (train) / running-stat normalization (eval) -> scale/shift -> ReLU,
    global average pool, mid_fc7 without bias. r and d are detached, as Batch Renormalization requires."""

    def __init__(self, arrays: Dict[str, np.ndarray], latent_layer: str,
                 geometry: List[spec.Layer] = spec.LAYERS) -> None:
        super().__init__()
        _, self.layers = spec.split(latent_layer, geometry)
        self.latent_layer = latent_layer
        self.params = torch.nn.ParameterDict()
        self.stats: Dict[str, torch.Tensor] = {}
        for name, arr in arrays.items():
            t = torch.tensor(arr, dtype=torch.float64)
            if name.endswith("running_mean") or name.endswith("running_std"):
                self.stats[name] = t
            else:
                self.params[name.replace("/", "__")] = torch.nn.Parameter(t)
        self.batch_stats: Dict[str, np.ndarray] = {}

    def p(self, name: str) -> torch.Tensor:
        return self.params[name.replace("/", "__")]

    def forward(self, x: torch.Tensor, train: bool, r_max: float = 1.0, d_max: float = 0.0,
                masks: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        """`masks` (layer -> 0/1 tensor, NCHW) replaces each ReLU's own mask: the same units pass as
        in the implementation under test, so that a value within rounding of 0 cannot flip. For ReLU6
        a mask is a pair (passed, clipped at 6): out = y * passed + 6 * clipped."""
        for layer in self.layers:
            n = layer.name
            y = conv(layer, x, self.p(f"{n}/weight"))
            mu = self.stats[f"{n}/running_mean"].view(1, -1, 1, 1)
            sigma = self.stats[f"{n}/running_std"].view(1, -1, 1, 1)
            if train:
                bm = y.mean((0, 2, 3), keepdim=True)
                bv = ((y - bm) ** 2).mean((0, 2, 3), keepdim=True)
                bs = torch.sqrt(bv + 1e-5)
                r = torch.clamp(bs.detach() / sigma, 1.0 / r_max, r_max)
                d = torch.clamp((bm.detach() - mu) / sigma, -d_max, d_max)
                y = (y - bm) / bs * r + d
                self.batch_stats[n] = (bm.detach().flatten().numpy(), bv.detach().flatten().numpy())
            else:
                y = (y - mu) / sigma
            y = y * self.p(f"{n}/gamma").view(1, -1, 1, 1) + self.p(f"{n}/beta").view(1, -1, 1, 1)
            if masks is None:
                x = activation(layer, y)
            elif layer.relu6:
                passed, clipped = masks[n]
                x = y * passed + 6.0 * clipped
            else:
                x = y * masks[n]
        if self.latent_layer != POOL:
            x = x.mean((2, 3))
        return x @ self.p(f"{HEAD}/weight").t()
