"""The step engine (runtime/engine/step.py) across many runs of one session.

Every step of a session must compute what a new session computes from the same state: onnxruntime
1.16-1.18 did not (from the second run on, replaying the first run's memory pattern, the first
layer's weight gradient of the conv5_4/dw step came out wrong with the engine's bound outputs;
1.32 was right). CI runs this file against the oldest supported onnxruntime too.
"""
from __future__ import annotations

import numpy as np
import pytest

from latent_replay.models import mobilenet_v1 as net
from latent_replay.runtime.engine.step import StepBack
from helpers import exported

LAYER, CLASSES = "conv5_4/dw", 6


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return exported(tmp_path_factory, LAYER, CLASSES, 3)


def engine(artifacts):
    back = StepBack(artifacts, device="cpu", threads=1)
    back.configure(back.trainable, {n: 0.003 for n in back.trainable}, 0.9, 5e-4, brn_momentum=0.1)
    return back


def test_every_step_of_a_session_equals_a_new_session_from_the_same_state(artifacts):
    rng = np.random.default_rng(1)
    y = rng.integers(0, CLASSES, 16)
    x = np.abs(rng.standard_normal((16,) + net.latent_shape(LAYER)) + 0.3 * y.reshape(-1, 1, 1, 1) / CLASSES)
    x = x.astype(np.float32)
    running = engine(artifacts)
    for k in range(4):
        before = {n: running.get(n) for n in running.state_names()}
        running.step(x, y, 1.25, 0.5)
        fresh = engine(artifacts)
        for name, value in before.items():
            fresh.set(name, value)
        fresh.step(x, y, 1.25, 0.5)
        for name in running.state_names():
            a, b = running.get(name), fresh.get(name)
            assert np.abs(a - b).max() <= 1e-6 * max(np.abs(b).max(), 1e-12), f"step {k}: {name}"
