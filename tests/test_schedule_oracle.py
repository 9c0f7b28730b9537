"""Batches 0, 1 and 2 of AR1*-free and AR1* against an independent reference (torch float64 + numpy).

The reference (`reference_learner.py`) starts from the arrays a freshly constructed learner holds
(the exported initial back) and runs the whole schedule itself, from docs/algorithms.md:
lr_first on batch 0 and lr_later after; the BRN r_max/d_max ramp (+ step x minibatch per step, no
clamp) and the first-batch statistics rate on batch 0, constant values later; SGD momentum carried
within a batch, reset at batch 1, carried from batch 1 to 2; CWR* reset/consolidation; SI in both
modes; the replay memory insertion rule and the minibatch order. After EACH batch the learner's
parameters (running statistics included), CWR* cw/past, SI omega/F/theta*, the memory and the
predictions of the eval model must match.

The settings are chosen so that every rule matters, and the test proves it on the reference itself:
with each rule broken (lr_first ignored, ramp without its x minibatch factor, batch 0 at the later
statistics rate, no momentum reset at batch 1, SI never applied) the reference ends the batch where
the rule acts more than 20 x TOL away from the correct one -- a learner with that bug cannot match.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from latent_replay.export.exporter import export
from latent_replay.runtime.engine import Back
from latent_replay.runtime.learn import Learner
from helpers import make_weights
from reference_learner import (CLASSES, LATENT_LAYER, TOL, ReferenceLearner, assert_learner_matches,
                               max_param_diff, oracle_config, oracle_stream)

VISIBLE = 20 * TOL  # how far a broken rule must move the reference


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    path = tmp_path_factory.mktemp("schedule") / "art"
    export(make_weights(3), LATENT_LAYER, CLASSES, path)
    return path


def assert_si_matches(learner, ref: ReferenceLearner, batch: int) -> None:
    """SI arrays after `batch`. omega sums g dtheta / (Dtheta^2 + xi) over steps whose dtheta the
    learner takes from float32 parameters: each term carries a rounding of |g| ulp32(theta), which is
    large against small steps and does not cancel when the terms do. Tolerance per element: 10 x that
    rounding summed like omega, plus 1e-3 x the sum of the terms' sizes (the parameters of learner
    and reference differ by ~1e-6). F = clip(omega, 0, clip) moves at most as much as omega."""
    assert learner.si.names == ref.si_names
    for name in ref.si_names:
        tol = 10 * ref.omega_rounding[name] + 1e-3 * ref.omega_terms[name] + 1e-9
        for what, got, expected in (("omega", learner.si.omega[name], ref.omega[name]),
                                    ("F", learner.si.F[name], ref.F[name])):
            bad = np.abs(got - expected) > tol
            assert not bad.any(), (f"SI {what} of {name} after batch {batch}: {bad.sum()} of {bad.size} elements "
                                   f"off, e.g. {got[bad][:3]} vs {expected[bad][:3]} (tolerance {tol[bad][:3]})")
        np.testing.assert_allclose(learner.si.theta_star[name], ref.theta_star[name], rtol=0, atol=TOL)


class NoMomentumReset(ReferenceLearner):
    """The reference with the momentum of batch 0 carried into batch 1."""

    def new_optimizer(self, i):
        return False


def broken_variants(method, config, initial, ref, batch):
    """References with one rule broken, ready to train `batch` (copies of `ref` before it, or new)."""
    def fresh(**changes):
        return ReferenceLearner(initial, config.replace(**changes), LATENT_LAYER, CLASSES)

    variants = {}
    if batch == 0 and method == "ar1free":  # SI has no effect on batch 0 (F = 0): one method is enough
        variants["lr_first ignored"] = fresh(lr_first=config.lr_later)
        # batch 0's minibatches are all full: a step / minibatch per pattern = a ramp without x minibatch
        variants["ramp without x minibatch"] = fresh(brn_ramp_step=config.brn_ramp_step / config.minibatch)
        variants["batch 0 at the later statistics rate"] = fresh(brn_momentum_first=config.brn_momentum_later)
    if batch == 1 and method == "ar1free":
        variants["no momentum reset at batch 1"] = copy.deepcopy(ref)
        variants["no momentum reset at batch 1"].__class__ = NoMomentumReset
    if batch == 1 and method == "ar1":
        variants["SI never applied"] = copy.deepcopy(ref)
        variants["SI never applied"].si = False
    return variants


def assert_importance_is_non_trivial(ref: ReferenceLearner, clip: float) -> None:
    """The F that batch 1 uses: some weights at 0, many clipped, many in between."""
    F = np.concatenate([ref.F[n].ravel() for n in ref.si_names])
    assert (F == 0).any() and np.mean(F == clip) > 0.1 and np.mean((F > 0) & (F < clip)) > 0.1


@pytest.mark.parametrize("method,si_mode", [("ar1free", "penalty"), ("ar1", "penalty"), ("ar1", "scale")],
                         ids=["ar1free", "ar1-si-penalty", "ar1-si-scale"])
def test_batches_0_1_2_match_the_reference(artifacts, method, si_mode):
    # the output layer at 3x the learning rate checks the learner's per-parameter rates (AR1*-free
    # only: with SI the importance check below needs the plain rates)
    config = oracle_config(method=method, si_mode=si_mode, **({"head_lr_mult": 3.0} if method == "ar1free" else {}))
    stream = oracle_stream()
    learner = Learner(Back(artifacts, device="cpu", threads=1), config)
    initial = {name: value.copy() for name, value in learner.params.items()}  # the exported arrays
    ref = ReferenceLearner(initial, config, LATENT_LAYER, CLASSES)
    variants = broken_variants(method, config, initial, ref, 0)
    probe = np.concatenate([x for x, _ in stream])
    for i, (x, y) in enumerate(stream):
        learner.train_batch(x, y, i)
        ref.train_batch(x, y, i)
        assert_learner_matches(learner, ref, i, probe=probe)
        if method == "ar1":
            assert_si_matches(learner, ref, i)
            if i == 0:
                assert_importance_is_non_trivial(ref, config.si_clip)
        for name, variant in variants.items():
            variant.train_batch(x, y, i)
            diff = max_param_diff(variant.params(), ref.params())
            assert diff > VISIBLE, f"'{name}' changes batch {i} by only {diff:.2e}: the settings do not show it"
        variants = broken_variants(method, config, initial, ref, i + 1)
