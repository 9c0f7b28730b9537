"""`latent-replay stream`: a camera demo that keeps predicting while it learns new objects.

Every frame goes through the frozen front once; its latent feeds the live prediction and, while an
object is being taught, the training batch. A finished collection becomes one incremental batch
(latent replay + CWR* / AR1*-free) trained by `teacher.Teacher` on a worker thread with its own
ONNX Runtime Module; the live loop keeps predicting with the previous weights and loads the new
ones between two frames. The learner (class names, weights, replay memory) lives in `--state` and
is saved atomically after every batch and on exit.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, IO, List, Optional, Sequence, Tuple

import numpy as np

from ..models import mobilenet_v1 as net
from .runner import RunError
from .sources.base import SourceError

STREAM_META = "stream"  # key of the demo's own data (class names) in the learner state's meta
WINDOW = "latent-replay stream"
METHODS = ("cwr", "ar1free", "ar1")
# Demo defaults (see docs/stream.md): one taught object is one small batch, so the presets' few
# epochs at lr 5e-5 (tuned for CORe50 with pretrained weights) learn too little. pool6 + CWR* trains
# only the 1024 x classes head: many epochs cost milliseconds.
DEFAULT_LR = {"cwr": 0.03, "ar1free": 0.003, "ar1": 0.003}
DEFAULT_EPOCHS = {"cwr": 50, "ar1free": 8, "ar1": 8}
DEFAULT_MEMORY = 1500
SYNTHETIC_PERIOD = 100  # frames per object of the synthetic source
GIL_SWITCH_S = 0.001  # see _run


class StreamError(RunError):
    """A stream-demo input a user must fix (schedule, state, display)."""


# ---------------------------------------------------------------------------------------------
# Schedule (headless): when to teach what, and the ground truth for evaluation
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    """Frames first..last (inclusive) showing the object `label`."""

    first: int
    last: int
    label: str

    def __contains__(self, frame: int) -> bool:
        return self.first <= frame <= self.last


@dataclass
class Schedule:
    teach: List[Segment] = field(default_factory=list)
    truth: List[Segment] = field(default_factory=list)
    classes: List[str] = field(default_factory=list)

    def truth_at(self, frame: int) -> Optional[str]:
        return next((s.label for s in self.truth if frame in s), None)

    def taught(self, frame: int) -> bool:
        return any(frame in s for s in self.teach)

    def names(self) -> List[str]:
        """Every class name the schedule teaches, in order of first mention."""
        seen: Dict[str, None] = dict.fromkeys(self.classes)
        seen.update(dict.fromkeys(s.label for s in self.teach))
        return list(seen)


def _segments(data: Dict[str, Any], key: str, where: str) -> List[Segment]:
    items = data.get(key, [])
    if not isinstance(items, list):
        raise StreamError(f"{where}: '{key}' must be a list of {{\"frames\": [first, last], \"label\": name}}")
    out = []
    for n, item in enumerate(items):
        ctx = f"{where}: {key}[{n}]"
        if not isinstance(item, dict) or set(item) - {"frames", "label"}:
            raise StreamError(f"{ctx} must be an object with keys 'frames' and 'label', got {item!r}")
        frames, label = item.get("frames"), item.get("label")
        if (not isinstance(frames, list) or len(frames) != 2
                or not all(isinstance(f, int) and not isinstance(f, bool) for f in frames)):
            raise StreamError(f"{ctx}: 'frames' must be [first, last] (integers), got {frames!r}")
        if not 0 <= frames[0] <= frames[1]:
            raise StreamError(f"{ctx}: 'frames' {frames} must satisfy 0 <= first <= last")
        if not isinstance(label, str) or not label.strip():
            raise StreamError(f"{ctx}: 'label' must be a non-empty string, got {label!r}")
        out.append(Segment(frames[0], frames[1], label.strip()))
    return sorted(out, key=lambda s: s.first)


def parse_schedule(data: Any, where: str = "schedule") -> Schedule:
    """Validate a schedule object (see docs/stream.md); any problem -> one StreamError."""
    if not isinstance(data, dict):
        raise StreamError(f"{where}: the top level must be a JSON object with a 'teach' list")
    unknown = sorted(set(data) - {"teach", "truth", "classes"})
    if unknown:
        raise StreamError(f"{where}: unknown key(s) {', '.join(unknown)} (valid: teach, truth, classes)")
    classes = data.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) and c.strip() for c in classes) \
            or len(set(classes)) != len(classes):
        raise StreamError(f"{where}: 'classes' must be a list of distinct non-empty names, got {classes!r}")
    teach = _segments(data, "teach", where)
    for a, b in zip(teach, teach[1:]):
        if b.first <= a.last:
            raise StreamError(f"{where}: teach ranges {[a.first, a.last]} and {[b.first, b.last]} overlap")
    return Schedule(teach, _segments(data, "truth", where), [c.strip() for c in classes])


def load_schedule(path: str) -> Schedule:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise StreamError(f"cannot read schedule {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise StreamError(f"schedule {path} is not valid JSON: {e}") from None
    return parse_schedule(data, f"schedule {path}")


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------
class SyntheticStream:
    """An endless live-like source: the built-in synthetic objects, one after another, each shown
    for `period` frames while it turns (`SyntheticScenario`, session 0)."""

    is_live = False  # never stops delivering frames, so there is nothing to reconnect

    def __init__(self, input_size: int, objects: int = 3, seed: int = 0, period: int = SYNTHETIC_PERIOD) -> None:
        from .sources.synthetic import SyntheticScenario

        self.scenario = SyntheticScenario(classes=max(2, objects), first_classes=1, input_size=input_size,
                                          seed=seed)
        self.objects, self.period, self.k = objects, period, 0

    @property
    def object_names(self) -> List[str]:
        return self.scenario.class_names[: self.objects]

    def read(self) -> Optional[np.ndarray]:
        c = (self.k // self.period) % self.objects
        self.k += 1
        return self.scenario.frame(c, 0, self.k)

    def close(self) -> None:
        pass


def open_source(spec: str, input_size: int, seed: int = 0) -> Any:
    """'synthetic' / 'synthetic:N' -> SyntheticStream, anything else -> VideoSource (SourceError)."""
    spec = str(spec).strip()
    if spec == "synthetic" or spec.startswith("synthetic:"):
        try:
            objects = int(spec.split(":", 1)[1]) if ":" in spec else 3
        except ValueError:
            objects = 0
        if not 1 <= objects <= 50:
            raise SourceError(f"--source {spec}: use synthetic or synthetic:N with N objects, 1..50")
        return SyntheticStream(input_size, objects, seed)
    from .sources.video import VideoSource

    return VideoSource(spec, input_size)


# ---------------------------------------------------------------------------------------------
# Classes, prediction, log
# ---------------------------------------------------------------------------------------------
class ClassBook:
    """Class names <-> output indices, in order of first use; `trained` are those the head knows."""

    def __init__(self, capacity: int, names: Sequence[str] = (), trained: Sequence[int] = ()) -> None:
        self.capacity = int(capacity)
        self.names: List[str] = list(names)
        self.trained = set(int(t) for t in trained)

    def index(self, name: str) -> int:
        if name in self.names:
            return self.names.index(name)
        if len(self.names) >= self.capacity:
            raise StreamError(f"cannot add class {name!r}: all {self.capacity} classes are used "
                              f"(start over with a new --state and a larger --classes)")
        self.names.append(name)
        return len(self.names) - 1

    @property
    def known(self) -> List[int]:
        return sorted(self.trained)

    def meta(self) -> Dict[str, Any]:
        return {"class_names": list(self.names), "trained": self.known}


class LivePredictor:
    """Front + the live loop's own `Back`: a frame -> (latent, probabilities over the trained
    classes, latency). Parameters arrive from the teacher through `load`."""

    def __init__(self, front: Any, back: Any, book: ClassBook, smooth: int) -> None:
        self.front, self.back, self.book = front, back, book
        self.classes = int(back.manifest.classes)
        self._recent: "deque[np.ndarray]" = deque(maxlen=max(1, smooth))
        self.version = 0  # number of batches whose weights are loaded

    def load(self, params: Dict[str, np.ndarray], batches: int) -> None:
        self.back.load_parameters(params)
        self.version = batches

    def __call__(self, frame: np.ndarray) -> Tuple[np.ndarray, np.ndarray, float]:
        t0 = time.perf_counter()
        latent = self.front(frame[None])
        logits = self.back.logits(latent)[0].astype(np.float64)
        latency = time.perf_counter() - t0
        probs = np.zeros(self.classes)
        known = self.book.known
        if known:
            z = logits[known] - logits[known].max()
            probs[known] = np.exp(z) / np.exp(z).sum()
        return latent, probs, latency

    def smoothed(self, probs: np.ndarray) -> Tuple[Optional[str], float]:
        """(label, confidence) of the mean probabilities over the last few frames."""
        self._recent.append(probs)
        if not self.book.known:
            return None, 0.0
        mean = np.mean(self._recent, axis=0)
        c = int(mean.argmax())
        return self.book.names[c], float(mean[c])


class EventLog:
    """JSON lines: one 'frame' object per frame, one 'training' per batch, one 'summary' at the end."""

    def __init__(self, path: Optional[str]) -> None:
        self._file: Optional[IO[str]] = None
        if path:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                self._file = open(path, "w", encoding="utf-8")
            except OSError as e:
                raise StreamError(f"cannot write log {path}: {e.strerror or e}") from None

    def write(self, kind: str, **values: Any) -> None:
        if self._file is not None:
            self._file.write(json.dumps(dict(type=kind, **values)) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class Collecting:
    """Frames being gathered for one teaching."""

    name: str
    label: int
    wanted: int
    first_frame: int
    latents: List[np.ndarray] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Input: keys in the window, lines on stdin when headless
# ---------------------------------------------------------------------------------------------
class CommandReader:
    """Reads 'teach NAME' / 'quit' lines from stdin on a daemon thread (headless, no schedule)."""

    def __init__(self) -> None:
        self._lines: "deque[str]" = deque()
        threading.Thread(target=self._read, name="stdin-commands", daemon=True).start()

    def _read(self) -> None:
        try:
            for line in sys.stdin:
                self._lines.append(line.strip())
        except (OSError, ValueError):
            return

    def poll(self) -> Optional[str]:
        return self._lines.popleft() if self._lines else None


# ---------------------------------------------------------------------------------------------
# The live loop
# ---------------------------------------------------------------------------------------------
class StreamApp:
    """The per-frame loop: predict, collect, hand batches to the teacher, swap weights, draw."""

    def __init__(self, args: argparse.Namespace, source: Any, predictor: LivePredictor, teacher: Any,
                 book: ClassBook, schedule: Optional[Schedule], log: EventLog) -> None:
        self.args, self.source, self.predictor, self.teacher = args, source, predictor, teacher
        self.book, self.schedule, self.log = book, schedule, log
        self.frame_index = 0
        self.collecting: Optional[Collecting] = None
        self.typing: Optional[str] = None
        self.message, self._message_until = "", 0.0
        self.fps, self._last_t = 0.0, None
        self.results: List[Tuple[int, Optional[str], Optional[str]]] = []  # (frame, predicted, truth)
        self.trainings: List[Dict[str, Any]] = []
        self.latencies: List[float] = []
        self.quit = False
        self.last_view: Optional[np.ndarray] = None
        self._writer: Any = None
        self._t0 = time.perf_counter()
        self._commands = CommandReader() if args.headless and schedule is None and args.commands else None

    # -- frames ---------------------------------------------------------------------------------
    def next_frame(self) -> Optional[np.ndarray]:
        """The next frame; a live camera that stops is retried for --reconnect-seconds."""
        frame = self.source.read()
        if frame is not None or not getattr(self.source, "is_live", False):
            return frame
        wait = self.args.reconnect_seconds
        print(f"the camera {self.args.source} stopped delivering frames; retrying for {wait:g} s ...", file=sys.stderr)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not self.quit:
            self.apply_updates()
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            try:
                self.source.close()
                self.source = open_source(self.args.source, self.predictor.front.manifest.input["size"])
            except SourceError:
                continue
            frame = self.source.read()
            if frame is not None:
                print("the camera is back", file=sys.stderr)
                return frame
        print(f"no frames from {self.args.source} for {wait:g} s: stopping", file=sys.stderr)
        return None

    def run(self) -> None:
        limit = self.args.max_frames
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
        self.latencies.append(latency)
        truth = self.schedule.truth_at(i) if self.schedule else None
        if truth is not None and not self.schedule.taught(i):
            self.results.append((i, label, truth))
        self.log.write("frame", frame=i, label=label, confidence=round(confidence, 4),
                       latency_ms=round(1e3 * latency, 3), t=round(started, 6), training=training,
                       weights=self.predictor.version, truth=truth)
        self.schedule_step(i)
        self.collect(i, latent)
        self._tick()
        if self.args.record or not self.args.headless or self._screenshot_now(i):
            self.show(frame, label, confidence, latency)
        self.poll_input()

    def _screenshot_now(self, i: int) -> bool:
        """Render for --screenshot at its frame (default: every frame, the last one is kept)."""
        return bool(self.args.screenshot) and self.args.screenshot_frame in (-1, i)

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

        view = render(frame, self.overlay_info(label, confidence, latency), self.args.display_size)
        if self._screenshot_now(self.frame_index):
            self.last_view = view
        if self.args.record:
            self.record(view)
        if not self.args.headless:
            import cv2

            cv2.imshow(WINDOW, view)

    def record(self, view: np.ndarray) -> None:
        import cv2

        if self._writer is None:
            h, w = view.shape[:2]
            self._writer = cv2.VideoWriter(self.args.record, cv2.VideoWriter_fourcc(*"mp4v"), self.args.record_fps,
                                           (w, h))
            if not self._writer.isOpened():
                self._writer = None
                raise StreamError(f"cannot write video {self.args.record} (mp4v codec unavailable or path not writable)")
        self._writer.write(view)

    def poll_input(self) -> None:
        if not self.args.headless:
            import cv2

            self.on_key(cv2.waitKey(1) & 0xFF)
        elif self._commands is not None:
            line = self._commands.poll()
            if line:
                self.on_command(line)

    def on_command(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        if word == "teach" and rest.strip():
            self.start_teaching(rest, self.args.teach_frames)
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
                self.start_teaching(self.book.names[k], self.args.teach_frames)
            else:
                self.say(f"no class {k + 1} yet: press t to teach a new one")

    def _on_typing_key(self, key: int) -> None:
        if key in (13, 10):
            name, self.typing = self.typing or "", None
            self.start_teaching(name, self.args.teach_frames)
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
        if not self.args.headless:
            import cv2

            cv2.destroyAllWindows()

    # -- summary --------------------------------------------------------------------------------
    def summary(self) -> Dict[str, Any]:
        """Accuracy on the frames with a ground truth that were not taught, and run statistics."""
        per_class: Dict[str, List[int]] = {}
        for _, pred, truth in self.results:
            per_class.setdefault(truth, []).append(int(pred == truth))
        hits = [h for v in per_class.values() for h in v]
        lat = np.array(self.latencies) * 1e3 if self.latencies else np.zeros(1)
        return {
            "frames": self.frame_index, "evaluated_frames": len(hits),
            "accuracy": float(np.mean(hits)) if hits else None,
            "per_class_accuracy": {k: float(np.mean(v)) for k, v in per_class.items()},
            "known_classes": [self.book.names[c] for c in self.book.known],
            "class_names": list(self.book.names), "trainings": len(self.trainings),
            "latency_ms_mean": float(lat.mean()), "latency_ms_max": float(lat.max()),
        }


# ---------------------------------------------------------------------------------------------
# Start-up: artifacts, learner, state
# ---------------------------------------------------------------------------------------------
def default_weights() -> str:
    """'caffe' when `latent-replay fetch weights` has cached them, else 'random' (announced loudly)."""
    from ..models.fetch import cached_path

    try:
        return "caffe" if cached_path("caffe").is_file() else "random"
    except Exception:  # an unusable cache directory means: no cached weights
        return "random"


def _learner_dir(args: argparse.Namespace) -> Path:
    return Path(args.state) / "learner"


def _saved_state(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    from .state import StateError, load_state

    if args.fresh:
        return None
    try:
        return load_state(_learner_dir(args))
    except FileNotFoundError:
        return None
    except StateError as e:
        raise StreamError(f"{e}; {'or ' if e.previous else ''}start over with --fresh (it replaces the saved "
                          f"learner) or use another --state") from None
    except (OSError, ValueError, KeyError) as e:
        raise StreamError(f"the saved state in {_learner_dir(args)} is unreadable ({e}); "
                          f"remove it or use another --state") from None


def resolve_artifacts(args: argparse.Namespace, method: str, saved: Optional[Dict[str, Any]]):
    """(directory, manifest): --artifacts, or the export in STATE/artifacts, exported when missing."""
    from ..export.manifest import Manifest

    layer = args.latent_layer or (saved["meta"]["latent_layer"] if saved else None)
    classes = args.classes or (int(saved["meta"]["classes"]) if saved else None)
    if args.artifacts:
        manifest = Manifest.load(Path(args.artifacts), verify=True)
        manifest.check_latent_layer(layer)
        return Path(args.artifacts), manifest
    directory = Path(args.state) / "artifacts"
    layer = layer or ("pool6" if method == "cwr" else net.DEFAULT_LATENT_LAYER)
    classes = classes or net.DEFAULT_CLASSES
    try:
        manifest = Manifest.load(directory)
        if manifest.latent_layer == layer and manifest.classes == classes:
            return directory, manifest
    except ValueError:
        pass
    if saved is not None:
        raise StreamError(f"{args.state} holds a learner for {saved['meta']['latent_layer']} with "
                          f"{saved['meta']['classes']} classes but no matching artifacts; use another --state")
    from ..cli import load_weights_announced
    from ..export.exporter import export

    args.weights = args.weights or default_weights()
    weights = load_weights_announced(args)
    print(f"exporting {layer} artifacts ({classes} classes, weights {weights.source}) into {directory} ...",
          file=sys.stderr)
    return directory, export(weights, layer, classes, directory)


def make_config(args: argparse.Namespace, method: str):
    from .learn import LearnerConfig

    lr = args.lr if args.lr is not None else DEFAULT_LR[method]
    epochs = args.epochs if args.epochs is not None else DEFAULT_EPOCHS[method]
    try:
        return LearnerConfig.preset("pytorch", method=method, epochs_first=epochs, epochs=epochs,
                                    replay_memory=args.replay_memory, seed=args.seed,
                                    **LearnerConfig.small_stream_settings(lr))
    except ValueError as e:
        raise StreamError(str(e)) from None


def build_learner(args: argparse.Namespace, artifacts: Path, manifest: Any, saved: Optional[Dict[str, Any]]):
    """The teacher's learner on its own counting Back, restored from the saved state if any."""
    from .learn import Learner
    from .pool import make_pool
    from .engine import Back

    if saved is not None:
        from .learn import LearnerConfig

        config = LearnerConfig.from_dict(saved["meta"]["config"])
        if args.method and args.method != config.method or args.lr is not None or args.epochs is not None:
            print(f"note: {args.state} was trained with method {config.method}, lr {config.lr_later:g}, "
                  f"{config.epochs} epochs; keeping those", file=sys.stderr)
    else:
        config = make_config(args, args.method or "cwr")
    try:
        config.check_compatible(manifest.latent_layer)
    except ValueError as e:
        raise StreamError(str(e)) from None
    # Training runs beside the live loop: threads that busy-wait would steal its cores (spin=False).
    back = Back(artifacts, manifest, args.device, args.train_threads, spin=False)
    pool = make_pool("cpu", config.replay_memory, tuple(manifest.latent_shape), config.storage, config.seed,
                     np.uint8 if manifest.latent_dtype == "uint8" else np.float32) if config.uses_memory else None
    learner = Learner(back, config, pool)
    if saved is not None:
        try:
            learner.load_state_dict(saved)
        except (ValueError, KeyError) as e:
            raise StreamError(f"cannot resume from {args.state}: {e}") from None
    return learner


