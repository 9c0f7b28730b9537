"""The stream's live loop keeps no per-frame list: a camera session runs for days. Found by the soak
benchmark (benchmarks/stream_soak.py): the loop kept every frame's latency and every scored frame
(~32 bytes and more a frame, ~80 MB a day at 30 frames/s); it now keeps running totals. The loop
runs here on stand-ins for the source, predictor and teacher, so 20,000 frames take a second."""
from __future__ import annotations

import tracemalloc

import numpy as np

from latent_replay.apps.stream.app import StreamApp
from latent_replay.apps.stream.live import ClassBook, EventLog
from latent_replay.apps.stream.options import StreamOptions
from latent_replay.apps.stream.schedule import parse_schedule


class Predictor:
    version = 0

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, frame):
        self.n += 1
        return np.zeros((1, 4), np.float32), np.array([0.9, 0.1]), 1e-3 * (1 + self.n % 7) + 1e-9 * self.n

    def smoothed(self, probs):
        return ("a" if self.n % 4 else "b"), 0.9  # right on 3 frames out of 4 (the truth is "a")


class Teacher:
    busy, queued = False, 0

    def take_updates(self):
        return []

    def progress(self):
        return None


def test_the_live_loop_keeps_running_totals_not_per_frame_lists():
    schedule = parse_schedule({"teach": [], "truth": [{"frames": [0, 10 ** 6], "label": "a"}]})
    app = StreamApp(StreamOptions(headless=True), None, Predictor(), Teacher(), ClassBook(2, ["a", "b"], [0, 1]),
                    schedule, EventLog(None))
    frame = np.zeros((8, 8, 3), np.uint8)

    def frames(n: int) -> None:
        for _ in range(n):
            app.step(frame)
            app.frame_index += 1

    frames(2000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        frames(20000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 16 * 1024, f"{grown} bytes more after 20,000 frames"
    s = app.summary()
    assert s["frames"] == s["evaluated_frames"] == 22000
    assert s["accuracy"] == s["per_class_accuracy"]["a"] == 16500 / 22000
    assert 7.0 < s["latency_ms_max"] < 7.03  # 1..7 ms (+ up to 0.022 ms), evenly
    assert abs(s["latency_ms_mean"] - 4.0) < 0.02
