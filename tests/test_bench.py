"""`latent-replay bench`: the quick run's figures against what is known without measuring (the
configuration, analytic MAC counts, parameter counts and pattern sizes), the comparison's sides
against each other (they train on the same data: the same algorithm must learn the same output
layer, whatever engine or framework runs it), the derived ratios and targets on hand-made figures,
the arguments, the GPU front's error reporting, and the GPU memory / tegrastats probes with fake
NVML, nvidia-smi and tegrastats. No test asserts a speed or a fraction of the GEMM rate (the machine
is shared): `latent-replay bench` prints those.

The onnxruntime-training row runs where LATENT_REPLAY_TRAINING_PYTHON names a Python with
onnxruntime-training 1.19.2 (e.g. a second virtual environment), or where this interpreter has it;
elsewhere the tests check that it is reported as not measured, with the reason."""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys

import numpy as np
import pytest

from latent_replay.apps.bench import command as run, data, probes as core, report, workers
from latent_replay.apps.bench import torch_baseline as tb
import mobilenet_spec as spec

TRAINING_PYTHON = os.environ.get("LATENT_REPLAY_TRAINING_PYTHON")


def _args(tmp_path, layers: str, storage: str = "fp32,uint8", threads: str = "2") -> argparse.Namespace:
    """The command's own parser, so every option keeps its default."""
    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    argv = ["--quick", "--json", str(tmp_path / "bench.json"), "--layers", layers, "--storage", storage,
            "--out", str(tmp_path), "--threads", threads]
    if TRAINING_PYTHON:
        argv += ["--training-python", TRAINING_PYTHON]
    return parser.parse_args(argv)


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


def _trained_parameters(layer: str, classes: int = workers.CLASSES) -> int:
    """What one later batch trains, from the spec: AR1*-free every conv weight and BRN scale/shift
    of the back and the output layer; CWR* (pool6) the output layer only."""
    _, back = spec.split(layer)
    return sum(int(np.prod(spec.WEIGHT_SHAPES[l.name])) + 2 * l.out_channels for l in back) + 1024 * classes


def _provider_checked(ours: dict) -> None:
    """A GPU provider this onnxruntime lists must have been measured; only an unlisted one is skipped."""
    import onnxruntime as ort

    for provider, key in (("CUDAExecutionProvider", "cuda"), ("TensorrtExecutionProvider", "tensorrt")):
        if provider in ort.get_available_providers():
            assert "error" not in ours[key] and "skipped" not in ours[key], ours[key]
            _check_latency(ours[key]["latency_b1_s"], workers.QUICK["iters"])
        else:
            assert set(ours[key]) == {"skipped"}, ours[key]


