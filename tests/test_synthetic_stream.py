"""On the synthetic stream, the methods rank as continual learning says they should: naive
fine-tuning forgets (it predicts the last object), CWR* and AR1*-free with latent replay keep the old
objects, and the cumulative upper bound is at or above all. The numbers are printed (pytest -s)."""
from __future__ import annotations

import json

import pytest

from latent_replay.cli import main


def final_accuracies(tmp_path, layer, runs, extra):
    acc = {}
    for name, args in runs.items():
        out = tmp_path / name
        assert main(["run"] + args + ["--latent-layer", layer, "--out", str(out), "--quiet"] + extra) == 0
        acc[name] = json.loads((out / "results.json").read_text())["runs"][0]["batches"][-1]["accuracy"]
    print("\nfinal accuracy on the synthetic stream:", {k: round(v, 3) for k, v in acc.items()})
    return acc


METHODS = {"naive": ["naive", "--replay", "no"], "cwr": ["CWR"], "ar1free": ["AR1F"],
           "cumulative": ["cumulative"]}


def test_miniature_stream_ranks_the_methods(tmp_path):
    """Fast: the default stream with every method at pool6 (only the head trains; AR1*-free at pool6
    is CWR* with latent replay); the front's passes over the frames dominate the time."""
    extra = []
    acc = final_accuracies(tmp_path, "pool6", METHODS, extra)
    assert acc["naive"] <= 0.25  # 10 objects, batches of one: it keeps only the last ones
    assert acc["cwr"] >= acc["naive"] + 0.15
    assert acc["ar1free"] >= acc["naive"] + 0.15
    assert acc["cumulative"] >= max(acc["cwr"], acc["ar1free"]) - 0.05


@pytest.mark.slow
def test_full_synthetic_stream_ranks_the_methods(tmp_path):
    """The README's default run (26 batches, AR1*-free at conv5_4/dw) against the others; minutes."""
    acc = final_accuracies(tmp_path, "conv5_4/dw", {k: v for k, v in METHODS.items() if k != "cwr"}, [])
    acc.update(final_accuracies(tmp_path, "pool6", {"cwr": ["CWR"]}, []))
    assert acc["naive"] <= 0.2
    assert acc["ar1free"] >= acc["naive"] + 0.2
    assert acc["cwr"] >= acc["naive"] + 0.2
    assert acc["cumulative"] >= max(acc["cwr"], acc["ar1free"]) - 0.05
