"""Miniature continual-learning check on a tiny class-incremental problem: naive fine-tuning forgets
the old classes, CWR* and AR1*-free (with latent replay) keep much more. Also predict/evaluate."""
from __future__ import annotations

import numpy as np
import pytest

from latent_replay.export.exporter import export
from latent_replay.runtime.learn import LearnerConfig
from latent_replay.runtime.engine import Back
from latent_replay.runtime.learn import Learner
from helpers import make_weights

CLASSES = 5
STREAM = [[0, 1], [2], [3], [4]]  # batch 0 holds two classes, then one new class per batch


def gaussian_task(shape, seed=0, per_class=24):
    """Post-ReLU-like latents around one random pattern per class; train stream and test set."""
    rng = np.random.default_rng(seed)
    means = np.abs(rng.standard_normal((CLASSES,) + shape)) * 1.5

    def draw(classes, n):
        y = np.repeat(np.array(classes), n)
        x = np.maximum(means[y] + 0.7 * rng.standard_normal((len(y),) + shape), 0)
        return x.astype(np.float32), y.astype(np.int64)
    return [draw(c, per_class) for c in STREAM], draw(list(range(CLASSES)), 10)


def run(artifacts, method, replay, **overrides):
    cfg = LearnerConfig.preset("pytorch", method=method, replay=replay, replay_memory=40, minibatch=16,
                               epochs=2, epochs_first=2, lr_first=0.01, lr_later=0.01, **overrides)
    learner = Learner(Back(artifacts, device="cpu", threads=1), cfg)
    stream, (tx, ty) = gaussian_task(tuple(learner.latent_shape))
    for i, (x, y) in enumerate(stream):
        learner.train_batch(x, y, i)
    return learner, learner.evaluate(tx, ty), (tx, ty)


@pytest.fixture(scope="module")
def pool6(tmp_path_factory):
    path = tmp_path_factory.mktemp("pool6") / "art"
    export(make_weights(5), "pool6", CLASSES, path)
    return path


@pytest.fixture(scope="module")
def conv6(tmp_path_factory):
    path = tmp_path_factory.mktemp("conv6") / "art"
    export(make_weights(5), "conv6/dw", CLASSES, path)
    return path


def test_naive_forgets_cwr_and_ar1free_remember(pool6, conv6):
    _, naive, _ = run(pool6, "naive", "no")
    _, cwr, _ = run(pool6, "cwr", "no")
    _, ar1free, _ = run(conv6, "ar1free", "latent")
    # SI's lambda is scaled down with the 200x larger learning rate of this miniature (lr * lambda * F
    # must stay well below 2 for the penalty term to be stable).
    _, ar1, _ = run(conv6, "ar1", "latent", si_lambda=1e4)
    assert naive <= 0.5  # mostly the last class
    assert min(cwr, ar1free, ar1) >= naive + 0.3


def test_predict_and_evaluate_forms(pool6):
    learner, acc, (tx, ty) = run(pool6, "cwr", "no")
    pred, probs = learner.predict(tx)
    assert pred.shape == ty.shape and probs.shape == (len(ty), CLASSES)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    assert acc == pytest.approx(np.mean(pred == ty))
    assert learner.evaluate([tx[:20], tx[20:]], ty) == acc
    assert learner.evaluate(iter([(tx[:20], ty[:20]), (tx[20:], ty[20:])])) == acc


def test_cumulative_keeps_everything(pool6):
    learner, acc, _ = run(pool6, "cumulative", "no")
    assert learner.pool is None and sum(len(x) for x in learner._seen[0]) == 24 * 5
    assert acc >= 0.8


def test_bad_inputs(pool6):
    learner = Learner(Back(pool6, device="cpu", threads=1), LearnerConfig.preset("pytorch", method="cwr"))
    x = np.ones((4, 1024), np.float32)
    with pytest.raises(ValueError, match="labels"):
        learner.train_batch(x, np.array([0, 1, 2, 9]), 0)
    with pytest.raises(ValueError, match="shape"):
        learner.train_batch(np.ones((4, 512), np.float32), np.zeros(4, np.int64), 0)


def test_config_presets_and_validation():
    torch_preset = LearnerConfig.preset()
    assert (torch_preset.method, torch_preset.replay, torch_preset.replay_memory) == ("ar1free", "latent", 1500)
    assert (torch_preset.lr_first, torch_preset.lr_later, torch_preset.momentum) == (1e-3, 5e-5, 0.9)
    caffe = LearnerConfig.preset("caffe", method="ar1")
    assert (caffe.lr_later, caffe.head_lr_mult, caffe.si_mode, caffe.brn_momentum_later) == (3e-4, 10.0, "scale", 5e-5)
    no_replay = LearnerConfig.preset("caffe", replay="no", method="cwr")
    assert (no_replay.lr_later, no_replay.head_lr_mult, no_replay.brn_momentum_later) == (1e-3, 1.0, 1e-4)
    assert LearnerConfig.preset("caffe", lr_later=0.1).lr_later == 0.1  # explicit values win
    assert LearnerConfig.preset("pytorch", method="cumulative").replay == "no"
    assert LearnerConfig.from_dict(caffe.to_dict()) == caffe
    for bad, message in [(dict(replay_memory=0), "> 0"), (dict(method="ewc"), "method"),
                         (dict(bogus=1), "bogus"), (dict(momentum=1.0), "momentum")]:
        with pytest.raises(ValueError, match=message):
            LearnerConfig.preset("pytorch", **bad)
    with pytest.raises(ValueError, match="pool6"):
        LearnerConfig.preset("pytorch", method="cwr").check_compatible("conv5_4/dw")
    with pytest.raises(ValueError, match="data"):
        LearnerConfig.preset("pytorch", replay="pure").check_compatible("conv5_4/dw")


def test_pure_replay_of_raw_frames(tmp_path):
    """Latent layer `data`: the memory holds uint8 frames, replayed through the whole network."""
    from helpers import make_frames

    export(make_weights(0), "data", 3, tmp_path / "art")
    cfg = LearnerConfig.preset("pytorch", replay="pure", replay_memory=4, minibatch=4, epochs=1, epochs_first=1)
    learner = Learner(Back(tmp_path / "art", device="cpu", threads=1), cfg)
    for b in range(2):
        stats = learner.train_batch(make_frames(6, seed=b), np.arange(6) % 3, b)
    assert learner.pool.input_dtype == np.uint8 and stats["replay_per_mb"] == 1
    with pytest.raises(ValueError, match="uint8"):
        learner.train_batch(make_frames(6).astype(np.float32), np.arange(6) % 3, 2)
    assert learner.predict(make_frames(2))[1].shape == (2, 3)