def _plan():
    q = workers.QUICK
    groups = (q["n_new"] + q["memory"]) // 128
    new = q["n_new"] // groups
    plan = (new, 128 - new, q["n_new"] // new)
    assert plan == (21, 107, 2)  # the NICv2-391 composition (docs/algorithms.md)
    return plan


def _check_front(r: dict, layer: str) -> None:
    q, df = workers.QUICK, r["derived"]["front"][layer]
    front = r["front"][layer]
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
    if tb.available()[0]:
        _check_latency(front["torch"]["latency_b1_s"], q["iters"])


def _check_batch(r: dict, layer: str, storages) -> None:
    """Ours per pool storage: the plan, the pool's bytes from the spec, the MAC count."""
    q, plan = workers.QUICK, _plan()
    batch, db = r["batch"][layer], r["derived"]["batch"][layer]
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
        assert o["trained_parameters"] == _trained_parameters(layer)
    if "fp32" in storages and "uint8" in storages:
        u = db["uint8_vs_fp32"]
        assert u["pattern_bytes_ratio"] == 4
        assert u["pool_bytes_ratio"] == pytest.approx(
            (q["memory"] * (4 * values + 8)) / (q["memory"] * (values + 8) + 4 * spec.LATENT_SHAPES[layer][0]))
        # the same data in both pools: the same batch, up to the uint8 rounding of the memory
        assert data.fingerprint_distance(batch["fp32"]["head_fingerprint"], batch["uint8"]["head_fingerprint"]) < 0.05


SAME_ALGORITHM = 1e-3  # ~1e-7 measured: the same fp32 computation in another engine or framework


def _check_compare_rows(r: dict, threads: int, layer: str) -> None:
    """Every side of the comparison trained the same batch: the same plan, front work, parameters
    and memory, and -- for the same algorithm -- the same output layer as the step engine."""
    q, plan = workers.QUICK, _plan()
    rows = r["compare"][str(threads)]["layers"][layer]
    d = r["derived"]["compare"][str(threads)][layer]
    assert set(rows) == set(report.COMPARE_ROWS)
    assert r["rounds"] == 1 and all(row["rounds_batch_s"] == [row["batch_s"]] for row in rows.values()
                                    if "skipped" not in row)
    if threads == r["threads"]:  # the same measurement, not a second one
        assert {k: v for k, v in rows["step"].items() if k != "rounds_batch_s"} == r["batch"][layer]["fp32"]
    assert rows["step"]["engine"] == "step"
    assert rows["port"] == {"skipped": run.skipped_row("port", layer, True)}
    assert ("skipped" in rows["brn"]) == (layer == "pool6")
    training = r["training"]
    assert ("skipped" in rows["ort_training"]) == ("skipped" in training)
    if "skipped" in training:
        assert training["skipped"] == run.NO_TRAINING == rows["ort_training"]["skipped"]
    measured = {k: v for k, v in rows.items() if "skipped" not in v}
    for name, row in measured.items():
        assert (row["new_per_mb"], row["replay_per_mb"], row["iterations"]) == plan, name
        assert row["front_frames"] == q["n_new"], name  # the front once per frame on every side
        assert row["trained_parameters"] == _trained_parameters(layer), name
        assert len(row["head_fingerprint"]) == workers.CLASSES
        assert len(row["load_average_1m"]) == 2  # the machine's load around the row, shown beside it
        e = d[name]
        cost = report.net.split_cost(layer)
        assert e["mac_rate_batch"]["macs"] == q["n_new"] * cost.front_macs + \
            plan[2] * 128 * workers.BACK_TRAIN_FACTOR * cost.back_macs
        assert e["batch_speedup"] == pytest.approx(row["batch_s"] / rows["step"]["batch_s"])
        assert e["step_speedup"] == pytest.approx(row["batch_step_s"]["p50"] / rows["step"]["batch_step_s"]["p50"])
        if name in ("ort_training", "brn") or layer == "pool6":  # the same algorithm: BRN, or no normalization
            assert e["fingerprint_distance"] < (0.05 if name == "bn_bf16" else SAME_ALGORITHM), (name, e)
    if "bn_fp32" in measured and "bn_bf16" in measured:  # the same model, bf16 rounding apart
        assert data.fingerprint_distance(measured["bn_fp32"]["head_fingerprint"],
                                         measured["bn_bf16"]["head_fingerprint"]) < 0.05
        if layer != "pool6":  # nn.BatchNorm2d is not BRN: close (same data, same net), not equal
            assert SAME_ALGORITHM < d["bn_fp32"]["fingerprint_distance"] < 0.5
        assert measured["bn_bf16"]["bf16"] and measured["bn_bf16"]["channels_last"]


def check_results(r: dict, layers, storages) -> None:
    """The quick benchmark's JSON against what is known independently of the measurement."""
    d = r["derived"]
    assert d["errors"] == []
    assert _pos(r["gemm"]["macs_per_s"])
    assert sorted(r["compare"]) == sorted(str(t) for t in r["thread_counts"]) and r["threads"] == r["thread_counts"][0]
    for layer in layers:
        _check_front(r, layer)
        _check_batch(r, layer, storages)
        for t in r["thread_counts"]:
            assert _pos(r["compare"][str(t)]["gemm"]["macs_per_s"])
            if tb.available()[0]:
                _check_compare_rows(r, t, layer)
    assert len(d["targets"]) == 3 * len(r["thread_counts"]) + 3 + (5 if "conv5_4/dw" in layers else 4)
    for t in d["targets"]:
        assert t["met"] in (True, False, None)
        if t["met"] is not None:
            assert isinstance(t["value"], float)
        else:
            assert t["not_measured"]


def _run(tmp_path, layers: str, capsys, threads: str = "2") -> dict:
    args = _args(tmp_path, layers, threads=threads)
    assert run.command(args) == 0
    out = capsys.readouterr().out
    assert "INCREMENTAL BATCH" in out and "COMPARISON" in out and "TARGETS" in out
    r = json.loads((tmp_path / "bench.json").read_text())
    check_results(r, layers.split(","), ["fp32", "uint8"])
    return r


def test_bench_quick_pool6(tmp_path, capsys):
    """The light variant: the quick benchmark at pool6 only (CWR*, head-only training), all figures."""
    r = _run(tmp_path, "pool6", capsys)
    assert r["quick"] and r["layers"] == ["pool6"] and r["thread_counts"] == [2]
    # conv5_4/dw was not measured: its targets say so instead of inventing a value
    assert all(t["met"] is None for t in r["derived"]["targets"])


@pytest.mark.slow
def test_bench_quick_default_layers(tmp_path, capsys):
    """`latent-replay bench --quick` as a user runs it (conv5_4/dw and pool6)."""
    r = _run(tmp_path, "conv5_4/dw,pool6", capsys)
    measured = {t["target"] for t in r["derived"]["targets"] if t["met"] is not None}
    # without PyTorch its comparisons (speed, peak RSS, the front's batch-1 latency) are not measured
    expected = (6 if tb.available()[0] else 3) + (0 if "skipped" in r["training"] else 1)
    assert len(measured) >= expected


class FakeWorkers:
    """Stands in for `run_worker`: records every call and answers with made-up figures."""

    def __init__(self):
        self.calls = []

    def __call__(self, spec, workdir, python=None):
        self.calls.append(dict(spec, python=python))
        kind, t = spec["kind"], spec["threads"]
        if kind == "gemm":
            return {"macs_per_s": 1e10 * t}
        if kind == "export":
            return {"artifacts": {layer: f"/trained/{layer}" for layer in spec["layers"]}}
        if kind in ("ours_front", "torch_front"):
            return _made_up_results()["front"]["conv5_4/dw"]["ours" if kind == "ours_front" else "torch"]
        row = dict(_row(30.0 / t + 0.01 * len(self.calls), 0.5 / t), versions={}, trained_parameters=1)
        if kind == "ours_batch":
            return dict(row, engine=spec["engine"] if "engine" in spec else "step", storage=spec["storage"],
                        pool=_pool(4096, 0))
        return dict(row, variant=spec["variant"])


def test_orchestration_at_two_thread_counts(tmp_path, monkeypatch):
    """What runs where: the figures at the first thread count, the comparison at each in two
    rounds (the second in reverse order; the faster round counts); the step engine's fp32 batch
    reused as its first comparison round at the first count; the ORT-training worker run by the
    training Python on the artifacts it exported; the port only in full mode, the BRN row not above
    pool6; the scaling targets judged."""
    fake = FakeWorkers()
    monkeypatch.setattr(run, "run_worker", fake)
    # the workers are fakes: PyTorch itself is never imported, so the orchestration is checked with
    # the PyTorch rows whether or not torch is installed here
    monkeypatch.setattr(tb, "available", lambda: (True, "torch (fake)"))
    monkeypatch.setattr(run, "_export_step", lambda layers, tmp, width: {layer: f"/step/{layer}" for layer in layers})
    monkeypatch.setattr(run, "training_python", lambda path: {"python": "/venv-training/python",
                                                              "onnxruntime": "1.19.2", "python_version": "3.11"})
    args = _args(tmp_path, "conv5_4/dw,pool6", threads="2,1")
    args.rounds = 2
    r = run.benchmark(args, log=lambda msg: None)
    assert r["thread_counts"] == [2, 1] and list(r["compare"]) == ["2", "1"] and r["rounds"] == 2
    calls = [(c["kind"], c.get("layer"), c.get("storage"), c.get("engine") or c.get("variant"), c["threads"],
              c["python"]) for c in fake.calls]
    assert calls[0] == ("export", None, None, None, 1, "/venv-training/python")
    assert [c for c in calls if c[0] == "gemm"] == [("gemm", None, None, None, t, None) for t in (2, 1)]
    for layer in ("conv5_4/dw", "pool6"):
        assert [c[2:] for c in calls if c[:2] == ("ours_batch", layer) and c[3] != "ort-training"] == \
            [("fp32", None, 2, None), ("uint8", None, 2, None), ("fp32", "step", 2, None)] + \
            [("fp32", "step", 1, None)] * 2
        assert [c[3:] for c in calls if c[:2] == ("ours_batch", layer) and c[3] == "ort-training"] == \
            [("ort-training", t, "/venv-training/python") for t in (2, 2, 1, 1)]
        variants = ["bn_fp32", "bn_bf16"] + (["brn"] if layer != "pool6" else [])
        assert [c[3:5] for c in calls if c[:2] == ("torch_batch", layer)] == \
            [(v, t) for t in (2, 1) for v in variants + variants[::-1]]
        for t in ("2", "1"):
            rows = r["compare"][t]["layers"][layer]
            assert rows["port"] == {"skipped": run.skipped_row("port", layer, True)}
            for name in ("step", "ort_training", "bn_fp32"):  # the made-up first round is the faster one
                first, second = rows[name]["rounds_batch_s"]
                assert first < second and rows[name]["batch_s"] == first
        step = dict(r["compare"]["2"]["layers"][layer]["step"])
        assert step.pop("rounds_batch_s")[0] == r["batch"][layer]["fp32"]["batch_s"]
        assert step == r["batch"][layer]["fp32"]
        assert r["compare"]["1"]["layers"][layer]["step"]["engine"] == "step"
    ort_calls = [c for c in fake.calls if c.get("engine") == "ort-training"]
    assert {c["artifacts"] for c in ort_calls} == {"/trained/conv5_4/dw", "/trained/pool6"}
    scaling = [t for t in r["derived"]["targets"] if "no lower than" in t["target"]]
    assert len(scaling) == 3 and all(t["met"] is not None for t in scaling)


def test_best_round():
    a, b = {"batch_s": 3.0}, {"batch_s": 2.0}
    assert run.best_round([a, b]) == {"batch_s": 2.0, "rounds_batch_s": [3.0, 2.0]}
    failed = {"error": "worker failed"}
    assert run.best_round([a, failed]) is failed  # a failed round is never hidden by a good one


def test_memory_slots_follow_the_pool():
    """The PyTorch side places the j-th generated memory pattern where the runtime's pool put it."""
    from latent_replay.runtime.replay import ReplayPool

    shape, memory = (3, 2, 2), 250
    pool = ReplayPool(memory, shape, "fp32", workers.SEED)
    data.fill_pool(pool, shape, memory)
    slots = data.memory_slots(memory)
    assert sorted(slots.tolist()) == list(range(memory)) and not np.array_equal(slots, np.arange(memory))
    x, y = pool.gather(slots)
    assert np.array_equal(x, np.concatenate([c[0] for c in data.memory_chunks(shape, memory)]))
    assert np.array_equal(y, np.concatenate([c[1] for c in data.memory_chunks(shape, memory)]))


def test_fingerprint_distance():
    head = np.random.default_rng(0).standard_normal((5, 16))
    assert data.fingerprint_distance(data.fingerprint(head), data.fingerprint(head)) == 0
    assert data.fingerprint_distance(data.fingerprint(head), data.fingerprint(1.1 * head)) == pytest.approx(0.1)


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
    args = parser.parse_args(["bench", "--quick", "--layers", "pool6", "--storage", "uint8", "--threads", "1",
                              "--training-python", "/opt/py"])
    assert args.quick and args.layers == "pool6" and args.threads == "1" and args.handler is run.command
    assert args.training_python == "/opt/py"
    assert parser.parse_args(["bench"]).threads == "2,0"  # 2 threads and all cores: how each side scales


def test_bad_layer_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="unknown latent layer"):
        run.benchmark(_args(tmp_path, "conv9"))


