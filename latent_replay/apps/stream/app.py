"""The stream demo's per-frame loop: predict, collect, hand batches to the teacher, swap weights, draw.

Every frame goes through the frozen front once; its latent feeds the live prediction and, while an
object is being taught, the training batch. A finished collection becomes one incremental batch
trained by `teacher.Teacher` on a worker thread with its own engine; the loop keeps predicting with
the previous weights and loads the new ones between two frames.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

from ...runtime.sources.base import SourceError
from .common import WINDOW, StreamError
from . import live
from .live import ClassBook, Collecting, CommandReader, EventLog, LivePredictor
from .options import StreamOptions
from .schedule import Schedule


class StreamApp:
    """The per-frame loop: predict, collect, hand batches to the teacher, swap weights, draw."""

    def __init__(self, opts: StreamOptions, source: Any, predictor: LivePredictor, teacher: Any,
                 book: ClassBook, schedule: Optional[Schedule], log: EventLog) -> None:
        self.opts, self.source, self.predictor, self.teacher = opts, source, predictor, teacher
        self.book, self.schedule, self.log = book, schedule, log
        self.frame_index = 0
        self.collecting: Optional[Collecting] = None
        self.typing: Optional[str] = None
        self.message, self._message_until = "", 0.0
        self.fps, self._last_t = 0.0, None
        # Running totals, not per-frame lists: a camera session runs for days (a list grew ~32 bytes
        # a frame, found by the soak test, benchmarks/stream_soak.py).
        self.scores: Dict[str, List[int]] = {}  # truth -> [frames predicted right, frames scored]
        self.trainings: List[Dict[str, Any]] = []
        self.latency_sum, self.latency_max, self.latency_count = 0.0, 0.0, 0
        self.quit = False
        self.last_view: Optional[np.ndarray] = None
        self._writer: Any = None
        self._t0 = time.perf_counter()
        self._commands = CommandReader() if opts.headless and schedule is None and opts.commands else None

    # -- frames ---------------------------------------------------------------------------------
    def next_frame(self) -> Optional[np.ndarray]:
        """The next frame; a live camera that stops is retried for --reconnect-seconds."""
        frame = self.source.read()
        if frame is not None or not getattr(self.source, "is_live", False):
            return frame
        wait = self.opts.reconnect_seconds
        print(f"the camera {self.opts.source} stopped delivering frames; retrying for {wait:g} s ...", file=sys.stderr)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not self.quit:
            self.apply_updates()
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            try:
                self.source.close()
                self.source = live.open_source(self.opts.source, self.predictor.front.manifest.input["size"])
            except SourceError:
                continue
            frame = self.source.read()
            if frame is not None:
                print("the camera is back", file=sys.stderr)
                return frame
        print(f"no frames from {self.opts.source} for {wait:g} s: stopping", file=sys.stderr)
        return None

    def run(self) -> None:
        limit = self.opts.max_frames
        if not limit and self.schedule is not None and self.schedule.last_frame() >= 0:
            limit = self.schedule.last_frame() + 1  # a scripted session ends with its schedule
        try:
            while not self.quit and (not limit or self.frame_index < limit):
                frame = self.next_frame()
                if frame is None:
                    break
                self.step(frame)
                self.frame_index += 1
        except KeyboardInterrupt:
            print("interrupted: saving and stopping", file=sys.stderr)

    def step(self, frame: np.ndarray) -> None:
        i = self.frame_index
        self.apply_updates()
        started = time.perf_counter() - self._t0
        latent, probs, latency = self.predictor(frame)
        label, confidence = self.predictor.smoothed(probs)
        training = self.teacher.busy
        self.latency_sum += latency
        self.latency_max = max(self.latency_max, latency)
        self.latency_count += 1
        truth = self.schedule.truth_at(i) if self.schedule else None
        if truth is not None and not self.schedule.taught(i):
            score = self.scores.setdefault(truth, [0, 0])
            score[0] += int(label == truth)
            score[1] += 1
        self.log.write("frame", frame=i, label=label, confidence=round(confidence, 4),
                       latency_ms=round(1e3 * latency, 3), t=round(started, 6), training=training,
                       weights=self.predictor.version, truth=truth)
        self.schedule_step(i)
        self.collect(i, latent)
        self._tick()
        if self.opts.record or not self.opts.headless or self._screenshot_now(i):
            self.show(frame, label, confidence, latency)
        self.poll_input()

    def _screenshot_now(self, i: int) -> bool:
        """Render for --screenshot at its frame (default: every frame, the last one is kept)."""
        return bool(self.opts.screenshot) and self.opts.screenshot_frame in (-1, i)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last_t is not None:
            rate = 1.0 / max(1e-6, now - self._last_t)
            self.fps = rate if self.fps == 0 else 0.9 * self.fps + 0.1 * rate
        self._last_t = now

    # -- teaching -------------------------------------------------------------------------------
    def start_teaching(self, name: str, wanted: int) -> None:
        name = name.strip()
        if not name:
            return
        if self.collecting is not None:
            self.say(f"still collecting '{self.collecting.name}'")
            return
        try:
            label = self.book.index(name)
        except StreamError as e:
            if self.schedule is not None:
                raise
            self.say(str(e))
            return
        self.collecting = Collecting(name, label, wanted, self.frame_index)
        print(f"frame {self.frame_index}: collecting {wanted} frames of '{name}'", file=sys.stderr)

    def schedule_step(self, i: int) -> None:
        if self.schedule is None:
            return
        for seg in self.schedule.teach:
            if seg.first == i:
                self.start_teaching(seg.label, seg.last - seg.first + 1)

    def collect(self, i: int, latent: np.ndarray) -> None:
        c = self.collecting
        if c is None:
            return
        c.latents.append(latent[0])
        if len(c.latents) < c.wanted:
            return
        from .teacher import TrainJob

        self.teacher.submit(TrainJob(c.label, c.name, np.stack(c.latents), c.first_frame, i, i))
        print(f"frame {i}: training '{c.name}' on {len(c.latents)} frames in the background", file=sys.stderr)
        self.collecting = None

    def apply_updates(self) -> None:
        """Load the newest finished batch's weights (between frames) and log every finished batch."""
        updates = self.teacher.take_updates()
        if not updates:
            return
        for u in updates:
            self.book.trained.add(u.job.label)
            record = dict(u.record, end_frame=self.frame_index)
            self.trainings.append(record)
            self.log.write("training", **record)
            print(f"frame {self.frame_index}: learned '{record['label']}' ({record['frames']} frames, "
                  f"{record['duration_s']:.2f} s, loss {record['loss']:.3f})", file=sys.stderr)
        self.predictor.load(updates[-1].params, updates[-1].record["batch"] + 1)

    # -- display and input ----------------------------------------------------------------------
    def say(self, message: str, seconds: float = 3.0) -> None:
        print(message, file=sys.stderr)
        self.message, self._message_until = message, time.monotonic() + seconds

    def overlay_info(self, label: Optional[str], confidence: float, latency: float):
        from .overlay import OverlayInfo

        c = self.collecting
        return OverlayInfo(
            label=label, confidence=confidence, fps=self.fps, latency_ms=1e3 * latency,
            known=len(self.book.known), capacity=self.book.capacity,
            collecting=(c.name, len(c.latents), c.wanted) if c is not None else None,
            training=self.teacher.progress(), queued=self.teacher.queued, typing=self.typing,
            message=self.message if time.monotonic() < self._message_until else "")

    def show(self, frame: np.ndarray, label: Optional[str], confidence: float, latency: float) -> None:
        from .overlay import render

        view = render(frame, self.overlay_info(label, confidence, latency), self.opts.display_size)
        if self._screenshot_now(self.frame_index):
            self.last_view = view
        if self.opts.record:
            self.record(view)
        if not self.opts.headless:
            import cv2

            cv2.imshow(WINDOW, view)

    def record(self, view: np.ndarray) -> None:
        import cv2

        from ...runtime.sources.video import quiet_opencv_logs

        if self._writer is None:
            quiet_opencv_logs()
            h, w = view.shape[:2]
            self._writer = cv2.VideoWriter(self.opts.record, cv2.VideoWriter_fourcc(*"mp4v"), self.opts.record_fps,
                                           (w, h))
            if not self._writer.isOpened():
                self._writer = None
                raise StreamError(f"cannot write video {self.opts.record} (mp4v codec unavailable or path not writable)")
        self._writer.write(view)

    def poll_input(self) -> None:
        if not self.opts.headless:
            import cv2

            self.on_key(cv2.waitKey(1) & 0xFF)
        elif self._commands is not None:
            line = self._commands.poll()
            if line:
                self.on_command(line)

    def on_command(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        if word == "teach" and rest.strip():
            self.start_teaching(rest, self.opts.teach_frames)
        elif word == "quit":
            self.quit = True
        else:
            self.say(f"unknown command {line!r}: use 'teach NAME' or 'quit'")

    def on_key(self, key: int) -> None:
        if key == 255:
            return
        if self.typing is not None:
            self._on_typing_key(key)
        elif key in (ord("q"), 27):
            self.quit = True
        elif key == ord("t"):
            self.typing = ""
        elif ord("1") <= key <= ord("9"):
            k = key - ord("1")
            if k < len(self.book.names):
                self.start_teaching(self.book.names[k], self.opts.teach_frames)
            else:
                self.say(f"no class {k + 1} yet: press t to teach a new one")

    def _on_typing_key(self, key: int) -> None:
        if key in (13, 10):
            name, self.typing = self.typing or "", None
            self.start_teaching(name, self.opts.teach_frames)
        elif key == 27:
            self.typing = None
        elif key in (8, 127):
            self.typing = (self.typing or "")[:-1]
        elif 32 <= key < 127 and len(self.typing or "") < 40:
            self.typing = (self.typing or "") + chr(key)

    def close(self) -> None:
        self.source.close()  # may be a reconnected one
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if not self.opts.headless:
            import cv2

            cv2.destroyAllWindows()

    # -- summary --------------------------------------------------------------------------------
    def summary(self) -> Dict[str, Any]:
        """Accuracy on the frames with a ground truth that were not taught, and run statistics."""
        right = sum(r for r, _ in self.scores.values())
        scored = sum(n for _, n in self.scores.values())
        return {
            "frames": self.frame_index, "evaluated_frames": scored,
            "accuracy": right / scored if scored else None,
            "per_class_accuracy": {k: r / n for k, (r, n) in self.scores.items()},
            "known_classes": [self.book.names[c] for c in self.book.known],
            "class_names": list(self.book.names), "trainings": len(self.trainings),
            "latency_ms_mean": 1e3 * self.latency_sum / self.latency_count if self.latency_count else 0.0,
            "latency_ms_max": 1e3 * self.latency_max,
        }