def save_learner(args: argparse.Namespace, learner: Any, book_meta: Dict[str, Any]) -> None:
    from .state import save_state

    state = learner.state_dict()
    state["meta"][STREAM_META] = book_meta
    save_state(state, _learner_dir(args))


def _book_from(saved: Optional[Dict[str, Any]], capacity: int, schedule: Optional[Schedule]) -> ClassBook:
    meta = (saved or {}).get("meta", {}).get(STREAM_META, {})
    book = ClassBook(capacity, meta.get("class_names", []), meta.get("trained", []))
    if schedule is not None:
        names = schedule.names()
        new = [n for n in names if n not in book.names]
        if len(book.names) + len(new) > capacity:
            raise StreamError(f"the schedule needs {len(book.names) + len(new)} classes but there are only "
                              f"{capacity} (--classes)")
        for name in names:
            book.index(name)
    return book


def _input_size(args: argparse.Namespace) -> int:
    """The frame size of the artifacts the run will use (the export default if none exist yet)."""
    from ..export.manifest import Manifest

    try:
        return int(Manifest.load(Path(args.artifacts or Path(args.state) / "artifacts")).input["size"])
    except ValueError:
        return net.DEFAULT_INPUT_SIZE


def _check_display(args: argparse.Namespace) -> None:
    if args.headless:
        return
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise StreamError("no display (DISPLAY is not set): run with --headless (and --record/--log)")
    import cv2

    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_AUTOSIZE)
    except cv2.error:
        raise StreamError("this OpenCV has no window support (opencv-python-headless): run with --headless, "
                          "or `pip install opencv-python` for the window") from None


