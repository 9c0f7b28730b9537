#!/usr/bin/env python
"""Soak test of `latent-replay stream`: a long headless session on the built-in synthetic camera with
a teaching event every --teach-every frames, in a real subprocess. Prints the process's resident
memory over time (VmRSS sampled from /proc/PID/status, and its peak VmHWM) and, per segment of
--teach-every frames, the frame latency percentiles (wall clock, from the stream's --log) and the
CPU time the live loop's thread spent per frame; then the figures the README states: peak-RSS growth
after the warm-up and the p99 latency drift.

    python benchmarks/stream_soak.py                          # 50,000 frames, a teaching every 2,000
    python benchmarks/stream_soak.py --frames 6000 --teach-every 500 --json soak.json
    python benchmarks/stream_soak.py -- --method ar1free --latent-layer conv6/dw   # extra stream options

Definitions. Warm-up: the first --warmup frames; by default until the replay memory is full (every
teaching adds its frames to the memory until it holds --replay-memory patterns: 15 teachings of 100
frames for the default 1500) plus one segment -- the memory, and the training minibatches that
replay from it, grow until then by design. RSS growth: (highest RSS sampled after the warm-up -
highest RSS sampled during it) / highest during it. p99 drift: (p99 of the last quarter of the
frames - p99 of the first quarter after the warm-up) / the latter, for the wall-clock latency and
for the loop thread's CPU time per frame; a positive value means the loop got slower. Wall-clock
latency moves with whatever else the machine runs; the CPU time per frame (time.thread_time around
each loop step, measured by a few lines this script runs before the CLI; the package is not
changed) hardly does, and with --threads 1 it holds all of the frame's inference. Repeat before
trusting one run. tests/test_soak.py runs a shorter session and asserts the bounds (RSS growth < 5%,
p99 drift < 10%).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PERIOD = 100  # frames per object of the synthetic source (apps/stream/common.py SYNTHETIC_PERIOD)
OBJECTS = 3  # objects of `--source synthetic`


def rss_kib(pid: int) -> Tuple[int, int]:
    """(VmRSS, VmHWM) of a live process in KiB, from /proc (0, 0 when it is gone)."""
    values = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0])
    except (OSError, ValueError):
        return 0, 0
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def last_frame(log: Path) -> int:
    """The newest frame index in the (buffered) log: the RSS samples' position in the session."""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4096))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return -1
    for line in reversed(tail):
        if line.startswith('{"type": "frame"'):
            try:
                return int(json.loads(line)["frame"])
            except (ValueError, KeyError):
                continue
    return -1


def schedule(frames: int, teach_every: int, teach_frames: int) -> Dict[str, list]:
    """A teaching every `teach_every` frames, labelled with the object the synthetic camera shows."""
    teach = []
    for first in range(teach_every, frames - teach_frames, teach_every):
        teach.append({"frames": [first, first + teach_frames - 1], "label": f"object {(first // PERIOD) % OBJECTS}"})
    return {"teach": teach}


# Run by the stream's interpreter before the CLI: the CPU time of every loop step (frame index, ms).
LOOP_CPU = """
import atexit, os, sys, time
from latent_replay.apps.stream import app
_real, _out = app.StreamApp.step, open(os.environ["SOAK_LOOP_CPU"], "w", buffering=1 << 16)
atexit.register(_out.close)
def step(self, frame):
    c0 = time.thread_time()
    _real(self, frame)
    _out.write("%d %.4f\\n" % (self.frame_index, 1e3 * (time.thread_time() - c0)))
app.StreamApp.step = step
from latent_replay.cli import main
sys.exit(main(sys.argv[1:]))
"""


def default_warmup(teach_every: int, teach_frames: int, extra: Sequence[str]) -> int:
    """Until the replay memory is full, plus one segment (see the module docstring)."""
    memory = 1500  # apps/stream/common.py DEFAULT_MEMORY
    if "--replay-memory" in extra:
        memory = int(extra[list(extra).index("--replay-memory") + 1])
    teachings = -(-memory // teach_frames)
    return teach_every * (teachings + 1)


def soak(frames: int = 50000, teach_every: int = 2000, teach_frames: int = 100, warmup: Optional[int] = None,
         sample_s: float = 0.25, extra: Sequence[str] = (), work: Optional[Path] = None,
         progress: bool = False) -> Dict[str, object]:
    """Run the session and return its figures (see the module docstring)."""
    warmup = default_warmup(teach_every, teach_frames, extra) if warmup is None else warmup
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(work or tmp)
        (work / "schedule.json").write_text(json.dumps(schedule(frames, teach_every, teach_frames)))
        log = work / "log.jsonl"
        cpu_path = work / "loop_cpu.txt"
        command = [sys.executable, "-c", LOOP_CPU, "stream", "--source", "synthetic", "--headless",
                   "--schedule", str(work / "schedule.json"), "--max-frames", str(frames), "--weights", "random",
                   "--state", str(work / "state"), "--log", str(log)] + list(extra)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO)] + [os.environ.get("PYTHONPATH", "")]),
                   SOAK_LOOP_CPU=str(cpu_path))
        t0 = time.monotonic()
        with open(work / "stderr.txt", "wb") as err:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, env=env)
            samples: List[Tuple[float, int, int, int]] = []  # (seconds, frame, VmRSS KiB, VmHWM KiB)
            stdout: List[bytes] = []
            reader = threading.Thread(target=lambda: stdout.append(proc.stdout.read()), daemon=True)
            reader.start()
            while proc.poll() is None:
                rss, hwm = rss_kib(proc.pid)
                frame = last_frame(log)
                if rss and frame >= 0:
                    samples.append((time.monotonic() - t0, frame, rss, hwm))
                    if progress and len(samples) % int(30 / sample_s) == 0:
                        print(f"  {samples[-1][0]:6.0f} s  frame {frame:6d}  RSS {rss / 1024:7.1f} MiB", file=sys.stderr)
                time.sleep(sample_s)
            reader.join()
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"stream exited {proc.returncode}: {(work / 'stderr.txt').read_text()[-2000:]}")
        records = [json.loads(line) for line in log.read_text().splitlines()]
        cpu = {int(a): float(b) for a, b in (line.split() for line in cpu_path.read_text().splitlines())}
    return figures(records, cpu, samples, frames, teach_every, warmup, wall)


