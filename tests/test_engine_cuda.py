"""The default engine on the CUDA execution provider (onnxruntime-gpu).

Skipped, with the reason, where this onnxruntime has no CUDA provider; where it has one, a broken
CUDA path fails these tests (nothing here turns an error into a skip).
"""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from latent_replay.export.exporter import export
from latent_replay.runtime.engine import Back
from latent_replay.runtime.engine import session as S
from latent_replay.runtime.engine.step import StepBack
from helpers import make_weights

pytestmark = pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                                reason="this onnxruntime has no CUDA execution provider (install onnxruntime-gpu)")
LAYER, CLASSES = "conv5_4/dw", 10
# Operators that carry the work: each must run on the GPU (shape bookkeeping may stay on the CPU).
HEAVY = {"MatMul", "Gemm", "FusedMatMul", "Mul", "Add", "Sub", "Div", "ReduceSum", "ReduceMean", "Relu", "BatchNormalization",
         "Transpose", "Slice", "Pad", "Expand", "Sqrt", "Exp", "LogSoftmax", "Max", "Min", "OneHot", "HardSigmoid"}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    path = tmp_path_factory.mktemp("cuda") / "art"
    export(make_weights(4), LAYER, CLASSES, path)
    return path


def minibatch(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.standard_normal((n, 512, 8, 8)), 0).astype(np.float32)
    return x, rng.integers(0, CLASSES, n)


def test_cuda_steps_match_the_cpu(artifacts):
    """Five steps (momentum, decay, BRN statistics) on CUDA and on the CPU end in the same state."""
    engines = [Back(artifacts, device=d) for d in ("cpu", "cuda")]
    x, y = minibatch()
    for back in engines:
        back.configure(back.trainable, {n: 0.02 for n in back.trainable}, 0.9, 5e-4, 0.05)
    initial = engines[0].parameters()
    for _ in range(5):
        losses = [back.step(x, y, 1.25, 0.5) for back in engines]
        assert abs(losses[0] - losses[1]) < 1e-3 * max(1.0, losses[0])
    for name in engines[0].state_names():
        a, b = engines[0].get(name), engines[1].get(name)
        change = np.abs(a - initial.get(name, 0)).max()
        assert np.abs(a - b).max() <= 1e-2 * change + 1e-5 * np.abs(a).max(), name
    np.testing.assert_allclose(engines[1].logits(x[:4]), engines[0].logits(x[:4]), atol=1e-3)


def test_minibatch_on_the_device_trains_like_a_host_one(artifacts):
    """An OrtValue minibatch already on the GPU (the CUDA pool's hand-off) gives the same step."""
    x, y = minibatch(seed=1)
    a, b = Back(artifacts, device="cuda"), Back(artifacts, device="cuda")
    for back in (a, b):
        back.configure(back.trainable, {n: 0.02 for n in back.trainable}, 0.9, 5e-4, 0.05)
    assert a.step(x, y, 1.25, 0.5) == pytest.approx(b.step(ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0), y, 1.25, 0.5))
    np.testing.assert_array_equal(a.get("conv6/sep/weight"), b.get("conv6/sep/weight"))


def test_every_heavy_operator_runs_on_cuda(artifacts, tmp_path):
    """No operator of the step that touches activations falls back to the CPU provider."""
    from latent_replay.export.manifest import Manifest

    manifest = Manifest.load(artifacts)
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    back = Back(artifacts, device="cuda")
    session = ort.InferenceSession(str(manifest.path(artifacts, "step")), options,
                                   providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    x, y = minibatch(8)
    feeds = {"latent": x, "labels": y, "brn_r_max": np.array(1.25, np.float32), "brn_d_max": np.array(0.5, np.float32),
             "brn_momentum": np.array(0.01, np.float32), "sgd_hyper": back.hyper, "si_lambda": np.array(0, np.float32)}
    for name in back.state_names():
        feeds[name] = back.get(name)
    wanted = {i.name for i in session.get_inputs()}
    session.run(None, {k: v for k, v in feeds.items() if k in wanted})
    events = json.load(open(session.end_profiling()))
    on_cpu = sorted({e["args"]["op_name"] for e in events if e.get("cat") == "Node"
                     and e.get("args", {}).get("provider") == "CPUExecutionProvider"
                     and e["args"].get("op_name") in HEAVY})
    assert not on_cpu, f"operators that fell back to the CPU: {on_cpu}"


@pytest.mark.skipif(S.ort_version() < S.CUDA_GRAPH_MIN_ORT, reason="CUDA graphs need onnxruntime-gpu >= 1.18")
def test_captured_cuda_graph_steps_match_uncaptured_ones(artifacts):
    """Steps replayed from the two captured graphs (and an uncaptured one of another size between
    them) end in the state the same steps reach without capture."""
    plain = StepBack(artifacts, device="cuda", cuda_graph=False)
    graphed = StepBack(artifacts, device="cuda", cuda_graph=True)
    for back in (plain, graphed):
        back.configure(back.trainable, {n: 0.02 for n in back.trainable}, 0.9, 5e-4, 0.05)
    initial = plain.parameters()
    sizes = [32] * 6 + [20] + [32] * 3
    for k, n in enumerate(sizes):
        x, y = minibatch(n, seed=10 + k)
        losses = [back.step(x, y, 1.0 + 0.02 * k, 0.05 * k) for back in (plain, graphed)]
        assert abs(losses[0] - losses[1]) < 1e-4 * max(1.0, losses[0]), f"step {k}"
    assert graphed._graphs.replays == len(sizes) - 1
    for name in plain.state_names():
        a, b = plain.get(name), graphed.get(name)
        change = np.abs(a - initial.get(name, 0)).max()
        assert np.abs(a - b).max() <= 1e-3 * change + 1e-6 * np.abs(a).max(), name
