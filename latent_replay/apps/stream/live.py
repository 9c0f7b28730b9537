"""The live side of the stream demo: frame sources, class names, the per-frame predictor, the event
log, the teaching in progress and headless commands."""
from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...runtime.sources.base import SourceError
from .common import SYNTHETIC_DIFFICULTY, SYNTHETIC_PERIOD, StreamError


class SyntheticStream:
    """An endless live-like source: the built-in synthetic objects, one after another, each shown
    for `period` frames while it turns (`SyntheticScenario`, session 0, at `difficulty`: see
    `common.SYNTHETIC_DIFFICULTY`)."""

    is_live = False  # never stops delivering frames, so there is nothing to reconnect

    def __init__(self, input_size: int, objects: int = 3, seed: int = 0, period: int = SYNTHETIC_PERIOD,
                 difficulty: float = SYNTHETIC_DIFFICULTY) -> None:
        from ...runtime.sources.synthetic import SyntheticScenario

        self.scenario = SyntheticScenario(classes=max(2, objects), first_classes=1, input_size=input_size,
                                          seed=seed, difficulty=difficulty)
        self.objects, self.period, self.k = objects, period, 0

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
    from ...runtime.sources.video import VideoSource

    return VideoSource(spec, input_size)


class ClassBook:
    """Class names <-> output indices, in order of first use; `trained` are those the head knows.
    A forgotten class leaves its output free (name "") for the next new name; `frames` counts the
    frames each output was taught with."""

    def __init__(self, capacity: int, names: Sequence[str] = (), trained: Sequence[int] = (),
                 frames: Sequence[int] = ()) -> None:
        self.capacity = int(capacity)
        self.names: List[str] = list(names)
        self.trained = set(int(t) for t in trained)
        self.frames: Dict[int, int] = {i: int(n) for i, n in enumerate(frames) if n}

    def index(self, name: str) -> int:
        if name in self.names:
            return self.names.index(name)
        if "" in self.names:  # a forgotten class's output
            free = self.names.index("")
            self.names[free] = name
            return free
        if len(self.names) >= self.capacity:
            raise StreamError(f"cannot add class {name!r}: all {self.capacity} classes are used "
                              f"(start over with a new --state and a larger --classes)")
        self.names.append(name)
        return len(self.names) - 1

    @property
    def known(self) -> List[int]:
        return sorted(self.trained)

    def forget(self, label: int) -> None:
        self.trained.discard(label)
        self.frames.pop(label, None)
        self.names[label] = ""

    def meta(self) -> Dict[str, Any]:
        return {"class_names": list(self.names), "trained": self.known,
                "frames": [self.frames.get(i, 0) for i in range(len(self.names))]}


class LivePredictor:
    """Front + the live loop's own `Back`: a frame -> (latent, probabilities over the trained
    classes, latency). Parameters arrive from the teacher through `load`."""

    def __init__(self, front: Any, back: Any, book: ClassBook, smooth: int) -> None:
        self.front, self.back, self.book = front, back, book
        self.classes = int(back.manifest.classes)
        self._recent: "deque[np.ndarray]" = deque(maxlen=max(1, smooth))
        self.version = 0  # number of batches whose weights are loaded
        self.last_mean: Optional[np.ndarray] = None  # the smoothed probabilities of the last frame

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
        mean = np.zeros(self.classes)
        known = self.book.known  # a class forgotten since is out of the running at once
        mean[known] = np.mean(self._recent, axis=0)[known]
        self.last_mean = mean
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