def test_thread_counts():
    cores = core.cpu_count()
    assert run.parse_threads("2,0") == ([2] if cores == 2 else [2, cores])
    assert run.parse_threads("0,1,1") == ([cores] if cores == 1 else [cores, 1])
    for bad in ("", "two", "2,-1", "1.5"):
        with pytest.raises(SystemExit, match="--threads"):
            run.parse_threads(bad)



def test_rounds_must_be_positive(tmp_path, capsys):
    assert run.main(["--quick", "--layers", "pool6", "--rounds", "0", "--out", str(tmp_path)]) == 2
    assert "--rounds must be >= 1, got 0" in capsys.readouterr().err


def test_training_python_is_checked_before_anything_runs(tmp_path, capsys):
    missing = str(tmp_path / "no-such-python")
    assert run.main(["--quick", "--layers", "pool6", "--training-python", missing, "--out", str(tmp_path)]) == 2
    assert f"--training-python {missing}: not an executable file" in capsys.readouterr().err
    assert not (tmp_path / "bench_latency_memory.json").exists()
    has_training = "skipped" not in run.training_python(None)
    if has_training:  # this interpreter runs the ORT-training engine: it is its own training Python
        assert run.training_python(sys.executable)["python"] == sys.executable
    else:  # onnxruntime, not onnxruntime-training: refused with the reason, and without the option: not measured
        with pytest.raises(SystemExit, match="cannot run the ORT-training engine: .*onnxruntime-training"):
            run.training_python(sys.executable)
        assert run.training_python(None) == {"skipped": run.NO_TRAINING}