def _check_args(args: argparse.Namespace) -> None:
    for name in ("teach_frames", "smooth", "display_size"):
        if getattr(args, name) < 1:
            raise StreamError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.classes is not None and args.classes < 2:
        raise StreamError(f"--classes must be at least 2, got {args.classes}")
    if args.schedule and not args.headless:
        raise StreamError("--schedule drives the headless mode: add --headless")
    if args.reconnect_seconds < 0 or args.max_frames < 0:
        raise StreamError("--reconnect-seconds and --max-frames must be >= 0")


STATE_MARKERS = ("learner", ".learner.previous", "artifacts/manifest.json")  # what makes a folder a --state


class PrimedSource:
    """A source whose first frame was read at start-up -- so that a source that delivers nothing
    (a text file OpenCV 'opens', a camera that gives no image) fails before anything is written --
    and is handed out again as the first frame of the loop."""

    def __init__(self, source: Any, first: np.ndarray) -> None:
        self.source, self._first = source, first

    def read(self) -> Optional[np.ndarray]:
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        return self.source.read()

    def close(self) -> None:
        self.source.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.source, name)


def open_primed(spec: str, input_size: int, seed: int = 0, wait_s: float = 3.0) -> PrimedSource:
    """`open_source` plus its first frame (a live camera gets `wait_s` to deliver it); SourceError
    when there is none."""
    source = open_source(spec, input_size, seed)
    deadline = time.monotonic() + (wait_s if getattr(source, "is_live", False) else 0.0)
    frame = source.read()
    while frame is None and time.monotonic() < deadline:
        time.sleep(0.1)
        frame = source.read()
    if frame is None:
        source.close()
        raise SourceError(f"--source {spec} delivered no frame (not a video, an empty one, or a camera that "
                          f"sends no images)")
    return PrimedSource(source, frame)


