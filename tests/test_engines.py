"""The two engines learn alike: whole incremental batches of AR1*-free, CWR* and AR1* (both SI modes)
through the step graph (the default engine) and through ONNX Runtime's training artifacts with the
numpy update (the optional engine) end with the same parameters, statistics and predictions.

The optional engine needs onnxruntime-training instead of onnxruntime: these tests run in CI's
second virtual environment (`.ci/run`) and are skipped, with the reason, elsewhere.
"""
from __future__ import annotations

import numpy as np
import pytest

from latent_replay.export.exporter import export
from latent_replay.models import mobilenet_v1 as net
from latent_replay.runtime.engine import Back
from latent_replay.runtime.learn import Learner, LearnerConfig
from helpers import make_weights

try:
    from latent_replay.runtime.engine.ort_training import training_bindings

    training_bindings()
    HAS_TRAINING = True
except RuntimeError:
    HAS_TRAINING = False

pytestmark = pytest.mark.skipif(not HAS_TRAINING, reason="onnxruntime-training is not installed (the optional "
                                                          "engine is tested in CI's second environment)")
CLASSES = 5
# Float32 rounding of two implementations: relative to each tensor's change over the batches, plus
# a few units in the last place of its values (a weight that barely moves still rounds differently).
TOL, ULPS = 1e-2, 1e-5  # a wrong term (decay, momentum, SI) moves a tensor by O(1) x its change


def stream(shape, batches=3, n=24, seed=0):
    rng = np.random.default_rng(seed)
    means = np.abs(rng.standard_normal((CLASSES,) + shape))
    out = []
    for b in range(batches):
        y = rng.integers(0, CLASSES, n)
        x = np.maximum(means[y] + 0.8 * rng.standard_normal((n,) + shape), 0).astype(np.float32)
        out.append((x, y))
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Artifacts for both engines, one export per latent layer."""
    cache = {}

    def get(layer, arch=net.DEFAULT_ARCH):
        if (layer, arch) not in cache:
            cache[layer, arch] = tmp_path_factory.mktemp("engines") / "art"
            export(make_weights(2, arch=arch), layer, CLASSES, cache[layer, arch], engines=("step", "ort-training"))
        return cache[layer, arch]
    return get


KERAS = net.keras_architecture(0.5)  # TF 'same' padding (conv5_6/dw: 0 before, 1 after) and ReLU6


@pytest.mark.parametrize("layer,method,overrides,arch", [
    ("conv5_6/dw", "ar1free", {}, net.DEFAULT_ARCH), ("pool6", "cwr", {}, net.DEFAULT_ARCH),
    ("conv5_6/dw", "ar1", {"si_mode": "penalty"}, net.DEFAULT_ARCH),
    ("conv5_6/dw", "ar1", {"si_mode": "scale"}, net.DEFAULT_ARCH), ("conv5_4/dw", "ar1free", {}, KERAS)],
    ids=["ar1free", "cwr", "ar1-penalty", "ar1-scale", "keras0.5-ar1free"])
def test_whole_batches_agree(exported, layer, method, overrides, arch):
    artifacts = exported(layer, arch)
    cfg = LearnerConfig.preset("pytorch", method=method, replay_memory=30, minibatch=16, epochs=2, epochs_first=2,
                               lr_first=0.02, lr_later=0.01, brn_momentum_later=0.05, weight_decay=0.02, si_lambda=20.0, si_clip=0.5,
                               **overrides)
    learners = [Learner(Back(artifacts, device="cpu", threads=1, engine=e), cfg) for e in ("step", "ort-training")]
    initial = learners[0].params
    data = stream(tuple(learners[0].latent_shape))
    for i, (x, y) in enumerate(data):
        losses = [lrn.train_batch(x, y, i)["loss"] for lrn in learners]
        assert abs(losses[0] - losses[1]) < 1e-3 * max(1.0, abs(losses[1]))
    step, ort_training = (lrn.params for lrn in learners)
    moved = 0.0
    for name, expected in ort_training.items():
        change = np.abs(expected - initial[name]).max()
        moved = max(moved, change)
        assert np.abs(step[name] - expected).max() <= TOL * change + ULPS * np.abs(expected).max(), name
    assert moved > 1e-2  # the batches changed the parameters by far more than the tolerance
    np.testing.assert_allclose(learners[0].cwr.cw, learners[1].cwr.cw, atol=1e-4)
    if learners[0].si is not None:
        for name in learners[0].si.names:
            f0, f1 = learners[0].si.F[name], learners[1].si.F[name]
            # omega divides by the squared change of each weight: single weights that barely moved
            # amplify rounding, so the importance is compared on average and bounded per weight
            assert f1.max() > 0 and np.abs(f0 - f1).mean() <= 1e-3 * f1.max(), name
            assert np.abs(f0 - f1).max() <= 0.05 * f1.max(), name
    x = data[0][0]
    np.testing.assert_allclose(learners[0].logits(x), learners[1].logits(x), rtol=0, atol=1e-3)


def test_ort_training_artifacts_next_to_the_step(exported):
    """`--engine ort-training` adds ORT's artifacts in back/ort_training/ (IR 8 / opset 17 as built
    here; ORT's own generator stamps IR 10 on the optimizer model) and keeps the step files."""
    import onnx

    from latent_replay.export.manifest import Manifest

    art = exported("conv5_6/dw")
    manifest = Manifest.load(art, verify=True)
    assert manifest.engines == ["step", "ort-training"]
    expected_ir = {"training_model": 8, "eval_model": 8, "optimizer_model": 10}
    for role, ir in expected_ir.items():
        path = manifest.path(art, role)
        assert path.parent.name == "ort_training" and onnx.load(str(path)).ir_version == ir, role
    for role in ("step", "step_si", "eval", "initial_state"):
        assert manifest.path(art, role).is_file()
