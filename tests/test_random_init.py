"""Seeded random weights: deterministic, valid, and with calibrated (O(1)) activations."""
from __future__ import annotations

import numpy as np
import pytest

from latent_replay.models import mobilenet_v1 as net
from latent_replay.models import random_init
from latent_replay.models.load import load_weights
from latent_replay.models.random_init import BETA_MEAN, calibration_frames, conv2d, random_weights
from latent_replay.models.weights import CAFFE_PREPROCESSING


def _activation_stds(weights, frames_bgr, input_size=net.DEFAULT_INPUT_SIZE):
    """Per-layer std of the post-ReLU activations for some frames."""
    x = weights.preprocessing.apply(frames_bgr)
    stds = {}
    for layer in net.conv_layers(input_size):
        w, b = weights.convs[layer.name].folded()
        x = np.maximum(conv2d(x, w, layer.stride, layer.group) + b.reshape(1, -1, 1, 1), 0)
        assert np.all(np.isfinite(x)), layer.name
        stds[layer.name] = float(x.std())
    return stds


def test_deterministic_per_seed():
    a, b, c = random_weights(seed=7), random_weights(seed=7), random_weights(seed=8)
    for name in net.conv_names():
        for key in ("weight", "mean", "var", "gamma", "beta"):
            np.testing.assert_array_equal(getattr(a.convs[name], key), getattr(b.convs[name], key))
    assert not np.array_equal(a.convs["conv1"].weight, c.convs["conv1"].weight)
    assert a.source == "random(seed=7)"
    a.validate()


def test_calibrated_activations_are_order_one():
    weights = random_weights(seed=0)
    # fresh frames the statistics were not measured on
    frames = calibration_frames(np.random.default_rng(123), 2, net.DEFAULT_INPUT_SIZE)
    stds = _activation_stds(weights, frames)
    # ReLU of ~N(0,1) has std ~0.58; without calibration the 27 layers drift by orders of magnitude
    for name, std in stds.items():
        assert 0.2 < std < 3.0, (name, std)


def test_scale_shift_and_statistics():
    weights = random_weights(seed=1)
    frames = calibration_frames(np.random.default_rng(1), 1, 8)
    assert frames.shape == (1, 8, 8, 3) and frames.dtype == np.uint8
    for name in ("conv1", "conv5_4/dw", "conv6/sep"):
        p = weights.convs[name]
        assert np.all(p.var > 0) and np.all(np.isfinite(p.mean))
        assert p.gamma.tolist() == [1.0] * len(p.gamma)
        assert np.abs(p.beta - BETA_MEAN).max() < 0.1


def test_options_input_size_classes_preprocessing():
    weights = random_weights(seed=2, preprocessing=CAFFE_PREPROCESSING, input_size=64, classes=10)
    assert weights.preprocessing == CAFFE_PREPROCESSING
    assert weights.head_weight.shape == (10, 1024) and weights.head_bias.shape == (10,)
    weights.validate()
    stds = _activation_stds(weights, calibration_frames(np.random.default_rng(5), 2, 64), input_size=64)
    assert all(0.2 < s < 3.0 for s in stds.values()), stds
    assert random_weights(seed=2).head_weight is None


def test_calibration_is_one_pass_over_a_few_frames(monkeypatch):
    """What keeps `random_weights` fast (it runs on every `--weights random` command): exactly one
    numpy convolution per layer, in order, over CALIBRATION_FRAMES (4) frames. Counted, not timed;
    `python benchmarks/random_weights_time.py` prints the time."""
    calls = []

    def counting(x, w, stride, group, pads=None):
        calls.append((x.shape[0], w.shape, stride, group))
        return conv2d(x, w, stride, group, pads)

    monkeypatch.setattr(random_init, "conv2d", counting)
    random_weights(seed=3)
    assert [c[1:] for c in calls] == [(l.weight_shape, l.stride, l.group) for l in net.conv_layers()]
    assert {c[0] for c in calls} == {random_init.CALIBRATION_FRAMES} and random_init.CALIBRATION_FRAMES == 4


def test_load_weights_random_spec():
    assert load_weights("random", seed=4).source == "random(seed=4)"
    assert load_weights("random:5").source == "random(seed=5)"
    assert load_weights("random", preprocessing="caffe").preprocessing.name == "caffe"


@pytest.mark.parametrize("shape,stride,group", [((16, 8, 3, 3), 2, 1), ((8, 1, 3, 3), 2, 8), ((16, 8, 1, 1), 1, 1)])
def test_numpy_conv_matches_torch(shape, stride, group):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)
    w = rng.standard_normal(shape).astype(np.float32)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=stride,
                                     padding=shape[-1] // 2, groups=group).numpy()
    np.testing.assert_allclose(conv2d(x, w, stride, group), ref, rtol=1e-4, atol=1e-4)


def test_random_pool6_features_separate_simple_objects(tmp_path):
    """Smoke runs need features that carry the object: a ridge probe on pool6 of the mild synthetic
    stream must generalise to its held-out session (a zero ReLU shift would leave ~30% here)."""
    from latent_replay.export.exporter import export
    from latent_replay.runtime.engine import Front
    from latent_replay.runtime.sources import SyntheticScenario

    stream = SyntheticScenario(seed=0, input_size=64, difficulty=0.1, frames_per_batch=20)
    export(random_weights(0, input_size=64), "pool6", 10, tmp_path / "art", input_size=64)
    front = Front(tmp_path / "art")
    batches = list(stream.iter_train())
    x = np.concatenate([front(b.frames) for b in batches])
    y = np.concatenate([b.labels for b in batches])
    test = stream.test_set()
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z, zt = (x - mu) / sd, (front(test.frames) - mu) / sd
    w = np.linalg.solve(z.T @ z + 10 * np.eye(z.shape[1]), z.T @ np.eye(10)[y])
    accuracy = float(np.mean((zt @ w).argmax(1) == test.labels))
    assert accuracy > 0.8, accuracy