def _check_plan(args: argparse.Namespace, method: str, saved: Optional[Dict[str, Any]]) -> None:
    """What would otherwise fail only after exporting: the learner settings (--lr, --epochs), the
    latent layer and its fit with the method, the --artifacts folder."""
    from ..export.manifest import Manifest

    layer = args.latent_layer or (saved["meta"]["latent_layer"] if saved else None)
    if args.artifacts:
        manifest = Manifest.load(Path(args.artifacts))
        manifest.check_latent_layer(layer)
        layer = manifest.latent_layer
    layer = layer or ("pool6" if method == "cwr" else net.DEFAULT_LATENT_LAYER)
    try:
        net.check_latent_layer(layer)
    except ValueError as e:
        raise StreamError(str(e)) from None
    if saved is None:
        try:
            make_config(args, method).check_compatible(layer)
        except ValueError as e:
            raise StreamError(str(e)) from None


def stream_command(args: argparse.Namespace) -> int:
    from ..folders import FolderLock, check_folder
    from .engine import Back, Front
    from .state import check_replaceable
    from .teacher import Teacher

    _check_args(args)
    schedule = load_schedule(args.schedule) if args.schedule else None
    from .runner import RUN_MARKERS

    check_folder(Path(args.state), STATE_MARKERS, "--state", "a stream state (no learner/ or artifacts/)",
                 others=[(RUN_MARKERS[:2], "the output folder of `latent-replay run`")])
    check_replaceable(_learner_dir(args))
    saved = _saved_state(args)
    method = args.method or (saved["meta"]["config"]["method"] if saved else "cwr")
    _check_plan(args, method, saved)
    _check_display(args)  # no window support fails before any export
    source = open_primed(args.source, _input_size(args), args.seed)  # a bad camera fails before any export
    try:
        with FolderLock(Path(args.state), "--state"):
            artifacts, manifest = resolve_artifacts(args, method, saved)
            learner = build_learner(args, artifacts, manifest, saved)
            book = _book_from(saved, int(manifest.classes), schedule)
            live = Back(artifacts, manifest, args.device, args.threads, spin=False)
            live.load_parameters(learner.params)
            predictor = LivePredictor(Front(artifacts, manifest, args.device, args.threads, spin=False), live, book,
                                      args.smooth)
            predictor.version = learner.batches_trained
            log = EventLog(args.log)
            print(f"stream: {args.source} -> {manifest.latent_layer} ({learner.config.method}), "
                  f"{len(book.known)} known classes, state {args.state}", file=sys.stderr)
            _run(args, source, predictor, learner, book, schedule, log, Teacher)
    finally:
        source.close()
    return 0


