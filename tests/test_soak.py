"""A shortened soak of `latent-replay stream` (benchmarks/stream_soak.py runs the 50,000-frame one
whose figures the README gives, against the 10% p99-drift target): 8,000 headless frames of the
synthetic camera with a teaching every 500 frames, in a real subprocess. After the warm-up (the
replay memory full) the resident memory must not grow by 5%.

Timing is printed, and only a runaway slowdown fails the test: the loop thread's CPU time per frame,
as the median over the 500-frame segments of their p99 (last half of the session against the first
half after the warm-up), must not grow by 50%. A 10% bound is a benchmark's job, not a test's: on
this shared 2-core machine that figure ranged from -11% to +11% between identical runs (the p99 of
whole quarters from -15% to +18%). Slow: `python -m pytest -q -m slow tests/test_crash.py
tests/test_soak.py`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from stream_soak import report, soak  # noqa: E402 (after the path)

pytestmark = pytest.mark.slow

FRAMES, TEACH_EVERY, TEACH_FRAMES, MEMORY = 8000, 500, 100, 200  # the memory is full after 2 teachings
RUNAWAY = 0.5  # a slowdown no machine noise explains (identical runs: within +-11%)


def test_a_long_stream_session_neither_grows_nor_slows_down(tmp_path):
    f = soak(FRAMES, TEACH_EVERY, TEACH_FRAMES, extra=["--replay-memory", str(MEMORY), "--threads", "1"],
             work=tmp_path)
    print("\n" + report(f))
    assert f["frames"] == FRAMES
    assert f["trainings"] == len(range(TEACH_EVERY, FRAMES - TEACH_FRAMES, TEACH_EVERY))  # every teaching trained
    assert f["warmup_frames"] == 3 * TEACH_EVERY
    assert f["rss_growth"] < 0.05, report(f)
    assert f["hwm_growth"] < 0.05, report(f)
    assert f["cpu_segment_p99_drift"] < RUNAWAY, report(f)