# ---- derived figures on hand-made results -------------------------------------------------------
def _lat(p50: float) -> dict:
    return {"p50": p50, "p90": p50, "p99": p50, "mean": p50, "min": p50, "max": p50, "count": 1}


def _pool(bytes_per_pattern: int, scale: int) -> dict:
    return {"patterns": 10, "bytes_per_pattern": bytes_per_pattern, "labels_bytes": 80, "scale_bytes": scale,
            "total_bytes": 10 * bytes_per_pattern + 80 + scale}


HEAD = [1.0] * workers.CLASSES


def _row(batch_s: float, step_s: float, rss: float = 1000.0, front_frames: int = 300, head=HEAD) -> dict:
    return {"method": "ar1free", "n_new": 300, "memory": 1500, "epochs": 4, "front_frames": front_frames,
            "iterations": 56, "new_per_mb": 21, "replay_per_mb": 107, "step_s": _lat(step_s),
            "batch_step_s": _lat(step_s), "front_s": 1.0, "train_s": batch_s - 1.0, "batch_s": batch_s,
            "peak_rss_mb": rss, "head_fingerprint": list(head), "breakdown": {"engine_steps_s": 1, "other_s": 0}}


def _made_up_results() -> dict:
    """Figures for conv5_4/dw with round numbers, so that every derived value is known by hand:
    at 2 threads the step engine is 2.2x faster than onnxruntime-training, 1.2x than PyTorch fp32
    and 0.9x PyTorch bf16; at 16 threads 2.5x, 1.26x and 0.8x."""
    layer = "conv5_4/dw"
    ours_batch = dict(_row(30.0, 0.5), pool=_pool(131072, 0))
    skipped = {"skipped": "not here"}
    return {
        "threads": 2, "thread_counts": [2, 16], "machine": {"cores_usable": 16},
        "gemm": {"macs_per_s": 1e11},
        "front": {layer: {
            "ours": {"cpu": {"latency_b1_s": _lat(0.002), "throughput": {"32": {"batch": 32, "seconds_median": 0.08,
                                                                                 "fps": 400.0}}},
                     "peak_rss_mb": 500.0, "cuda": {"skipped": "not listed"}, "tensorrt": {"skipped": "not listed"}},
            "torch": {"latency_b1_s": _lat(0.005), "throughput": {"32": {"batch": 32, "seconds_median": 0.16,
                                                                         "fps": 200.0}},
                      "peak_rss_mb": 400.0}}},
        "batch": {layer: {"fp32": ours_batch,
                          "uint8": dict(ours_batch, batch_s=31.5, peak_rss_mb=900.0, pool=_pool(32768, 2048))}},
        "compare": {
            "2": {"gemm": {"macs_per_s": 1e11}, "layers": {layer: {
                "step": ours_batch, "ort_training": _row(66.0, 1.2, head=[1.0 + 1e-7] * workers.CLASSES),
                "bn_fp32": _row(36.0, 0.55, rss=1250.0, head=[1.1] * workers.CLASSES), "bn_bf16": _row(27.0, 0.4),
                "brn": skipped, "port": _row(90.0, 1.5, front_frames=1176)}}},
            "16": {"gemm": {"macs_per_s": 4e11}, "layers": {layer: {
                "step": _row(10.0, 0.2), "ort_training": _row(25.0, 0.4), "bn_fp32": _row(12.6, 0.25),
                "bn_bf16": _row(8.0, 0.15), "brn": skipped, "port": skipped}}}},
    }


