"""Shared test helpers: random weights built independently of the importers, and a PyTorch
MobileNetV1 oracle built from the same arrays."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from latent_replay.models import mobilenet_v1 as net
from latent_replay.models.weights import ConvParams, MobileNetWeights, Preprocessing, TORCH_PREPROCESSING


def make_weights(seed: int = 0, preprocessing: Preprocessing = TORCH_PREPROCESSING, classes: Optional[int] = None,
                 input_size: int = net.DEFAULT_INPUT_SIZE, arch: net.Architecture = net.DEFAULT_ARCH) -> MobileNetWeights:
    """Random arrays with statistics that keep activations O(1) for O(1) inputs."""
    rng = np.random.default_rng(seed)
    convs: Dict[str, ConvParams] = {}
    scale_in = 1.0 / float(np.mean(preprocessing.std))
    for layer in net.conv_layers(input_size, arch):
        o, i, kh, kw = layer.weight_shape
        w = rng.standard_normal(layer.weight_shape).astype(np.float32) * np.sqrt(2.0 / (i * kh * kw))
        if layer.name == "conv1":
            w *= scale_in
        c = layer.out_channels
        convs[layer.name] = ConvParams(
            weight=w,
            mean=(rng.standard_normal(c) * 0.1).astype(np.float32),
            var=(rng.uniform(0.5, 1.5, c)).astype(np.float32),
            gamma=rng.uniform(0.5, 1.5, c).astype(np.float32),
            beta=(rng.standard_normal(c) * 0.1).astype(np.float32),
        )
    head = None
    if classes:
        head = (rng.standard_normal((classes, net.features(arch))) * 0.05).astype(np.float32)
    return MobileNetWeights(convs=convs, preprocessing=preprocessing, source=f"test-random({seed})",
                            head_weight=head, arch=arch)


def make_frames(n: int, seed: int = 0, size: int = net.DEFAULT_INPUT_SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def exported(tmp_path_factory, layer: str, classes: int, seed: int = 0):
    """Artifacts of random weights (`make_weights(seed)`) split at `layer`, in a new temporary folder."""
    from latent_replay.export.exporter import export

    path = tmp_path_factory.mktemp("artifacts") / "art"
    export(make_weights(seed), layer, classes, path)
    return path
