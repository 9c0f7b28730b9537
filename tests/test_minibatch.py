"""Minibatch composition (docs/algorithms.md): 21 new + 107 replayed for NICv2-391 batches,
iterations per epoch, which patterns each minibatch holds. A stub back records every step."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from latent_replay.runtime.learn import LearnerConfig
from latent_replay.runtime.learn import Learner
from latent_replay.runtime.learn.replay import MinibatchPlan, plan_minibatches
from latent_replay.runtime.replay.pool import ReplayPool

HEAD = "mid_fc7/weight"
CLASSES = 10
SHAPE = (4,)


class RecordingBack:
    """The engine interface over a tiny head that does not train; remembers the (latents, labels)
    of every step."""

    device = "cpu"

    def __init__(self) -> None:
        self.manifest = SimpleNamespace(latent_layer="pool6", classes=CLASSES, latent_shape=SHAPE,
                                        latent_dtype="float32", head=HEAD, brn_layers=[], si_params=[])
        self.trainable, self.carried, self.si_params = [HEAD], [], []
        self.arrays = {HEAD: np.zeros((CLASSES, SHAPE[0]), np.float32)}
        self.steps = []

    def shape(self, name):
        return self.arrays[name].shape

    def get(self, name):
        return self.arrays[name].copy()

    def set(self, name, value):
        self.arrays[name] = np.array(value, np.float32)

    def parameters(self, names=None):
        return {n: self.get(n) for n in (names or self.trainable)}

    def configure(self, *args, **kwargs):
        pass

    def zero_momentum(self):
        pass

    def step(self, latent, labels, r_max=1.0, d_max=0.0):
        self.steps.append((latent.copy(), labels.copy()))
        return 0.0

    def logits(self, latent):
        return latent @ self.arrays[HEAD].T


def ids(n, offset=0.0):
    """Patterns whose value is their identity."""
    return np.repeat(np.arange(n, dtype=np.float32)[:, None] + offset, SHAPE[0], axis=1)


def test_plan_nicv2_391():
    assert plan_minibatches(300, 1500, 128) == MinibatchPlan(21, 107, 14, 0)
    assert plan_minibatches(3000, 0, 128) == MinibatchPlan(128, 0, 24, 72)  # batch 0: padded to 24 x 128
    assert plan_minibatches(3000, 0, 128, pad=False) == MinibatchPlan(128, 0, 23, 0)
    assert plan_minibatches(10, 20, 128) == MinibatchPlan(10, 20, 1, 0)  # all fits in one minibatch
    assert plan_minibatches(20, 1500, 128) == MinibatchPlan(1, 127, 20, 0)  # memory walked modulo its size
    with pytest.raises(ValueError):
        plan_minibatches(0, 10, 128)


def make_learner(memory=1500, **overrides):
    cfg = LearnerConfig.preset("pytorch", method="ar1free", replay_memory=memory, **overrides)
    back = RecordingBack()
    pool = ReplayPool(memory, SHAPE, seed=1)
    return Learner(back, cfg, pool=pool), back, pool


def test_first_batch_plain_minibatches():
    learner, back, _ = make_learner()
    rng = np.random.default_rng(0)
    stats = learner.train_batch(ids(3000), rng.integers(0, CLASSES, 3000), 0)
    assert stats["iterations"] == 24 * 4 and len(back.steps) == 96
    for epoch in range(4):
        seen = np.concatenate([x[:, 0] for x, _ in back.steps[epoch * 24:(epoch + 1) * 24]])
        assert len(seen) == 3072 and set(seen.astype(int)) == set(range(3000))  # every pattern, 72 twice
    assert all(len(y) == 128 for _, y in back.steps)


@pytest.mark.parametrize("shuffle", ["none", "epoch"])
def test_nicv2_391_batch_21_new_107_replayed(shuffle):
    learner, back, pool = make_learner(replay_shuffle=shuffle)
    rng = np.random.default_rng(0)
    pool.insert_batch(ids(1500, 10000.0), rng.integers(0, CLASSES, 1500), 0)
    mem_x, mem_y = pool.gather(np.arange(1500))  # slot order
    order = np.argsort(mem_x[:, 0])
    new_y = rng.integers(0, CLASSES, 300)
    stats = learner.train_batch(ids(300), new_y, 1)
    assert (stats["new_per_mb"], stats["replay_per_mb"], stats["iterations"]) == (21, 107, 56)
    assert len(back.steps) == 14 * 4
    epochs_new = []
    for epoch in range(4):
        steps = back.steps[epoch * 14:(epoch + 1) * 14]
        new = np.concatenate([x[:21, 0] for x, _ in steps]).astype(int)
        replayed = np.concatenate([x[21:, 0] for x, _ in steps])
        assert all(len(x) == 128 for x, _ in steps)
        assert len(set(new)) == 294 and new.max() < 300  # 14 x 21 distinct new patterns per epoch
        assert len(set(replayed)) == 1498 and replayed.min() >= 10000  # 14 x 107 distinct slots
        if shuffle == "none":  # the port: the memory in slot order, consecutive slices
            np.testing.assert_array_equal(replayed, mem_x[:1498, 0])
        for x, y in steps:  # every label travels with its own pattern
            np.testing.assert_array_equal(y[:21], new_y[x[:21, 0].astype(int)])
            np.testing.assert_array_equal(y[21:], mem_y[order[np.searchsorted(mem_x[:, 0], x[21:, 0], sorter=order)]])
        epochs_new.append(new)
    np.testing.assert_array_equal(epochs_new[0], epochs_new[3])  # one shuffle per batch (port)


@pytest.mark.parametrize("n_new,minibatch,new,used", [(20, 16, 6, np.arange(30)),
                                                      (7, 8, 1, np.arange(49) % 30)])
def test_small_memory(n_new, minibatch, new, used):
    """30 slots: used once each ((20 + 30) // 16 = 3 groups of 6 + 10, 3 iterations), or walked
    round modulo their number when the plan needs more (7 iterations of 1 + 7)."""
    learner, back, pool = make_learner(memory=30, minibatch=minibatch, epochs=1)
    pool.insert_batch(ids(30, 1000.0), np.zeros(30, np.int64), 0)
    slots = pool.gather(np.arange(30))[0][:, 0]
    learner.train_batch(ids(n_new), np.ones(n_new, np.int64), 1)
    replayed = np.concatenate([x[new:, 0] for x, _ in back.steps])
    np.testing.assert_array_equal(replayed, slots[used])