def test_derived_ratios_and_targets_on_known_figures():
    r = _made_up_results()
    report.derive(r)
    d = r["derived"]
    front_macs, back_macs = _front_macs("conv5_4/dw"), _back_macs("conv5_4/dw")
    assert round(front_macs / 1e6, 1) == 126.1  # docs/algorithms.md
    f = d["front"]["conv5_4/dw"]
    assert f["latency_b1_p50_ratio"] == pytest.approx(0.4)
    assert f["throughput_ratio"] == {"32": pytest.approx(2.0)}
    assert f["peak_rss_ratio"] == pytest.approx(1.25)
    assert f["mac_rate"]["32"]["fraction_of_gemm"] == pytest.approx(front_macs * 32 / 0.08 / 1e11)
    b = d["batch"]["conv5_4/dw"]
    train_macs = 56 * 128 * 3 * back_macs
    assert b["fp32"]["mac_rate_batch"]["fraction_of_gemm"] == pytest.approx((300 * front_macs + train_macs) / 30 / 1e11)
    assert b["uint8_vs_fp32"]["pattern_bytes_ratio"] == 4
    assert b["uint8_vs_fp32"]["pool_bytes_ratio"] == pytest.approx((1310720 + 80) / (327680 + 80 + 2048))
    assert b["uint8_vs_fp32"]["batch_time_ratio"] == pytest.approx(1.05)
    c2, c16 = d["compare"]["2"]["conv5_4/dw"], d["compare"]["16"]["conv5_4/dw"]
    assert set(c2) == {"step", "ort_training", "bn_fp32", "bn_bf16", "port"}  # a skipped row has no figures
    assert (c2["ort_training"]["batch_speedup"], c2["ort_training"]["step_speedup"]) == (pytest.approx(2.2),
                                                                                         pytest.approx(2.4))
    assert c2["bn_fp32"]["peak_rss_ratio"] == pytest.approx(0.8)
    assert c2["ort_training"]["fingerprint_distance"] == pytest.approx(1e-7)
    assert c2["bn_fp32"]["fingerprint_distance"] == pytest.approx(0.1)
    assert c2["port"]["mac_rate_batch"]["macs"] == 1176 * front_macs + train_macs  # the port's front every epoch
    assert c16["bn_bf16"]["mac_rate_batch"]["fraction_of_gemm"] == pytest.approx((300 * front_macs + train_macs) / 8 / 4e11)
    met = {t["target"]: (t["value"], t["met"]) for t in d["targets"]}
    speedup = "conv5_4/dw incremental batch, {} threads: step engine faster than {}"
    assert met[speedup.format(2, "onnxruntime-training")] == (pytest.approx(2.2), True)
    assert met[speedup.format(2, "PyTorch fp32 with fused BN")] == (pytest.approx(1.2), False)
    assert met[speedup.format(2, "PyTorch bf16 autocast + channels_last")] == (pytest.approx(0.9), False)
    assert met[speedup.format(16, "PyTorch fp32 with fused BN")] == (pytest.approx(1.26), True)
    scaling = "conv5_4/dw: speed-up over {} at 16 threads (all cores) no lower than at 2"
    assert met[scaling.format("onnxruntime-training")] == (pytest.approx(2.5 / 2.2), True)
    assert met[scaling.format("PyTorch fp32 with fused BN")] == (pytest.approx(1.05), True)
    assert met[scaling.format("PyTorch bf16 autocast + channels_last")] == (pytest.approx(0.8 / 0.9), False)
    assert met["conv5_4/dw incremental batch: peak RSS step engine / PyTorch fp32"] == (pytest.approx(0.8), True)
    assert met["front conv5_4/dw batch 1 p50: speed-up over PyTorch eager"] == (pytest.approx(2.5), True)
    frac = front_macs * 32 / 0.08 / 1e11
    assert met["front conv5_4/dw batch 32: fraction of the GEMM MAC rate"] == (pytest.approx(frac), frac >= 0.3)
    assert d["errors"] == []
    text = report.table(dict(r, quick=False, device="cpu", tegrastats={"reason": "none"}, training={"skipped": "x"},
                             machine={"cpu": "test", "cores_usable": 16, "cores_total": 16, "memory_gib": 1,
                                      "simd": []}))
    assert text.count("COMPARISON conv5_4/dw") == 2 and "NOT MET" in text


