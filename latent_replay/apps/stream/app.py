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
from .control import Command, CommandError, Controller, EventFeed, key_command, parse_line
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
        self.control = Controller(self)  # the one way in for stdin lines, window keys and the web server
        self.events = EventFeed()
        self.paused = False
        self.held: List[Any] = []  # collected batches waiting for `resume`
        self.hub: Any = None  # the web server's side (web.hub.Hub) when serving

    # -- frames ---------------------------------------------------------------------------------
    def next_frame(self) -> Optional[np.ndarray]:
        """The next frame; a live camera that stops is retried for --reconnect-seconds."""
        frame = self.source.read()
        if frame is not None or not getattr(self.source, "is_live", False):
            return frame
        wait = self.opts.reconnect_seconds
        how_long = "until it is back" if wait == float("inf") else f"for {wait:g} s"
        print(f"the camera {self.opts.source} stopped delivering frames; retrying {how_long} ...", file=sys.stderr)
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
        serve = self.hub is not None and self.hub.wants_frame()
        if self.opts.record or not self.opts.headless or self._screenshot_now(i) or serve:
            view = self.show(frame, label, confidence, latency)
            if serve:
                self.hub.publish_view(view)
        if self.hub is not None:
            self.hub.after_frame(self, label, confidence, latency)
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
    def start_teaching(self, name: str, wanted: int, origin: str = "key") -> None:
        """Teach `name` with `wanted` frames through the command API; a refusal is said on screen
        (a scripted session's refusal is an error)."""
        if not name.strip():
            return
        self.run_command(Command("teach", name, frames=wanted, origin=origin))

    def run_command(self, command: Command) -> None:
        """Run a command of this thread (a key, a stdin line, the schedule) now; refusals are said."""
        try:
            self.control.execute(command)
        except CommandError as e:
            if command.origin == "schedule":
                raise StreamError(str(e)) from None
            self.say(str(e))

    def start_collecting(self, name: str, label: int, wanted: int) -> None:
        """The teaching itself (called by the controller): collect `wanted` frames from now."""
        self.collecting = Collecting(name, label, wanted, self.frame_index)
        self.events.emit("collecting", label=name, frames=wanted, frame=self.frame_index)
        print(f"frame {self.frame_index}: collecting {wanted} frames of '{name}'", file=sys.stderr)

    def schedule_step(self, i: int) -> None:
        if self.schedule is None:
            return
        for seg in self.schedule.teach:
            if seg.first == i:
                self.start_teaching(seg.label, seg.last - seg.first + 1, origin="schedule")

    def forget(self, label: int) -> None:
        """Forget a class (called by the controller): its collection stops, held batches of it are
        dropped, and the teacher forgets it after what is queued (`Learner.forget_class`)."""
        from .teacher import ForgetJob

        name = self.book.names[label]
        if self.collecting is not None and self.collecting.label == label:
            self.collecting = None
        self.held = [j for j in self.held if j.label != label]
        meta = self.book.meta()
        meta["trained"] = [c for c in meta["trained"] if c != label]
        meta["class_names"][label] = ""
        meta["frames"][label] = 0
        self.teacher.submit(ForgetJob(label, name, meta))
        self.say(f"forgetting '{name}'")

    def set_paused(self, paused: bool) -> None:
        """Pause: collected batches are held, not trained, until resume (a running batch finishes)."""
        if paused == self.paused:
            return
        self.paused = paused
        self.events.emit("paused" if paused else "resumed", held=len(self.held))
        if not paused:
            for job in self.held:
                self.teacher.submit(job)
            self.held = []
        self.say("learning paused" if paused else "learning resumed")

    def queue_save(self) -> None:
        """Save the learner and the class book as they are now, after what the teacher has queued."""
        from .teacher import SaveJob

        self.teacher.submit(SaveJob(self.book.meta()))

    def collect(self, i: int, latent: np.ndarray) -> None:
        c = self.collecting
        if c is None:
            return
        c.latents.append(latent[0])
        if len(c.latents) < c.wanted:
            return
        from .teacher import TrainJob

        meta = self.book.meta()  # saved with the trained learner: the class counts as trained there
        meta["trained"] = sorted(set(meta["trained"]) | {c.label})
        meta["frames"][c.label] += len(c.latents)
        job = TrainJob(c.label, c.name, np.stack(c.latents), c.first_frame, i, i, meta)
        self.collecting = None
        self.events.emit("collected", label=c.name, frames=len(c.latents), frame=i, held=self.paused)
        if self.paused:
            self.held.append(job)
            self.say(f"collected '{c.name}': held until learning is resumed")
            return
        self.teacher.submit(job)
        print(f"frame {i}: training '{c.name}' on {len(c.latents)} frames in the background", file=sys.stderr)

    def apply_updates(self) -> None:
        """Load the newest finished batch's weights (between frames) and log every finished batch."""
        updates = self.teacher.take_updates()
        if not updates:
            return
        params = None
        for u in updates:
            params = u.params if u.params is not None else params
            if u.kind == "save":
                self.events.emit("saved")
                continue
            if u.kind == "forget":
                self.book.forget(u.job.label)
                self.log.write("forget", **u.record, frame=self.frame_index)
                self.events.emit("forgot", **u.record)
                print(f"frame {self.frame_index}: forgot '{u.job.name}' ({u.record['patterns_dropped']} replay "
                      f"patterns dropped)", file=sys.stderr)
                continue
            self.book.trained.add(u.job.label)
            self.book.frames[u.job.label] = self.book.frames.get(u.job.label, 0) + u.record["frames"]
            record = dict(u.record, end_frame=self.frame_index)
            self.trainings.append(record)
            self.log.write("training", **record)
            self.events.emit("training", **record)
            print(f"frame {self.frame_index}: learned '{record['label']}' ({record['frames']} frames, "
                  f"{record['duration_s']:.2f} s, loss {record['loss']:.3f})", file=sys.stderr)
        if params is not None:
            self.predictor.load(params, self.predictor.version + sum(u.kind == "training" for u in updates))

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

    def show(self, frame: np.ndarray, label: Optional[str], confidence: float, latency: float) -> np.ndarray:
        from .overlay import render

        view = render(frame, self.overlay_info(label, confidence, latency), self.opts.display_size)
        if self._screenshot_now(self.frame_index):
            self.last_view = view
        if self.opts.record:
            self.record(view)
        if not self.opts.headless:
            import cv2

            cv2.imshow(WINDOW, view)
        return view

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
        self.control.apply_pending()  # the web server's commands

    def on_command(self, line: str) -> None:
        """A stdin line (--commands), through the command API."""
        try:
            command = parse_line(line)
        except CommandError as e:
            self.say(str(e))
            return
        if command is not None:
            self.run_command(command)

    def on_key(self, key: int) -> None:
        """A window key, through the command API (t starts typing a name: `_on_typing_key`)."""
        if key == 255:
            return
        if self.typing is not None:
            self._on_typing_key(key)
        elif key == ord("t"):
            self.typing = ""
        elif key == ord("p"):
            self.run_command(Command("resume" if self.paused else "pause", origin="key"))
        else:
            try:
                command = key_command(key, self.book.names)
            except CommandError as e:
                self.say(str(e))
                return
            if command is not None:
                self.run_command(command)

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