def _run(args, source, predictor, learner, book, schedule, log, teacher_cls) -> None:
    """Run the loop with a teacher; whatever happens, train what is queued, save, and close."""
    app: Optional[StreamApp] = None
    teacher = teacher_cls(learner, lambda: app.frame_index if app else 0,
                          lambda lrn, job: save_learner(args, lrn, book.meta()))
    app = StreamApp(args, source, predictor, teacher, book, schedule, log)
    switch = sys.getswitchinterval()
    # While the worker runs Python code, the live loop waits for the GIL after every ORT or OpenCV
    # call, up to the switch interval each time (5 ms by default): hand it over sooner.
    sys.setswitchinterval(GIL_SWITCH_S)
    try:
        app.run()
    finally:
        sys.setswitchinterval(switch)
        if app.collecting is not None:
            print(f"stopped while collecting '{app.collecting.name}' ({len(app.collecting.latents)}/"
                  f"{app.collecting.wanted} frames): not trained", file=sys.stderr)
        teacher.close(wait=True)
        app.apply_updates()
        save_learner(args, learner, book.meta())
        app.close()
        summary = app.summary()
        log.write("summary", **summary)
        log.close()
        if args.screenshot and app.last_view is not None:
            _write_image(args.screenshot, app.last_view)
    acc = summary["accuracy"]
    print(f"{summary['frames']} frames, {summary['trainings']} trainings, known: "
          f"{', '.join(summary['known_classes']) or 'none'}; latency {summary['latency_ms_mean']:.1f} ms mean"
          + (f"; accuracy on {summary['evaluated_frames']} untaught frames {100 * acc:.1f}%" if acc is not None else ""))


