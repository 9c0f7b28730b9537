"""`latent-replay bench`: the quick run's figures against what is known without measuring (the
configuration, analytic MAC counts and pattern sizes, the PyTorch baseline as an independent
implementation), the derived ratios and targets on hand-made figures, the GPU front's error reporting,
and the GPU memory / tegrastats probes with fake NVML, nvidia-smi and tegrastats. No test asserts a
speed or a fraction of the GEMM rate (the machine is shared): `latent-replay bench` prints those."""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys

import numpy as np
import pytest

from latent_replay.apps.bench import command as run, probes as core, report, workers
from latent_replay.apps.bench import torch_baseline as tb
import mobilenet_spec as spec


def _args(tmp_path, layers: str, storage: str = "fp32,uint8") -> argparse.Namespace:
    """The command's own parser, so every option keeps its default."""
    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    return parser.parse_args(["--quick", "--json", str(tmp_path / "bench.json"), "--layers", layers,
                              "--storage", storage, "--out", str(tmp_path)])


def _pos(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _check_latency(lat: dict, iters: int) -> None:
    """Measured figures: as many samples as configured, all positive and finite (their order is
    numpy's business, tested on known inputs in test_percentiles_match_numpy)."""
    assert lat["count"] == iters
    assert all(_pos(lat[k]) for k in ("p50", "p90", "p99", "mean", "min", "max")), lat


def _front_macs(layer: str) -> int:
    """Multiply-adds of the front up to `layer` per frame, from the hard-coded MobileNetV1 spec."""
    front, _ = spec.split(layer)
    macs = sum(int(np.prod(spec.WEIGHT_SHAPES[l.name])) * l.out_hw ** 2 for l in front)
    return macs + (1024 * 4 * 4 if layer == "pool6" else 0)  # global average pool: one add per value


def _back_macs(layer: str, classes: int = workers.CLASSES) -> int:
    _, back = spec.split(layer)
    macs = sum(int(np.prod(spec.WEIGHT_SHAPES[l.name])) * l.out_hw ** 2 for l in back)
    return macs + (0 if layer == "pool6" else 1024 * 4 * 4) + 1024 * classes


def _provider_checked(ours: dict) -> None:
    """A GPU provider this onnxruntime lists must have been measured; only an unlisted one is skipped."""
    import onnxruntime as ort

    for provider, key in (("CUDAExecutionProvider", "cuda"), ("TensorrtExecutionProvider", "tensorrt")):
        if provider in ort.get_available_providers():
            assert "error" not in ours[key] and "skipped" not in ours[key], ours[key]
            _check_latency(ours[key]["latency_b1_s"], workers.QUICK["iters"])
        else:
            assert set(ours[key]) == {"skipped"}, ours[key]


def check_results(r: dict, layers, storages) -> None:
    """The quick benchmark's JSON against what is known independently of the measurement: the
    configuration (sample counts, minibatch plan 21 + 107 from docs/algorithms.md), the analytic
    MAC counts and pattern sizes of the MobileNetV1 spec, and the PyTorch baseline (an independent
    implementation of the same batch: same plan, same memory bytes, same loss)."""
    has_torch = tb.available()[0]
    d = r["derived"]
    assert d["errors"] == []
    assert _pos(r["gemm"]["macs_per_s"])
    q = workers.QUICK
    groups = (q["n_new"] + q["memory"]) // 128
    new = q["n_new"] // groups
    plan = (new, 128 - new, q["n_new"] // new)
    assert plan == (21, 107, 2)
    for layer in layers:
        front, df = r["front"][layer], d["front"][layer]
        ours = front["ours"]
        _check_latency(ours["cpu"]["latency_b1_s"], q["iters"])
        assert df["front_macs_per_frame"] == _front_macs(layer)
        for b in q["batches"]:
            t = ours["cpu"]["throughput"][str(b)]
            assert t["batch"] == b and t["repeats"] == q["repeats"] and _pos(t["fps"])
            rate = df["mac_rate"][str(b)]
            assert rate["macs"] == _front_macs(layer) * b and rate["seconds"] == t["seconds_median"]
        assert _pos(ours["peak_rss_mb"])
        _provider_checked(ours)
        if has_torch:
            _check_latency(front["torch"]["latency_b1_s"], q["iters"])
        batch, db = r["batch"][layer], d["batch"][layer]
        values = int(np.prod(spec.LATENT_SHAPES[layer]))
        for storage in storages:
            o = batch[storage]
            p = o["pool"]
            assert p["patterns"] == p["filled"] == q["memory"]
            assert p["bytes_per_pattern"] == p["analytic_bytes_per_pattern"] == values * {"fp32": 4, "uint8": 1}[storage]
            assert p["labels_bytes"] == 8 * q["memory"]
            assert p["scale_bytes"] == (4 * spec.LATENT_SHAPES[layer][0] if storage == "uint8" else 0)
            assert p["total_bytes"] == q["memory"] * (p["bytes_per_pattern"] + 8) + p["scale_bytes"]
            assert db[storage]["pool_bytes_consistent"]
            assert (o["new_per_mb"], o["replay_per_mb"], o["iterations"]) == plan
            for key in ("front_s", "train_s", "batch_s", "peak_rss_mb"):
                assert _pos(o[key]), key
            _check_latency(o["step_s"], plan[2])
            assert db[storage]["mac_rate_batch"]["macs"] == \
                q["n_new"] * _front_macs(layer) + plan[2] * 128 * workers.BACK_TRAIN_FACTOR * _back_macs(layer)
            assert db[storage]["mac_rate_step"]["macs"] == 128 * workers.BACK_TRAIN_FACTOR * _back_macs(layer)
            assert set(o["breakdown"]) == {"engine_steps_s", "other_s"}
        if "fp32" in storages and "uint8" in storages:
            u = db["uint8_vs_fp32"]
            assert u["pattern_bytes_ratio"] == 4
            assert u["pool_bytes_ratio"] == pytest.approx(
                (q["memory"] * (4 * values + 8)) / (q["memory"] * (values + 8) + 4 * spec.LATENT_SHAPES[layer][0]))
        if has_torch:
            t = batch["torch"]
            assert (t["new_per_mb"], t["replay_per_mb"], t["iterations"]) == plan
            assert t["front_frames"] == q["epochs"] * plan[2] * plan[0]  # the port re-runs the front every epoch
            assert t["memory_bytes"] == batch["fp32"]["pool"]["total_bytes"] - batch["fp32"]["pool"]["scale_bytes"]
            # the same batch through two implementations: the same mean loss
            assert abs(t["loss"] - batch["fp32"]["loss"]) < 1e-3 * abs(t["loss"])
            assert _pos(t["batch_s"]) and _pos(t["peak_rss_mb"])
        else:
            assert "skipped" in batch["torch"]
    assert len(d["targets"]) >= 4
    for t in d["targets"]:
        assert t["met"] in (True, False, None)
        if t["met"] is not None:
            assert isinstance(t["value"], float)


def _run(tmp_path, layers: str, capsys) -> dict:
    args = _args(tmp_path, layers)
    assert run.command(args) == 0
    out = capsys.readouterr().out
    assert "INCREMENTAL BATCH" in out and "TARGETS" in out
    r = json.loads((tmp_path / "bench.json").read_text())
    check_results(r, layers.split(","), ["fp32", "uint8"])
    return r


def test_bench_quick_pool6(tmp_path, capsys):
    """The light variant: the quick benchmark at pool6 only (CWR*, head-only training), all figures."""
    r = _run(tmp_path, "pool6", capsys)
    assert r["quick"] and r["layers"] == ["pool6"]
    # conv5_4/dw was not measured: its targets say so instead of inventing a value
    assert all(t["met"] is None for t in r["derived"]["targets"])


@pytest.mark.slow
def test_bench_quick_default_layers(tmp_path, capsys):
    """`latent-replay bench --quick` as a user runs it (conv5_4/dw and pool6)."""
    r = _run(tmp_path, "conv5_4/dw,pool6", capsys)
    assert {t["met"] for t in r["derived"]["targets"]} <= {True, False}


def test_percentiles_match_numpy():
    """Known inputs: 1..100 shuffled -> numpy's linear interpolation gives p50 50.5, p90 90.1, p99 99.01."""
    samples = np.random.default_rng(0).permutation(np.arange(1, 101)).astype(float)
    p = core.percentiles(list(samples))
    assert (p["p50"], p["p90"], p["p99"]) == pytest.approx((50.5, 90.1, 99.01))
    assert (p["mean"], p["min"], p["max"], p["count"]) == (50.5, 1.0, 100.0, 100)
    assert core.percentiles([0.25])["p99"] == 0.25
    with pytest.raises(ValueError):
        core.percentiles([])


def test_cli_registers_bench():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    run.add_bench_command(sub)
    args = parser.parse_args(["bench", "--quick", "--layers", "pool6", "--storage", "uint8", "--threads", "1"])
    assert args.quick and args.layers == "pool6" and args.threads == 1 and args.handler is run.command


def test_bad_layer_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="unknown latent layer"):
        run.benchmark(_args(tmp_path, "conv9"))


# ---- derived figures on hand-made results -------------------------------------------------------
def _lat(p50: float) -> dict:
    return {"p50": p50, "p90": p50, "p99": p50, "mean": p50, "min": p50, "max": p50, "count": 1}


def _pool(bytes_per_pattern: int, scale: int) -> dict:
    return {"patterns": 10, "bytes_per_pattern": bytes_per_pattern, "labels_bytes": 80, "scale_bytes": scale,
            "total_bytes": 10 * bytes_per_pattern + 80 + scale}


def _made_up_results() -> dict:
    """Figures for conv5_4/dw with round numbers, so that every derived value is known by hand."""
    layer = "conv5_4/dw"
    ours_batch = {"n_new": 300, "iterations": 14, "new_per_mb": 21, "replay_per_mb": 107, "step_s": _lat(0.5),
                  "batch_s": 30.0, "peak_rss_mb": 1000.0, "pool": _pool(131072, 0)}
    return {
        "gemm": {"macs_per_s": 1e11},
        "front": {layer: {
            "ours": {"cpu": {"latency_b1_s": _lat(0.002), "throughput": {"32": {"batch": 32, "seconds_median": 0.08,
                                                                                 "fps": 400.0}}},
                     "peak_rss_mb": 500.0, "cuda": {"skipped": "not listed"}, "tensorrt": {"skipped": "not listed"}},
            "torch": {"latency_b1_s": _lat(0.005), "throughput": {"32": {"batch": 32, "seconds_median": 0.16,
                                                                         "fps": 200.0}},
                      "peak_rss_mb": 400.0}}},
        "batch": {layer: {
            "fp32": ours_batch,
            "uint8": dict(ours_batch, batch_s=31.5, peak_rss_mb=900.0, pool=_pool(32768, 2048)),
            "torch": {"batch_s": 60.0, "step_s": _lat(1.0), "peak_rss_mb": 1250.0, "front_frames": 1200,
                      "iterations": 14, "new_per_mb": 21, "replay_per_mb": 107}}},
    }


def test_derived_ratios_and_targets_on_known_figures():
    r = _made_up_results()
    report.derive(r)
    d = r["derived"]
    front_macs = _front_macs("conv5_4/dw")
    assert round(front_macs / 1e6, 1) == 126.1  # docs/algorithms.md
    f = d["front"]["conv5_4/dw"]
    assert f["latency_b1_p50_ratio"] == pytest.approx(0.4)
    assert f["throughput_ratio"] == {"32": pytest.approx(2.0)}
    assert f["peak_rss_ratio"] == pytest.approx(1.25)
    assert f["mac_rate"]["32"]["fraction_of_gemm"] == pytest.approx(front_macs * 32 / 0.08 / 1e11)
    b = d["batch"]["conv5_4/dw"]
    assert b["fp32"]["batch_time_ratio"] == pytest.approx(0.5)
    assert b["fp32"]["step_time_ratio"] == pytest.approx(0.5)
    assert b["fp32"]["peak_rss_ratio"] == pytest.approx(0.8)
    train_macs = 14 * 128 * 3 * _back_macs("conv5_4/dw")
    assert b["fp32"]["mac_rate_batch"]["fraction_of_gemm"] == pytest.approx((300 * front_macs + train_macs) / 30 / 1e11)
    assert b["uint8_vs_fp32"]["pattern_bytes_ratio"] == 4
    assert b["uint8_vs_fp32"]["pool_bytes_ratio"] == pytest.approx((1310720 + 80) / (327680 + 80 + 2048))
    assert b["uint8_vs_fp32"]["batch_time_ratio"] == pytest.approx(1.05)
    met = {t["target"]: (t["value"], t["met"]) for t in d["targets"]}
    assert met["AR1*-free incremental batch at conv5_4/dw: speed-up over PyTorch"] == (pytest.approx(2.0), True)
    assert met["AR1*-free incremental batch at conv5_4/dw: peak RSS ours/PyTorch"] == (pytest.approx(0.8), True)
    assert met["front conv5_4/dw batch 1 p50: speed-up over PyTorch eager"] == (pytest.approx(2.5), True)
    frac = front_macs * 32 / 0.08 / 1e11
    assert met["front conv5_4/dw batch 32: fraction of the GEMM MAC rate"] == (pytest.approx(frac), frac >= 0.3)
    assert d["errors"] == []


def test_an_error_anywhere_is_reported_and_fails_the_command():
    r = _made_up_results()
    r["front"]["conv5_4/dw"]["ours"]["cuda"] = {"error": "CUDAExecutionProvider is listed but failed"}
    report.derive(r)
    assert r["derived"]["errors"] == ["front.conv5_4/dw.ours.cuda: CUDAExecutionProvider is listed but failed"]


# ---- the GPU front: listed but broken is an error, not "skipped" ---------------------------------
@pytest.fixture(scope="module")
def front_spec(tmp_path_factory):
    from latent_replay.export.exporter import export
    from helpers import make_weights

    art = tmp_path_factory.mktemp("gpu_front") / "art"
    export(make_weights(0), "conv5_4/dw", 5, art)
    spec_ = {"artifacts": str(art), "threads": 1, "spin": False, "iters": 3, "warmup": 1, "batches": [2],
             "repeats": 1}
    return spec_, np.zeros((2, 128, 128, 3), np.uint8)


def test_gpu_front_not_listed_is_skipped(front_spec):
    spec_, frames = front_spec
    out = workers._gpu_front(spec_, frames, "CUDAExecutionProvider", ["CPUExecutionProvider"])
    assert set(out) == {"skipped"}


@pytest.mark.filterwarnings("ignore:Specified provider")  # ORT warns, then falls back to the CPU
@pytest.mark.parametrize("provider", ["CUDAExecutionProvider", "TensorrtExecutionProvider"])
def test_gpu_front_listed_but_not_running_is_an_error(front_spec, provider):
    """A provider the build lists but that does not load (here: a CPU build told it has one; ORT then
    falls back to the CPU with a warning) is an error."""
    import onnxruntime as ort

    if provider in ort.get_available_providers():
        pytest.skip(f"{provider} really is available here")
    spec_, frames = front_spec
    out = workers._gpu_front(spec_, frames, provider, [provider, "CPUExecutionProvider"])
    assert "skipped" not in out and provider in out["error"] and "CPUExecutionProvider" in out["error"]


def test_gpu_front_that_raises_is_an_error(front_spec, monkeypatch):
    import onnxruntime as ort

    def broken(*args, **kwargs):
        raise RuntimeError("libcudnn.so.8: cannot open shared object file")

    monkeypatch.setattr(ort, "InferenceSession", broken)
    spec_, frames = front_spec
    out = workers._gpu_front(spec_, frames, "CUDAExecutionProvider", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert set(out) == {"error"} and "libcudnn" in out["error"]


# ---- GPU memory and tegrastats probes with fake NVML / executables -------------------------------
SLEEP = shutil.which("sleep") or "/bin/sleep"  # found before PATH is replaced


def _fake_exe(directory, name: str, script: str):
    path = directory / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


@pytest.fixture
def fake_path(tmp_path, monkeypatch):
    """An empty bin folder that is the whole PATH (no real nvidia-smi or tegrastats can answer)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


class FakeNvml:
    """The pynvml calls gpu_memory makes, for two GPUs; records init/shutdown."""

    def __init__(self):
        self.calls = []

    def nvmlInit(self):
        self.calls.append("init")

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("handle", i)

    def nvmlDeviceGetMemoryInfo(self, handle):
        i = handle[1]
        return type("Memory", (), {"used": (i + 1) * 512 * 2 ** 20, "total": 80 * 2 ** 30})()

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA H100" if handle[1] == 0 else "Orin"  # old pynvml: bytes, new: str


def test_gpu_memory_through_nvml(monkeypatch, fake_path):
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    out = core.gpu_memory()
    assert out == {"available": True, "source": "nvml", "gpus": [
        {"index": 0, "name": "NVIDIA H100", "used_mb": 512.0, "total_mb": 81920.0},
        {"index": 1, "name": "Orin", "used_mb": 1024.0, "total_mb": 81920.0}]}
    assert fake.calls == ["init", "shutdown"]


def test_gpu_memory_falls_back_to_nvidia_smi(monkeypatch, fake_path):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    log = fake_path / "args"
    _fake_exe(fake_path, "nvidia-smi", f'echo "$@" > {log}\nprintf "0, NVIDIA H100 80GB HBM3, 1234, 81559\\n'
                                        f'1, NVIDIA H100 80GB HBM3, 0, 81559\\n"\n')
    out = core.gpu_memory()
    assert out == {"available": True, "source": "nvidia-smi", "gpus": [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "used_mb": 1234.0, "total_mb": 81559.0},
        {"index": 1, "name": "NVIDIA H100 80GB HBM3", "used_mb": 0.0, "total_mb": 81559.0}]}
    assert log.read_text().split() == ["--query-gpu=index,name,memory.used,memory.total",
                                       "--format=csv,noheader,nounits"]


def test_gpu_memory_reports_a_failing_nvidia_smi(monkeypatch, fake_path):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    _fake_exe(fake_path, "nvidia-smi", 'echo "NVIDIA-SMI has failed because it could not communicate" >&2\nexit 9\n')
    out = core.gpu_memory()
    assert out["available"] is False and "nvidia-smi failed" in out["reason"]


def test_gpu_memory_without_nvml_or_nvidia_smi(monkeypatch, fake_path):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    out = core.gpu_memory()
    assert out["available"] is False and "no NVML" in out["reason"] and "no nvidia-smi" in out["reason"]


TEGRA_LINE = ("RAM 2448/7765MB (lfb 1x4MB) SWAP 0/3882MB CPU [12%@1420,8%@1420,off,off,9%@1420,5%@1420] "
              "GR3D_FREQ 0% cpu@47C gpu@45.5C VDD_IN 4447mW/4447mW")


def test_tegrastats_one_line(fake_path):
    log = fake_path / "args"
    _fake_exe(fake_path, "tegrastats", f'echo "$@" > {log}\nwhile true; do echo "{TEGRA_LINE}"; {SLEEP} 0.05; done\n')
    out = core.tegrastats_sample(interval_ms=50, timeout_s=10)
    assert out == {"available": True, "line": TEGRA_LINE}
    assert log.read_text().split() == ["--interval", "50"]


def test_tegrastats_that_prints_nothing(fake_path, tmp_path):
    """Exits at once without a line, or stays silent: either way a reason, and the silent one is
    stopped (terminated before it could finish its 30 s and leave a mark), not waited for."""
    _fake_exe(fake_path, "tegrastats", "exit 0\n")
    assert core.tegrastats_sample(timeout_s=5.0) == {"available": False, "reason": "tegrastats printed nothing"}
    finished = tmp_path / "finished"
    silent = fake_path / "tegrastats"
    silent.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(30)\nopen({str(finished)!r}, 'w').close()\n")
    assert core.tegrastats_sample(timeout_s=0.5) == {"available": False, "reason": "tegrastats printed nothing"}
    assert not finished.exists()


def test_not_a_jetson(fake_path):
    out = core.tegrastats_sample()
    assert out["available"] is False and "not found" in out["reason"]
