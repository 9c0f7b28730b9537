"""Smoke tests of `latent-replay bench`: every figure present, positive and consistent. No test
asserts a speed (the machine is shared); only that the numbers hang together."""
from __future__ import annotations

import argparse
import json
import math

import pytest

from latent_replay.bench import core, run
from latent_replay.bench import torch_baseline as tb


def _args(tmp_path, layers: str, storage: str = "fp32,uint8") -> argparse.Namespace:
    """The command's own parser, so every option keeps its default."""
    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    return parser.parse_args(["--quick", "--json", str(tmp_path / "bench.json"), "--layers", layers,
                              "--storage", storage, "--out", str(tmp_path)])


def _pos(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _check_latency(lat: dict) -> None:
    assert lat["count"] >= run.QUICK["iters"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]


def check_results(r: dict, layers, storages) -> None:
    has_torch = tb.available()[0]
    d = r["derived"]
    assert d["errors"] == []
    assert _pos(r["gemm"]["macs_per_s"])
    for layer in layers:
        front, df = r["front"][layer], d["front"][layer]
        ours = front["ours"]
        _check_latency(ours["cpu"]["latency_b1_s"])
        for b in map(str, run.QUICK["batches"]):
            t = ours["cpu"]["throughput"][b]
            assert _pos(t["fps"]) and math.isclose(t["fps"], t["batch"] / t["seconds_median"])
            frac = df["mac_rate"][b]["fraction_of_gemm"]
            assert 0 < frac < 1.5
            assert math.isclose(frac, df["front_macs_per_frame"] * t["batch"] / t["seconds_median"]
                                / r["gemm"]["macs_per_s"])
        assert _pos(ours["peak_rss_mb"])
        assert "skipped" in ours["cuda"] or _pos(ours["cuda"]["latency_b1_s"]["p50"])
        if has_torch:
            theirs = front["torch"]
            _check_latency(theirs["latency_b1_s"])
            assert math.isclose(df["latency_b1_p50_ratio"], ours["cpu"]["latency_b1_s"]["p50"]
                                / theirs["latency_b1_s"]["p50"])
        batch, db = r["batch"][layer], d["batch"][layer]
        for storage in storages:
            o = batch[storage]
            p = o["pool"]
            assert p["total_bytes"] == p["patterns"] * p["bytes_per_pattern"] + p["labels_bytes"] + p["scale_bytes"]
            assert p["bytes_per_pattern"] == p["analytic_bytes_per_pattern"]
            assert p["scale_bytes"] > 0 if storage == "uint8" else p["scale_bytes"] == 0
            assert db[storage]["pool_bytes_consistent"]
            for key in ("front_s", "train_s", "batch_s", "peak_rss_mb"):
                assert _pos(o[key]), key
            assert math.isclose(o["batch_s"], o["front_s"] + o["train_s"])
            _check_latency_like(o["step_s"])
            assert o["iterations"] == 2 and o["new_per_mb"] + o["replay_per_mb"] == 128
            assert 0 < db[storage]["mac_rate_batch"]["fraction_of_gemm"] < 1.5
            assert 0 < db[storage]["mac_rate_step"]["fraction_of_gemm"] < 1.5
            assert all(v >= -0.05 for k, v in o["breakdown"].items() if k != "other_s")
            if has_torch:
                t = batch["torch"]
                assert math.isclose(db[storage]["batch_time_ratio"], o["batch_s"] / t["batch_s"])
                assert math.isclose(db[storage]["peak_rss_ratio"], o["peak_rss_mb"] / t["peak_rss_mb"])
                assert math.isclose(db[storage]["step_time_ratio"], o["step_s"]["p50"] / t["step_s"]["p50"])
        if "fp32" in storages and "uint8" in storages:
            u = db["uint8_vs_fp32"]
            assert u["pattern_bytes_ratio"] == 4
            assert math.isclose(u["batch_time_ratio"], batch["uint8"]["batch_s"] / batch["fp32"]["batch_s"])
        if has_torch:
            t = batch["torch"]
            assert _pos(t["batch_s"]) and _pos(t["peak_rss_mb"]) and 0 < t["front_s"] < t["batch_s"]
            assert 0 < db["torch"]["mac_rate_batch"]["fraction_of_gemm"] < 1.5
        else:
            assert "skipped" in batch["torch"]
    assert len(d["targets"]) >= 4
    for t in d["targets"]:
        assert t["met"] in (True, False, None)
        if t["met"] is not None:
            assert isinstance(t["value"], float)


def _check_latency_like(p: dict) -> None:
    assert 0 < p["p50"] <= p["p90"] <= p["p99"]


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


def test_percentiles_ordered():
    p = core.percentiles([3.0, 1.0, 2.0, 10.0])
    assert p["p50"] <= p["p90"] <= p["p99"] <= p["max"] and p["min"] == 1.0 and p["count"] == 4


def test_cli_registers_bench():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    run.add_bench_command(sub)
    args = parser.parse_args(["bench", "--quick", "--layers", "pool6", "--storage", "uint8", "--threads", "1"])
    assert args.quick and args.layers == "pool6" and args.threads == 1 and args.handler is run.command


def test_bad_layer_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="unknown latent layer"):
        run.benchmark(_args(tmp_path, "conv9"))
