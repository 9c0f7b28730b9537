"""Synaptic Intelligence (docs/algorithms.md): importance on a known trajectory against numpy,
F >= 0 and clipped, the penalty gradient, and SI inside an AR1* learner."""
from __future__ import annotations

import numpy as np

from latent_replay.export.exporter import export
from latent_replay.runtime.learn import LearnerConfig
from latent_replay.runtime.engine import Back
from latent_replay.runtime.learn import Learner
from latent_replay.runtime.learn.si import SynapticIntelligence
from helpers import make_weights

W = "conv/weight"


def run_batch(si, params, grads, lr):
    """Plain gradient steps theta -= lr * g along a given gradient sequence; the trajectory
    sum g * delta_theta (the engine's part during a batch) is accumulated here."""
    si.begin_batch(params)
    traj = {W: np.zeros_like(params[W])}
    for g in grads:
        before = params[W].copy()
        params[W] -= lr * g
        traj[W] += g * (params[W] - before)
    si.end_batch(params, traj)


def test_importance_matches_reference():
    cfg = LearnerConfig(method="ar1", si_clip=1e-3, si_xi=1e-7, si_c=1.0)
    theta0 = np.array([0.5, -0.2, 0.1, 0.0], np.float32)
    params = {W: theta0.copy()}
    si = SynapticIntelligence([W], params, cfg)
    grads = [np.array([1.0, -2.0, 0.5, 0.0], np.float32), np.array([0.5, -1.0, -1.0, 0.0], np.float32)]
    lr = 0.01
    run_batch(si, params, grads, lr)
    # reference: traj = sum g * dtheta = sum -lr g^2; omega = -traj / (Dtheta^2 + xi)
    traj = sum(-lr * g.astype(np.float64) ** 2 for g in grads)
    delta = -lr * sum(g.astype(np.float64) for g in grads)
    omega = -traj / (delta ** 2 + 1e-7)
    np.testing.assert_allclose(si.omega[W], omega, rtol=1e-4)
    np.testing.assert_allclose(si.F[W], np.clip(omega, 0, 1e-3), rtol=1e-4)
    assert np.all(si.F[W] >= 0) and np.all(si.F[W] <= 1e-3)
    assert si.F[W][3] == 0  # a weight that never moved has no importance
    np.testing.assert_array_equal(si.theta_star[W], params[W])
    # second batch: omega accumulates, computed from this batch's own start
    omega_1 = si.omega[W].copy()
    start = params[W].copy()
    grads2 = [np.array([0.1, 0.1, 0.1, 0.1], np.float32)]
    run_batch(si, params, grads2, lr)
    d2 = params[W].astype(np.float64) - start
    expected = omega_1 + (lr * 0.1 ** 2) / (d2 ** 2 + 1e-7)
    np.testing.assert_allclose(si.omega[W], expected, rtol=1e-4)


def test_negative_importance_is_clipped_to_zero():
    """A weight moved against its gradient (traj > 0) gets F = 0, never a negative weight."""
    cfg = LearnerConfig(method="ar1")
    params = {W: np.zeros(2, np.float32)}
    si = SynapticIntelligence([W], params, cfg)
    si.begin_batch(params)
    params[W] += np.array([0.01, -0.01], np.float32)
    si.end_batch(params, {W: np.array([1.0, 1.0], np.float32) * np.array([0.01, -0.01], np.float32)})
    assert si.omega[W][0] < 0 and si.F[W][0] == 0
    assert si.F[W][1] > 0


def test_penalty_weight_and_scale():
    """What SI hands the engine per mode (the penalty itself is applied in the step graph and
    checked in test_step_graph.py): lambda in penalty mode, 1 - F / clip factors in scale mode."""
    params = {W: np.array([1.0, 2.0], np.float32)}
    penalty = SynapticIntelligence([W], params, LearnerConfig(method="ar1", si_lambda=100.0))
    scale = SynapticIntelligence([W], params, LearnerConfig(method="ar1", si_lambda=100.0, si_mode="scale"))
    assert penalty.penalty_weight == 100.0 and scale.penalty_weight == 0.0
    scale.F[W] = np.array([1e-3, 5e-4], np.float32)
    np.testing.assert_allclose(scale.grad_scales()[W], [0.0, 0.5])


def test_ar1_learner_importance(tmp_path):
    """AR1* at conv6/dw: SI covers the conv weights of the back only; F in [0, clip] after a batch."""
    export(make_weights(2), "conv6/dw", 5, tmp_path / "art")
    cfg = LearnerConfig.preset("pytorch", method="ar1", replay_memory=20, minibatch=10, epochs=1,
                               epochs_first=2, lr_later=0.01)
    learner = Learner(Back(tmp_path / "art", device="cpu", threads=1), cfg)
    assert learner.si.names == ["conv6/sep/weight"]
    rng = np.random.default_rng(0)
    for b in range(2):
        x = np.abs(rng.standard_normal((20, 1024, 4, 4))).astype(np.float32)
        learner.train_batch(x, rng.integers(0, 5, 20), b)
        F = learner.si.F["conv6/sep/weight"]
        # F is float32: clipped to the clip's nearest float32 (float32(1e-3) > the float 1e-3), as the
        # port's torch.clamp does; compared in F's dtype (numpy 1.x compares a float32 scalar with a
        # Python float in float64, numpy 2 in float32)
        clip = F.dtype.type(cfg.si_clip)
        assert F.min() >= 0 and F.max() <= clip and F.max() > 0
        np.testing.assert_array_equal(learner.si.theta_star["conv6/sep/weight"], learner.params["conv6/sep/weight"])
