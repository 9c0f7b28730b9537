"""A shortened soak of `latent-replay stream` (benchmarks/stream_soak.py runs the 50,000-frame one
whose figures the README gives): 8,000 headless frames of the synthetic camera with a teaching every
500 frames, in a real subprocess. After the warm-up (the replay memory full) the resident memory
must not grow by 5% and the loop must not get slower by 10% at the 99th percentile.

The drift is asserted on the CPU time the live loop's thread spends per frame (with --threads 1 it
holds all of the frame's inference), which other processes on the machine move less than the wall
clock: the median over the 500-frame segments of their p99, last half of the session against the
first half after the warm-up. A real slowdown lifts every later segment; a burst of other work on a
shared machine lifts one or two (the p99 of whole quarters moved by -15% to +18% between identical
runs here, and is printed). The same wall-clock figure is asserted too when the machine was otherwise
idle during the session (load average below the core count), and printed either way. Slow: `python -m pytest -q -m slow
tests/test_crash.py tests/test_soak.py`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from stream_soak import report, soak  # noqa: E402 (after the path)

pytestmark = pytest.mark.slow

FRAMES, TEACH_EVERY, TEACH_FRAMES, MEMORY = 8000, 500, 100, 200  # the memory is full after 2 teachings


def test_a_long_stream_session_neither_grows_nor_slows_down(tmp_path):
    load_before = os.getloadavg()[0]
    f = soak(FRAMES, TEACH_EVERY, TEACH_FRAMES, extra=["--replay-memory", str(MEMORY), "--threads", "1"],
             work=tmp_path)
    print("\n" + report(f))
    assert f["frames"] == FRAMES
    assert f["trainings"] == len(range(TEACH_EVERY, FRAMES - TEACH_FRAMES, TEACH_EVERY))  # every teaching trained
    assert f["warmup_frames"] == 3 * TEACH_EVERY
    assert f["rss_growth"] < 0.05, report(f)
    assert f["hwm_growth"] < 0.05, report(f)
    assert f["cpu_segment_p99_drift"] < 0.10, report(f)
    cores = os.cpu_count() or 1
    if max(load_before, f["load_average"]) < cores:
        assert f["segment_p99_drift"] < 0.10, report(f)
    else:
        print(f"wall-clock drift not asserted: load average {max(load_before, f['load_average']):.1f} on "
              f"{cores} cores (other processes set the wall-clock latency)")
