"""AR1*-free with latent replay at conv5_4/dw (the default latent layer) against PyTorch, batches 0-2.

The reference (`reference_learner.ReferenceLearner`: the BRN back of `torch_oracle` with r and d
detached, torch float64, SGD with torch.optim.SGD semantics, the BRN schedule, CWR*, the replay
memory and the minibatch order written from docs/algorithms.md) starts from the arrays of a freshly
constructed learner and trains the same three batches; the learner's parameters, running statistics,
CWR* arrays, replay memory and eval-model predictions must match after each one. Only the learner's
public interface is used. `test_schedule_oracle.py` checks the same at conv5_6/dw with settings that
make every schedule rule visible; this one covers the deeper back of the default split.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from latent_replay.models import mobilenet_v1 as net
from latent_replay.runtime.learn import LearnerConfig
from latent_replay.runtime.engine import Back
from latent_replay.runtime.learn import Learner
from helpers import exported
from reference_learner import ReferenceLearner, assert_learner_matches, max_param_diff
import torch_oracle

LAYER = "conv5_4/dw"
CLASSES = 6
# float32 learner vs float64 reference over 11 steps through 4 BRN blocks: measured <= 3e-5.
TOL = 1e-3


def latents(rng, n, shape):
    """Post-ReLU-like latents with a class-dependent mean so that the head learns something."""
    y = rng.integers(0, CLASSES, n)
    x = np.abs(rng.standard_normal((n,) + shape) + 0.3 * y.reshape(-1, 1, 1, 1) / CLASSES)
    return x.astype(np.float32), y.astype(np.int64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return exported(tmp_path_factory, LAYER, CLASSES, 3)


def test_three_incremental_batches_match_torch(artifacts):
    """Batch 0: 20 patterns, 2 minibatches of 10, no memory. Batch 1: 20 new + 20 stored -> 4 x (5 + 5);
    then 10 empty + 5 filled slots written. Batch 2: 20 new + 30 stored -> 5 x (4 + 6)."""
    cfg = LearnerConfig.preset("pytorch", method="ar1free", replay="latent", replay_memory=30, minibatch=10,
                               epochs=1, epochs_first=1, lr_first=0.02, lr_later=0.02, brn_momentum_first=0.1,
                               brn_momentum_later=0.05, seed=5)
    learner = Learner(Back(artifacts, device="cpu", threads=1), cfg)
    initial = {n: v.copy() for n, v in learner.params.items()}
    ref = ReferenceLearner(initial, cfg, LAYER, CLASSES)
    rng = np.random.default_rng(0)
    shape = net.latent_shape(LAYER)
    probe, _ = latents(rng, 12, shape)
    plans = [(10, 0, 2), (5, 5, 4), (4, 6, 5)]  # (new, replayed, iterations) per batch
    before = initial
    for i, plan in enumerate(plans):
        x, y = latents(rng, 20, shape)
        stats = learner.train_batch(x, y, i)
        assert (stats["new_per_mb"], stats["replay_per_mb"], stats["iterations"]) == plan
        ref.train_batch(x, y, i)
        assert_learner_matches(learner, ref, i, tol=TOL, probe=probe)
        after = ref.params()
        assert max_param_diff(after, before) > 20 * TOL  # the batch moved the parameters far more than TOL
        for layer in learner.manifest.brn_layers:  # running statistics moved measurably
            assert np.abs(after[f"{layer}/running_std"] - before[f"{layer}/running_std"]).max() > 10 * TOL
        before = after
    assert len(learner.pool) == 30


def test_engine_sgd_matches_torch_with_multipliers_and_frozen(artifacts):
    """The engine's update == torch.optim.SGD(momentum, weight_decay) with a per-parameter learning
    rate (the head at 10x, a param group) and a frozen parameter (no gradient: untouched)."""
    back = Back(artifacts, device="cpu", threads=1)
    frozen, head = "conv6/dw/weight", back.head
    active = [n for n in back.trainable if n != frozen]
    back.configure(active, {n: 0.2 if n == head else 0.02 for n in active}, 0.9, 0.01, brn_momentum=0.0)
    initial = back.parameters()
    ref = torch_oracle.TorchBack(initial, LAYER)
    ref.p(frozen).requires_grad_(False)
    opt = torch.optim.SGD([{"params": [ref.p(n) for n in active if n != head]}, {"params": [ref.p(head)], "lr": 0.2}],
                          lr=0.02, momentum=0.9, weight_decay=0.01)
    x, y = latents(np.random.default_rng(1), 16, net.latent_shape(LAYER))
    for _ in range(3):
        back.step(x, y, 1.25, 0.5)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(torch.from_numpy(x).double(), True, 1.25, 0.5), torch.from_numpy(y)).backward()
        opt.step()
    np.testing.assert_array_equal(back.get(frozen), initial[frozen])
    for name in active:
        expected = ref.p(name).detach().numpy()
        change = np.abs(expected - initial[name]).max()
        # a wrong multiplier, decay or momentum is off by O(1) x the change; float32 rounding by < 1%
        assert change > 0 and np.abs(back.get(name) - expected).max() <= 1e-2 * change, name
