"""`latent-replay doctor`: it trains at pool6 and conv6/dw and reports the providers each session
really runs on; its arrays compare equal with a second run of the same settings, and a changed array
fails the comparison; a CUDA session that fell back to the CPU, a loss that does not fall and a
TensorRT front that is not on TensorRT are failures; bad input is one line and exit code 2."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from latent_replay.apps.doctor import check
from latent_replay.apps.doctor.compare import load_arrays, save_arrays
from latent_replay.cli import main
from safety_helpers import only_line

QUICK = ["--threads", "1", "--input-size", "32"]


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """One doctor run at both default layers: its report and arrays."""
    out = tmp_path_factory.mktemp("doctor")
    assert main(["doctor", "--device", "cpu", *QUICK, "--json", str(out / "r.json"), "--arrays", str(out / "a.npz")]) == 0
    return out


def test_trains_both_layers_and_reports_the_sessions_providers(first):
    report = json.loads((first / "r.json").read_text())
    assert report["ok"] and report["problems"] == [] and report["device"] == "cpu"
    assert sorted(report["layers"]) == ["conv6/dw", "pool6"]
    for layer, entry in report["layers"].items():
        assert entry["providers"] == {role: ["CPUExecutionProvider"] for role in ("front", "step", "eval")}
        assert len(entry["losses"]) == 3 and entry["losses"][-1] < entry["losses"][0]
    assert report["layers"]["pool6"]["latent_shape"] == [1024] and report["layers"]["conv6/dw"]["latent_shape"][0] == 1024
    settings, arrays = load_arrays(first / "a.npz")
    assert settings == check.Settings(input_size=32).to_json()
    assert arrays["pool6|latents"].shape == (16, 1024) and arrays["pool6|logits"].shape == (16, 10)
    assert {"conv6/dw|conv6/sep/weight", "conv6/dw|conv6/sep/running_mean", "pool6|mid_fc7/weight"} <= set(arrays)
    # the steps moved the head away from its exported zeros
    assert np.abs(arrays["pool6|mid_fc7/weight"]).max() > 0


def test_the_same_settings_compare_equal_and_a_changed_array_fails(first, tmp_path, capsys):
    assert main(["doctor", "--device", "cpu", *QUICK, "--compare", str(first / "a.npz")]) == 0
    out = capsys.readouterr().out
    assert "largest difference 0.00e+00" in out and "doctor: OK" in out
    settings, arrays = load_arrays(first / "a.npz")
    arrays["conv6/dw|conv6/sep/weight"] = arrays["conv6/dw|conv6/sep/weight"] * np.float32(1.001)
    save_arrays(tmp_path / "changed.npz", arrays, settings)
    assert main(["doctor", "--device", "cpu", *QUICK, "--compare", str(tmp_path / "changed.npz")]) == 1
    captured = capsys.readouterr()
    assert "FAILED conv6/dw|conv6/sep/weight: differs by" in captured.out
    assert captured.err.strip().splitlines() == ["latent-replay doctor: FAILED: --compare: conv6/dw|conv6/sep/weight "
                                                 "beyond --rtol"]
    # a looser tolerance accepts the 1e-3 change
    assert main(["doctor", "--device", "cpu", *QUICK, "--compare", str(tmp_path / "changed.npz"), "--rtol", "2e-3"]) == 0


def test_a_session_that_fell_back_to_the_cpu_is_named():
    problems = check.provider_problems({"front": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                                        "step": ["CPUExecutionProvider"]}, check.CUDA)
    assert len(problems) == 1 and problems[0].startswith("the step session runs on CPUExecutionProvider, not CUDA")
    assert check.provider_problems({"step": ["CUDAExecutionProvider", "CPUExecutionProvider"]}, check.CUDA) == []


def test_losses_must_be_finite_and_fall():
    assert check.learning_problems([2.3, 2.1, 1.9]) == []
    assert "did not fall" in check.learning_problems([2.3, 2.4, 2.3])[0]
    assert "non-finite" in check.learning_problems([2.3, float("nan"), 2.0])[0]


def test_relative_difference():
    b = np.array([1.0, -4.0, 2.0])
    assert check.relative_difference(b, b) == 0
    assert check.relative_difference(b + np.array([0, 0.004, 0]), b) == pytest.approx(1e-3)
    assert check.relative_difference(np.zeros(2), np.zeros(2)) == 0


@pytest.mark.skipif("TensorrtExecutionProvider" in ort.get_available_providers(), reason="TensorRT is present here")
def test_tensorrt_asked_for_without_it_fails_naming_it(capsys):
    assert main(["doctor", "--device", "cpu", *QUICK, "--layers", "pool6", "--steps", "2", "--tensorrt"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("latent-replay doctor: FAILED: pool6: --tensorrt: this onnxruntime has no "
                           f"TensorrtExecutionProvider ({', '.join(ort.get_available_providers())})")


@pytest.mark.parametrize("args, words", [
    (["--layers", "conv9"], "--layers 'conv9': unknown latent layer conv9; choose from data, "),
    (["--layers", ","], "--layers ',': unknown latent layer (empty list)"),
    (["--steps", "1"], "--steps must be at least 2"),
    (["--input-size", "16"], "--input-size: input size 16 is too small for MobileNetV1 (at least 32)"),
    (["--rtol", "0"], "--rtol must be > 0"),
    (["--compare", "missing.npz"], "--compare missing.npz: no such file"),
    (["--compare", "bad.npz"], "not an arrays file"),
    (["--json", "."], "--json . is a folder"),
])
def test_bad_input_is_one_line(tmp_path, monkeypatch, capsys, args, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert main(["doctor", *args]) == 2
    assert words in only_line(capsys.readouterr().err, "doctor")


def test_compare_with_other_settings_is_refused_before_running(first, capsys):
    assert main(["doctor", "--device", "cpu", *QUICK, "--steps", "4", "--compare", str(first / "a.npz")]) == 2
    assert "was made with other settings" in only_line(capsys.readouterr().err, "doctor")


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is present here")
def test_device_cuda_without_the_provider(capsys):
    assert main(["doctor", "--device", "cuda"]) == 2
    assert "no CUDA execution provider" in only_line(capsys.readouterr().err, "doctor")