def test_scaling_target_needs_two_thread_counts():
    r = _made_up_results()
    r["thread_counts"] = [2]
    del r["compare"]["16"]
    report.derive(r)
    scaling = [t for t in r["derived"]["targets"] if "no lower than" in t["target"]]
    assert len(scaling) == 3 and all(t["met"] is None and "one thread count" in t["not_measured"] for t in scaling)


def test_an_error_anywhere_is_reported_once_and_fails_the_command():
    r = _made_up_results()
    r["front"]["conv5_4/dw"]["ours"]["cuda"] = {"error": "CUDAExecutionProvider is listed but failed"}
    failed = {"error": "worker failed"}
    r["compare"]["2"]["layers"]["conv5_4/dw"]["bn_bf16"] = failed
    r["compare"]["16"]["layers"]["conv5_4/dw"]["bn_bf16"] = failed  # the same failure reached twice
    report.derive(r)
    assert r["derived"]["errors"] == ["front.conv5_4/dw.ours.cuda: CUDAExecutionProvider is listed but failed",
                                      "compare.2.layers.conv5_4/dw.bn_bf16: worker failed"]


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


def test_cuda_variants_switch_tf32_and_graphs_one_at_a_time(tmp_path, monkeypatch):
    """With --device cuda the step engine's batch is also measured in exact fp32 and without CUDA
    graphs (each worker gets its switches in its environment); the default variant is the batch
    already measured, and the report shows every variant."""
    fake = FakeWorkers()
    monkeypatch.setattr(run, "run_worker", fake)
    measured = dict(_row(0.2, 0.003), cuda_graph=True, tf32=True)
    out = run._cuda_variants({"threads": 1, "workdir": str(tmp_path)}, "conv5_4/dw", "/step/x", {"fp32": measured},
                             log=lambda msg: None)
    assert out["tf32-graphs"] is measured
    assert [(c["variant"], c["env"], c["storage"], c["artifacts"]) for c in fake.calls] == [
        ("fp32-graphs", {"LATENT_REPLAY_CUDA_TF32": "0"}, "fp32", "/step/x"),
        ("tf32-no-graphs", {"LATENT_REPLAY_CUDA_GRAPH": "0"}, "fp32", "/step/x"),
        ("fp32-no-graphs", {"LATENT_REPLAY_CUDA_TF32": "0", "LATENT_REPLAY_CUDA_GRAPH": "0"}, "fp32", "/step/x")]
    out["fp32-no-graphs"] = {"error": "worker failed"}
    lines = report._cuda_table({"conv5_4/dw": out})
    assert len(lines) == 5 and "worker failed" in lines[4]
    assert lines[1].split()[:3] == ["conv5_4/dw", "tf32-graphs", "0.200"] and lines[1].split()[-2:] == ["yes", "yes"]


