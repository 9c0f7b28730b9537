"""The live loop's side of the web page: the newest frame (JPEG) and state, handed to the server.

The loop never waits for a client: it renders and encodes a frame only while someone watches the
video, at most `--serve-fps` a second, and replaces the previous one (a client that was not ready
gets the next, never a queue of old ones). A snapshot of the state (`snapshot`) is made a few times
a second. Each publication pokes the server's event loop (`on_frame`, `on_state`: set by the server,
called from the loop thread; they must not block).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional

import numpy as np

STATE_INTERVAL_S = 0.25
CHART_POINTS = 240  # a minute of the chart at STATE_INTERVAL_S
TOP_K = 3


class Hub:
    """Thread-safe hand-over point between the live loop and the web server (see the module docstring)."""

    def __init__(self, fps: float, jpeg_quality: int = 80) -> None:
        self.interval = 1.0 / max(0.1, float(fps))
        self.jpeg_quality = int(jpeg_quality)
        self._lock = threading.Lock()
        self.video_clients = 0
        self.frame: Optional[bytes] = None
        self.frame_version = 0
        self.state: Optional[Dict[str, Any]] = None
        self.chart: Deque[Dict[str, Any]] = deque(maxlen=CHART_POINTS)
        self.frames_published = 0
        self._next_frame = 0.0
        self._next_state = 0.0
        self.on_frame: Optional[Callable[[], None]] = None
        self.on_state: Optional[Callable[[Dict[str, Any]], None]] = None

    # -- server side ----------------------------------------------------------------------------
    def watch(self, delta: int) -> None:
        """A video client came (+1) or went (-1)."""
        with self._lock:
            self.video_clients += delta

    def latest_frame(self):
        with self._lock:
            return self.frame, self.frame_version

    def latest_state(self) -> Optional[Dict[str, Any]]:
        with self._lock:
            if self.state is None:
                return None
            return dict(self.state, chart=list(self.chart))

    # -- loop side ------------------------------------------------------------------------------
    def wants_frame(self) -> bool:
        return self.video_clients > 0 and time.monotonic() >= self._next_frame

    def publish_view(self, view: np.ndarray) -> None:
        import cv2

        now = time.monotonic()
        # due one interval after this one was due (not after now): a steady rate at a loop's uneven frames
        self._next_frame = max(self._next_frame + self.interval, now)
        ok, data = cv2.imencode(".jpg", view, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            return
        with self._lock:
            self.frame, self.frame_version = data.tobytes(), self.frame_version + 1
            self.frames_published += 1
        if self.on_frame is not None:
            self.on_frame()

    def after_frame(self, app: Any, label: Optional[str], confidence: float, latency: float) -> None:
        now = time.monotonic()
        if now < self._next_state:
            return
        self._next_state = now + STATE_INTERVAL_S
        state = snapshot(app, label, confidence, latency)
        point = {"t": round(time.time(), 2), "confidence": state["prediction"]["confidence"],
                 "loss": (state["training"] or {}).get("loss")}
        with self._lock:
            self.state = state
            self.chart.append(point)
        if self.on_state is not None:
            self.on_state(dict(state, point=point))


def snapshot(app: Any, label: Optional[str], confidence: float, latency: float) -> Dict[str, Any]:
    """What the page shows, as JSON: the prediction and top-k, the classes, the teacher, the figures."""
    book, teacher = app.book, app.teacher
    top: List[Dict[str, Any]] = []
    mean = app.predictor.last_mean
    if book.known and mean is not None:
        order = [int(c) for c in np.argsort(-mean)[:TOP_K] if int(c) in book.trained]
        top = [{"name": book.names[c], "p": round(float(mean[c]), 4)} for c in order]
    c = app.collecting
    progress = teacher.progress()
    training = None
    if progress is not None:
        training = dict(name=progress[0], fraction=round(progress[1], 3), **teacher.steps())
    last = app.trainings[-1] if app.trainings else None
    return {
        "frame": app.frame_index,
        "uptime_s": round(time.perf_counter() - app._t0, 4),  # when this snapshot was made
        "fps": round(app.fps, 2),
        "latency_ms": round(1e3 * latency, 2),
        "latency_ms_mean": round(1e3 * app.latency_sum / max(1, app.latency_count), 2),
        "prediction": {"label": label, "confidence": round(float(confidence), 4)},
        "top": top,
        "classes": [{"index": i, "name": n, "frames": book.frames.get(i, 0), "trained": i in book.trained}
                    for i, n in enumerate(book.names) if n],
        "capacity": book.capacity,
        "collecting": {"name": c.name, "have": len(c.latents), "want": c.wanted} if c is not None else None,
        "training": training,
        "queued": teacher.queued,
        "paused": app.paused,
        "held": [j.name for j in app.held],
        "weights": app.predictor.version,
        "last_training": {"label": last["label"], "loss": last["loss"], "duration_s": round(last["duration_s"], 3),
                          "frames": last["frames"]} if last else None,
        "method": teacher.learner.config.method,
        "message": app.message if time.monotonic() < app._message_until else "",
    }
