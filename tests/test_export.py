"""Export: numerical parity of the ONNX front/back with an independent PyTorch MobileNetV1, one
training step of the exported back against PyTorch, and the manifest (the step graph itself is
checked layer by layer in test_step_graph.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latent_replay.export.exporter import export
from latent_replay.export.manifest import Manifest
from latent_replay.models import graph as g
from latent_replay.models.weights import CAFFE_PREPROCESSING, TORCH_PREPROCESSING
from latent_replay.runtime.engine import Back, Front
from helpers import make_frames, make_weights
import torch_oracle

RTOL = 1e-4  # relative tolerance of the parity checks (max abs error / max abs value)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module", params=[TORCH_PREPROCESSING, CAFFE_PREPROCESSING], ids=["imagenet", "caffe"])
def preprocessing(request):
    return request.param


@pytest.mark.parametrize("latent_layer", ["conv5_4/dw", "pool6"])
def test_front_and_back_match_pytorch(tmp_path, preprocessing, latent_layer):
    weights = make_weights(1, preprocessing, classes=50)
    manifest = export(weights, latent_layer, 50, tmp_path / "art")
    frames = make_frames(6, seed=2)
    latent = Front(tmp_path / "art")(frames)
    expected = torch_oracle.front(weights, frames, latent_layer)
    assert latent.shape == expected.shape == (6,) + tuple(manifest.latent_shape)
    assert rel_err(latent, expected) < RTOL

    back = Back(tmp_path / "art")
    arrays, _, _ = g.back_parameters(weights, latent_layer, 50)
    reference = torch_oracle.TorchBack(arrays, latent_layer)
    with torch.no_grad():
        expected_logits = reference(torch.from_numpy(expected), train=False).numpy()
    logits = back.logits(latent)
    assert rel_err(logits, expected_logits) < RTOL
    # the logits discriminate: not all equal (the imported head is non-zero)
    assert np.ptp(logits) > 1e-3


@pytest.mark.parametrize("latent_layer", ["conv5_4/dw", "pool6"])
def test_one_engine_step_matches_pytorch(tmp_path, latent_layer):
    """The exported back through the default engine: one plain SGD step (no momentum, no decay)
    from frames equals PyTorch's p - lr * grad, batch statistics included."""
    weights = make_weights(3, classes=10)
    export(weights, latent_layer, 10, tmp_path / "art")
    frames = make_frames(8, seed=4)
    latent = Front(tmp_path / "art")(frames)
    labels = np.array([0, 1, 2, 3, 1, 2, 0, 9], np.int64)
    back = Back(tmp_path / "art")
    # make the BRN corrections bite: running statistics away from the batch ones
    for name in back.carried:
        back.set(name, back.get(name) * (1.3 if name.endswith("std") else 0.5))
    arrays = back.parameters()
    lr, r_max, d_max = 0.05, 1.25, 0.5
    back.configure(back.trainable, {n: lr for n in back.trainable}, momentum=0.0, weight_decay=0.0, brn_momentum=0.0)
    loss = back.step(latent, labels, r_max, d_max)
    stats = back.batch_stats()

    reference = torch_oracle.TorchBack(arrays, latent_layer)
    logits = reference(torch.from_numpy(latent).double(), train=True, r_max=r_max, d_max=d_max)
    ref_loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))
    ref_loss.backward()
    assert abs(loss - ref_loss.item()) < 1e-4 * max(1.0, abs(ref_loss.item()))
    changed = 0
    for name in back.trainable:
        p = reference.p(name)
        expected = (p - lr * p.grad).detach().numpy()
        got = back.get(name)
        scale = max(np.abs(expected).max(), 1e-6)
        assert np.abs(got - expected).max() / scale < 1e-4, name
        changed += not np.allclose(got, arrays[name])
    assert changed == len(back.trainable), "every trainable parameter moves in one step"
    for name in back.carried:  # running statistics at rate 0 stay as they were
        np.testing.assert_array_equal(back.get(name), arrays[name])
    for layer, (mean, var) in reference.batch_stats.items():
        np.testing.assert_allclose(stats[f"{layer}/batch_mean"], mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(stats[f"{layer}/batch_var"], var, rtol=1e-4, atol=1e-5)


def test_data_layer_puts_everything_in_the_back(tmp_path):
    weights = make_weights(7, classes=5)
    manifest = export(weights, "data", 5, tmp_path / "art")
    assert manifest.latent_dtype == "uint8" and len(manifest.brn_layers) == 27
    frames = make_frames(3, seed=8)
    latent = Front(tmp_path / "art")(frames)
    assert latent.dtype == np.uint8 and np.array_equal(latent, frames)
    full = torch_oracle.front(weights, frames, "pool6")
    arrays, _, _ = g.back_parameters(weights, "pool6", 5)
    expected = full @ arrays["mid_fc7/weight"].T
    assert rel_err(Back(tmp_path / "art").logits(latent), expected) < RTOL


def test_pool6_leaves_only_the_head(tmp_path):
    manifest = export(make_weights(0), "pool6", 50, tmp_path / "art")
    assert manifest.trainable == ["mid_fc7/weight"] and manifest.brn_layers == []


def test_manifest_describes_the_artifacts(tmp_path):
    export(make_weights(0, CAFFE_PREPROCESSING), "conv5_4/dw", 50, tmp_path / "art")
    manifest = Manifest.load(tmp_path / "art", verify=True)
    d = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert d["latent_layer"] == "conv5_4/dw" and d["latent_shape"] == [512, 8, 8]
    assert d["input"]["channel_order"] == "BGR" and d["input"]["dtype"] == "uint8"
    assert d["preprocessing"]["name"] == "caffe" and d["preprocessing"]["mean"] == [104.0, 117.0, 123.0]
    assert set(d["files"]) == {"front", "step", "step_si", "eval", "initial_state"}
    assert d["engines"] == ["step"]
    assert d["si_params"] == [f"{l}/weight" for l in d["brn_layers"]] and d["brn_layers"][0] == "conv5_4/sep"
    assert all(len(f["sha256"]) == 64 for f in d["files"].values())
    import onnxruntime

    assert d["versions"]["onnxruntime"] == onnxruntime.__version__
    assert manifest.weights_source.startswith("test-random")
    # a tampered file fails verification
    with open(tmp_path / "art" / "front.onnx", "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="checksum"):
        Manifest.load(tmp_path / "art", verify=True)


def test_artifacts_respect_ort_limits(tmp_path):
    import onnx

    export(make_weights(0), "conv5_4/dw", 50, tmp_path / "art")
    # README: every model of the default engine is IR 8 / opset 17 (loads in onnxruntime >= 1.16).
    # (The optional ORT training artifacts are checked in test_engines.py's environment.)
    expected_ir = {"front.onnx": 8, "step.onnx": 8, "step_si.onnx": 8, "eval.onnx": 8}
    paths = sorted((tmp_path / "art").rglob("*.onnx"))
    assert sorted(p.name for p in paths) == sorted(expected_ir)
    for path in paths:
        model = onnx.load(str(path))
        assert model.ir_version == expected_ir[path.name], path
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17], path
    front = onnx.load(str(tmp_path / "art" / "front.onnx"))
    assert not any(n.op_type == "BatchNormalization" for n in front.graph.node)
    assert "conv5_4/dw" in {o for n in front.graph.node for o in n.output}


def test_step_takes_an_ortvalue_as_it_takes_numpy(tmp_path):
    """The device hand-off path (an OrtValue minibatch) computes exactly what the numpy path computes."""
    import onnxruntime as ort

    export(make_weights(0, classes=5), "conv6/dw", 5, tmp_path / "art")
    x = np.abs(np.random.default_rng(0).standard_normal((6, 1024, 4, 4))).astype(np.float32)
    y = np.arange(6) % 5
    a, b = Back(tmp_path / "art"), Back(tmp_path / "art")
    for back in (a, b):
        back.configure(back.trainable, {n: 0.1 for n in back.trainable}, 0.9, 5e-4, 0.1)
    loss_a = a.step(x, y, 1.25, 0.5)
    loss_b = b.step(ort.OrtValue.ortvalue_from_numpy(x), y, 1.25, 0.5)
    assert loss_a == loss_b
    for name in a.state_names():
        np.testing.assert_array_equal(a.get(name), b.get(name), err_msg=name)
    assert not np.array_equal(a.get("conv6/sep/weight"), make_weights(0).convs["conv6/sep"].weight)


def test_cuda_providers_and_the_tf32_switch(monkeypatch):
    """On CUDA the provider keeps its TF32 default unless LATENT_REPLAY_CUDA_TF32=0 asks for fp32."""
    from latent_replay.runtime.engine import providers_for

    assert providers_for("cpu") == ["CPUExecutionProvider"]
    monkeypatch.delenv("LATENT_REPLAY_CUDA_TF32", raising=False)
    assert providers_for("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setenv("LATENT_REPLAY_CUDA_TF32", "0")
    assert providers_for("cuda")[0] == ("CUDAExecutionProvider", {"use_tf32": "0"})