def _write_image(path: str, image: np.ndarray) -> None:
    import cv2

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(path, image, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise StreamError(f"cannot write image {path}")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def add_stream_command(sub: argparse._SubParsersAction) -> None:
    from ..cli import add_weights_arguments

    p = sub.add_parser(
        "stream", help="live demo: predict from a camera and learn new objects on the fly",
        description="Predict every frame of a camera (or video file, GStreamer pipeline, synthetic objects) "
                    "while teaching new objects: press t and type a name (or 1-9 for a known class) to collect "
                    "--teach-frames frames; the batch trains in the background and the new weights are swapped "
                    "in when done. --headless with --schedule runs a scripted session and logs it. The learner "
                    "lives in --state and is saved after every batch and on exit. --weights defaults to the "
                    "cached caffe weights (`latent-replay fetch weights`), else random.")
    p.add_argument("--source", default="0",
                   help="camera index (default 0), /dev/videoN, a GStreamer pipeline (ending in appsink), a video "
                        "file, or synthetic[:N] for the built-in synthetic objects")
    p.add_argument("--state", default="stream-state",
                   help="folder with the learner state (and the exported artifacts); default ./stream-state. "
                        "Must be new, empty or a state folder of this demo")
    p.add_argument("--fresh", action="store_true",
                   help="start over: ignore the learner saved in --state (it is replaced at the first save)")
    p.add_argument("--artifacts", help="reuse exported artifacts instead of exporting into STATE/artifacts")
    p.add_argument("--latent-layer", "--latent_layer", dest="latent_layer", default=None,
                   help="latent layer when exporting (default pool6 for cwr, conv5_4/dw for ar1free/ar1)")
    p.add_argument("--method", choices=METHODS, default=None,
                   help="cwr (CWR*, head only, default), ar1free (AR1*-free) or ar1 (AR1* with SI)")
    p.add_argument("--classes", type=int, default=None, help="class capacity when exporting (default 50)")
    p.add_argument("--teach-frames", type=int, default=100, help="frames collected per teaching (default 100)")
    p.add_argument("--lr", type=float, default=None,
                   help=f"learning rate of every batch (default {DEFAULT_LR['cwr']} for cwr, "
                        f"{DEFAULT_LR['ar1free']} for ar1free/ar1)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs per batch (default {DEFAULT_EPOCHS['cwr']} for cwr, {DEFAULT_EPOCHS['ar1free']} "
                        f"for ar1free/ar1)")
    p.add_argument("--replay-memory", type=int, default=DEFAULT_MEMORY,
                   help=f"replay memory size in patterns (default {DEFAULT_MEMORY})")
    p.add_argument("--smooth", type=int, default=5, help="frames the prediction is averaged over (default 5)")
    p.add_argument("--headless", action="store_true", help="no window (for boards without a display, and tests)")
    p.add_argument("--schedule", help="JSON file: what to teach at which frames, and ground truth (headless)")
    p.add_argument("--commands", action="store_true",
                   help="headless without schedule: read 'teach NAME' / 'quit' lines from stdin")
    p.add_argument("--log", help="write a JSON-lines log: one line per frame, per training, and a summary")
    p.add_argument("--record", help="write the frames with the overlay to this video (mp4v)")
    p.add_argument("--record-fps", type=float, default=15.0, help="frame rate of --record (default 15)")
    p.add_argument("--screenshot", help="write a frame with the overlay to this PNG (for the README)")
    p.add_argument("--screenshot-frame", type=int, default=-1,
                   help="which frame --screenshot shows (default -1: the last one)")
    p.add_argument("--display-size", type=int, default=384, help="side of the shown image in pixels (default 384)")
    p.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (default 0: no limit)")
    p.add_argument("--reconnect-seconds", type=float, default=10.0,
                   help="how long to retry a camera that stops delivering frames (default 10)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="execution provider (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads of the live loop (0: all cores)")
    p.add_argument("--train-threads", type=int, default=1,
                   help="ONNX Runtime threads of the background training (default 1, leaves cores to the loop)")
    add_weights_arguments(p)
    p.set_defaults(handler=stream_command, weights=None)