def test_width_reaches_every_worker_and_the_cost_model(tmp_path, monkeypatch):
    """`bench --width 0.5`: every worker measures the width-0.5 network (its spec says so, and the
    exported weights are that width), and the MAC rates are computed with its multiply-adds (counted
    here from the independent Keras channel table, 16..512 channels)."""
    fake = FakeWorkers()
    exported = []
    monkeypatch.setattr(run, "run_worker", fake)
    monkeypatch.setattr(run, "_export_step", lambda layers, tmp, width: exported.append(width) or
                        {layer: f"/step/{layer}" for layer in layers})
    monkeypatch.setattr(run, "training_python", lambda path: {"skipped": "no training python"})
    args = _args(tmp_path, "pool6")
    args.width = 0.5
    r = run.benchmark(args, log=lambda msg: None)
    assert exported == [0.5] and r["width"] == 0.5
    assert {c.get("width") for c in fake.calls if c["kind"] != "export"} == {0.5}
    assert workers.bench_weights(0.5).convs["conv6/sep"].weight.shape == (512, 512, 1, 1)
    layers = spec.keras_layers(0.5)  # MACs do not depend on the padding rule
    macs = sum(int(np.prod(l.weight_shape)) * l.out_hw ** 2 for l in layers) + 512 * 4 * 4
    assert r["derived"]["front"]["pool6"]["front_macs_per_frame"] == macs