def _drift(values: np.ndarray, index: np.ndarray, frames: int, warmup: int) -> Tuple[float, float, float]:
    """(p99 of the first quarter after the warm-up, p99 of the last quarter, relative change)."""
    span = frames - warmup
    first = values[(index >= warmup) & (index < warmup + span // 4)]
    last = values[index >= frames - span // 4]
    a, b = float(np.percentile(first, 99)), float(np.percentile(last, 99))
    return a, b, (b - a) / a


def _segment_drift(segments: List[dict], key: str, warmup: int) -> Tuple[float, float, float]:
    """(median of the segments' `key` over the first half after the warm-up, the same over the last
    half, relative change): a slowdown lifts every later segment, a burst of other work one or two."""
    values = [seg[key] for seg in segments if seg["frames"][0] >= warmup]
    half = len(values) // 2
    if not half:
        return float("nan"), float("nan"), float("nan")
    a, b = float(np.median(values[:half])), float(np.median(values[-half:]))
    return a, b, (b - a) / a


def figures(records: List[dict], cpu: Dict[int, float], samples: List[Tuple[float, int, int, int]], frames: int,
            teach_every: int, warmup: int, wall: float) -> Dict[str, object]:
    frame_rows = [r for r in records if r["type"] == "frame"]
    latency = np.array([r["latency_ms"] for r in frame_rows])
    index = np.array([r["frame"] for r in frame_rows])
    loop_cpu = np.array([cpu.get(int(i), np.nan) for i in index])
    trainings = [r for r in records if r["type"] == "training"]
    segments = []
    for start in range(0, frames, teach_every):
        sel = (index >= start) & (index < start + teach_every)
        lat, c = latency[sel], loop_cpu[sel]
        rss = [s[2] for s in samples if start <= s[1] < start + teach_every]
        if not len(lat):
            continue
        segments.append({"frames": [start, start + teach_every - 1], "p50_ms": float(np.percentile(lat, 50)),
                         "p90_ms": float(np.percentile(lat, 90)), "p99_ms": float(np.percentile(lat, 99)),
                         "max_ms": float(lat.max()), "cpu_p50_ms": float(np.nanpercentile(c, 50)),
                         "cpu_p99_ms": float(np.nanpercentile(c, 99)),
                         "rss_mib_max": max(rss) / 1024 if rss else None,
                         "rss_mib_min": min(rss) / 1024 if rss else None})
    during = [s[2] for s in samples if s[1] < warmup]
    after = [s[2] for s in samples if s[1] >= warmup]
    hwm_warm = max((s[3] for s in samples if s[1] < warmup), default=0)
    hwm_end = max((s[3] for s in samples), default=0)
    p99_first, p99_last, p99_drift = _drift(latency, index, frames, warmup)
    seg_first, seg_last, seg_drift = _segment_drift(segments, "cpu_p99_ms", warmup)
    wall_first, wall_last, wall_drift = _segment_drift(segments, "p99_ms", warmup)
    cpu_first, cpu_last, cpu_drift = _drift(loop_cpu[~np.isnan(loop_cpu)], index[~np.isnan(loop_cpu)], frames, warmup)
    return {
        "frames": int(len(latency)), "teach_every": teach_every, "warmup_frames": warmup,
        "trainings": len(trainings), "wall_s": wall, "frames_per_s": len(latency) / wall,
        "training_s_median": float(np.median([t["duration_s"] for t in trainings])) if trainings else None,
        "latency_ms": {"p50": float(np.percentile(latency, 50)), "p99": float(np.percentile(latency, 99)),
                       "max": float(latency.max())},
        "loop_cpu_ms": {"p50": float(np.nanpercentile(loop_cpu, 50)), "p99": float(np.nanpercentile(loop_cpu, 99))},
        "rss_mib_start": samples[0][2] / 1024 if samples else None,
        "rss_mib_warmup_max": max(during) / 1024 if during else None,
        "rss_mib_after_max": max(after) / 1024 if after else None,
        "rss_growth": (max(after) - max(during)) / max(during) if during and after else None,
        "hwm_mib_warmup": hwm_warm / 1024, "hwm_mib_end": hwm_end / 1024,
        "hwm_growth": (hwm_end - hwm_warm) / hwm_warm if hwm_warm else None,
        "p99_ms_first_quarter": p99_first, "p99_ms_last_quarter": p99_last, "p99_drift": p99_drift,
        "cpu_p99_ms_first_quarter": cpu_first, "cpu_p99_ms_last_quarter": cpu_last, "cpu_p99_drift": cpu_drift,
        # the same trend, robust to a burst of other work: median of the segments' p99, last half vs first
        "cpu_segment_p99_ms_first_half": seg_first, "cpu_segment_p99_ms_last_half": seg_last,
        "cpu_segment_p99_drift": seg_drift,
        "segment_p99_ms_first_half": wall_first, "segment_p99_ms_last_half": wall_last, "segment_p99_drift": wall_drift,
        "load_average": os.getloadavg()[0], "cores": os.cpu_count(),
        "segments": segments,
        "rss_samples": [{"s": round(s[0], 2), "frame": s[1], "rss_mib": round(s[2] / 1024, 1)} for s in samples],
    }


def report(f: Dict[str, object]) -> str:
    lines = [f"{f['frames']} frames in {f['wall_s']:.0f} s ({f['frames_per_s']:.0f} frames/s), {f['trainings']} "
             f"trainings (median {f['training_s_median'] or 0:.2f} s), warm-up {f['warmup_frames']} frames; "
             f"load average {f['load_average']:.1f} on {f['cores']} cores at the end",
             f"{'frames':>15} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'max ms':>7} {'CPU p50':>8} {'CPU p99':>8} "
             f"{'RSS MiB min..max':>18}"]
    for s in f["segments"]:
        rss = f"{s['rss_mib_min']:.1f}..{s['rss_mib_max']:.1f}" if s["rss_mib_max"] else "-"
        lines.append(f"{s['frames'][0]:>7}-{s['frames'][1]:<7} {s['p50_ms']:7.2f} {s['p90_ms']:7.2f} {s['p99_ms']:7.2f} "
                     f"{s['max_ms']:7.1f} {s['cpu_p50_ms']:8.2f} {s['cpu_p99_ms']:8.2f} {rss:>18}")
    lines.append(f"RSS: {f['rss_mib_start']:.1f} MiB at the first frames, peak {f['rss_mib_warmup_max']:.1f} MiB during "
                 f"the warm-up, {f['rss_mib_after_max']:.1f} MiB after it: growth {100 * f['rss_growth']:+.2f}% "
                 f"(bound 5%); VmHWM {f['hwm_mib_warmup']:.1f} -> {f['hwm_mib_end']:.1f} MiB "
                 f"({100 * f['hwm_growth']:+.2f}%)")
    lines.append(f"p99 latency (wall clock): {f['p99_ms_first_quarter']:.2f} ms in the first quarter after the "
                 f"warm-up, {f['p99_ms_last_quarter']:.2f} ms in the last quarter: drift {100 * f['p99_drift']:+.1f}% "
                 f"(bound 10%)")
    lines.append(f"p99 loop CPU time per frame: {f['cpu_p99_ms_first_quarter']:.2f} ms -> "
                 f"{f['cpu_p99_ms_last_quarter']:.2f} ms: drift {100 * f['cpu_p99_drift']:+.1f}% (bound 10%)")
    for what, key in (("wall-clock", "segment_p99"), ("loop CPU", "cpu_segment_p99")):
        lines.append(f"median of the segments' {what} p99, first vs last half after the warm-up: "
                     f"{f[key + '_ms_first_half']:.2f} -> {f[key + '_ms_last_half']:.2f} ms: "
                     f"drift {100 * f[key + '_drift']:+.1f}%")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: List[str] = []
    if "--" in argv:
        extra, argv = argv[argv.index("--") + 1:], argv[:argv.index("--")]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=50000)
    p.add_argument("--teach-every", type=int, default=2000)
    p.add_argument("--teach-frames", type=int, default=100)
    p.add_argument("--warmup", type=int, default=None, help="warm-up frames (default: two segments)")
    p.add_argument("--json", help="write every figure (and the RSS samples) to this file")
    p.add_argument("--keep", help="run in this (new) folder and keep it: the stream's log, state and stderr")
    args = p.parse_args(argv)
    work = None
    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True)
    f = soak(args.frames, args.teach_every, args.teach_frames, args.warmup, extra=extra, work=work, progress=True)
    print(report(f))
    if args.json:
        Path(args.json).write_text(json.dumps(f, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
