"""The step engine's CUDA-graph bookkeeping (`engine/graphs.py`), run on the CPU.

A captured CUDA graph replays on the addresses it was captured with, so the engine must put each
step's minibatch and labels into the captured tensors, and must run uncaptured whenever that is not
possible (another batch size, another device tensor). The CPU provider ignores the graph run option,
so an engine with `cuda_graph=True` runs the same bookkeeping here: it must train exactly like the
plain engine, while the captured path is really taken. The capture itself needs a GPU
(tests/test_engine_cuda.py).
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from latent_replay.runtime.engine import session as S
from latent_replay.runtime.engine.step import StepBack
from helpers import exported

LAYER, CLASSES = "conv6/dw", 6


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return exported(tmp_path_factory, LAYER, CLASSES, 7)


def minibatch(shape, n, seed):
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal((n,) + tuple(shape)), 0).astype(np.float32), rng.integers(0, CLASSES, n)


def engines(artifacts):
    """The plain engine and one with the CUDA-graph bookkeeping, both about to train every parameter."""
    pair = (StepBack(artifacts, device="cpu", threads=1, cuda_graph=False),
            StepBack(artifacts, device="cpu", threads=1, cuda_graph=True))
    for back in pair:
        back.configure(back.trainable, {n: 0.05 for n in back.trainable}, 0.9, 5e-4, 0.1)
    return pair


def assert_same_state(plain, graphed):
    for name in plain.state_names():
        np.testing.assert_allclose(graphed.get(name), plain.get(name), rtol=1e-5, atol=1e-7, err_msg=name)


def test_captured_steps_train_like_plain_steps(artifacts):
    plain, graphed = engines(artifacts)
    shape = plain.manifest.latent_shape
    pool_tensor = ort.OrtValue.ortvalue_from_numpy(np.zeros((16,) + tuple(shape), np.float32))  # a pool's buffer
    other_tensor = ort.OrtValue.ortvalue_from_numpy(np.zeros((16,) + tuple(shape), np.float32))
    # (kind, rows): host minibatches of the captured size, another size, the pool's device tensor
    # (filled in place each time), a second device tensor, host again
    plan = [("host", 16), ("host", 16), ("host", 16), ("host", 9), ("host", 16), ("pool", 16), ("pool", 16),
            ("other", 16), ("host", 16), ("host", 16)]
    for k, (kind, rows) in enumerate(plan):
        x, y = minibatch(shape, rows, seed=k)
        r_max, d_max = 1.0 + 0.05 * k, 0.1 * k  # a moving BRN ramp: the scalars must reach the graph too
        for back in (plain, graphed):
            if kind == "host":
                latent = x
            else:
                latent = pool_tensor if kind == "pool" else other_tensor
                latent.update_inplace(x)
            loss = back.step(latent, y, r_max, d_max)
            if back is plain:
                expected = loss
        assert loss == pytest.approx(expected, rel=1e-6), f"step {k} ({kind}, {rows} rows)"
    assert_same_state(plain, graphed)
    for name, value in plain.batch_stats().items():
        np.testing.assert_allclose(graphed.batch_stats()[name], value, rtol=1e-5, atol=1e-7, err_msg=name)
    # graphs for 16 rows, both sides bound on host tensors: the 9-row step and the device tensors ran
    # uncaptured, every other step was captured
    captured = [k for k, (kind, rows) in enumerate(plan) if kind == "host" and rows == 16]
    assert graphed._graphs is not None and graphed._graphs.rows == 16
    assert graphed._graphs.replays == len(captured)


def test_a_device_minibatch_is_captured_while_it_is_the_same_tensor(artifacts):
    """The CUDA pool's tensor, bound on first use, is replayed in place; a new tensor is not."""
    plain, graphed = engines(artifacts)
    shape = plain.manifest.latent_shape
    tensors = [ort.OrtValue.ortvalue_from_numpy(np.zeros((8,) + tuple(shape), np.float32)) for _ in range(3)]
    order = [0, 1, 0, 1, 0, 2, 0, 1]  # side 0 binds tensor 0, side 1 tensor 1; tensor 2 is a stranger
    for k, t in enumerate(order):
        x, y = minibatch(shape, 8, seed=100 + k)
        tensors[t].update_inplace(x)
        for back in (plain, graphed):
            back.step(tensors[t], y, 1.25, 0.5)
    assert_same_state(plain, graphed)
    assert graphed._graphs.replays == len(order) - 1  # all but step 5: tensor 2 on side 1


def test_graph_capture_is_asked_only_where_onnxruntime_can_do_it(monkeypatch):
    monkeypatch.delenv("LATENT_REPLAY_CUDA_GRAPH", raising=False)
    monkeypatch.setattr(S.ort, "__version__", "1.18.0")
    assert S.cuda_graphs_wanted("cuda") and not S.cuda_graphs_wanted("cpu")
    monkeypatch.setattr(S.ort, "__version__", "1.17.3")  # one graph per session: no per-size opt-out
    assert not S.cuda_graphs_wanted("cuda")
    monkeypatch.setattr(S.ort, "__version__", "1.31.1")
    monkeypatch.setenv("LATENT_REPLAY_CUDA_GRAPH", "0")
    assert not S.cuda_graphs_wanted("cuda")
    assert S.providers_for("cuda", cuda_graph=True)[0] == ("CUDAExecutionProvider", {"enable_cuda_graph": "1"})
    monkeypatch.setenv("LATENT_REPLAY_CUDA_TF32", "0")
    assert S.providers_for("cuda", cuda_graph=True)[0] == ("CUDAExecutionProvider",
                                                           {"use_tf32": "0", "enable_cuda_graph": "1"})


def test_the_stream_trainer_never_captures(artifacts, monkeypatch):
    """The camera demo trains beside the live loop: a capture there would forbid the live thread's
    CUDA calls, so its engine is opened without graphs even where they would be the default."""
    from latent_replay.apps.stream.options import StreamOptions
    from latent_replay.apps.stream.state import build_learner
    from latent_replay.export.manifest import Manifest
    from latent_replay.runtime.engine import Back
    from latent_replay.runtime.engine import step as step_module

    monkeypatch.setattr(step_module, "cuda_graphs_wanted", lambda device: True)  # as on CUDA with ORT >= 1.18
    assert Back(artifacts, device="cpu").cuda_graph  # the default elsewhere
    learner = build_learner(StreamOptions(method="ar1free"), artifacts, Manifest.load(artifacts), None)
    assert learner.back.cuda_graph is False
