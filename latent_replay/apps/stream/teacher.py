"""Background training for the live stream: a worker thread that owns its own learner.

Why a worker: an incremental batch takes from milliseconds (pool6 + CWR*) to seconds (AR1*-free at
conv5_4/dw); the camera loop must keep predicting meanwhile. Why its own learner: ONNX Runtime
objects are not shared between threads here. The worker trains a `Learner` on its own `Back` (a
second training Module opened on the same artifacts); the live loop predicts with another `Back`
it alone touches. When a batch is done the worker publishes a copy of the parameter arrays under a
lock; the live loop takes them between two frames and loads them into its Module (`take_updates`),
so a prediction always sees either the old or the new weights, never a mix.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ...runtime.learn import LearnerHooks


class YieldingProgress(LearnerHooks):
    """Counts the running batch's steps (the demo shows training progress) and hands the
    interpreter lock to the live loop before each one: ORT's step holds the lock while it runs, so
    without the hand-over a frame waiting to be predicted can sit behind several steps."""

    def __init__(self) -> None:
        self.done, self.total = 0, 0
        self.loss: Optional[float] = None  # of the last step

    def after_step(self, learner: Any, loss: float) -> None:
        self.loss = float(loss)

    def begin_batch(self, learner: Any, batch_index: int, plan: Any, steps: int) -> None:
        self.done, self.total = 0, steps

    def before_step(self, learner: Any) -> None:
        time.sleep(0)  # yield the GIL: a waiting live-loop thread runs first
        self.done += 1


@dataclass
class TrainJob:
    """One incremental batch: the collected frames' latents (computed once, by the live loop)."""

    label: int
    name: str
    latents: np.ndarray
    first_frame: int
    last_frame: int
    submitted_frame: int
    book_meta: Optional[Dict[str, Any]] = None  # the class book to save with the trained learner


@dataclass
class ForgetJob:
    """Forget one class (`Learner.forget_class`), then save with `book_meta` (the book without it)."""

    label: int
    name: str
    book_meta: Dict[str, Any]


@dataclass
class SaveJob:
    """Save the learner now, with `book_meta`; in the queue's order, so after what was submitted before."""

    book_meta: Dict[str, Any]


@dataclass
class Update:
    """What a finished batch publishes: new parameters and a record for the log."""

    params: Optional[Dict[str, np.ndarray]]  # None: a job that changed no weights (a save)
    record: Dict[str, Any] = field(default_factory=dict)
    job: Any = None

    @property
    def kind(self) -> str:
        return {TrainJob: "training", ForgetJob: "forget"}.get(type(self.job), "save")


class Teacher:
    """Runs `TrainJob`s one after another on a worker thread; see the module docstring.

    `learner` is used only by the worker once the teacher is started (until `close`).
    `frame_now` tells the worker which frame the live loop is at (for the log); `after_batch` runs
    on the worker after each published job (the stream saves the learner state there). Besides
    `TrainJob`s the queue takes `ForgetJob`s and `SaveJob`s: everything that touches the learner
    runs on the worker, in the order it was submitted.
    """

    def __init__(self, learner: Any, frame_now: Callable[[], int],
                 after_batch: Optional[Callable[[Any, Any], None]] = None) -> None:
        self.learner = learner
        self._steps = YieldingProgress()
        learner.hooks.append(self._steps)
        self._frame_now = frame_now
        self._after_batch = after_batch
        self._jobs: "queue.Queue[Optional[TrainJob]]" = queue.Queue()
        self._lock = threading.Lock()
        self._outstanding = 0  # submitted and not yet taken by the live loop
        self._updates: List[Update] = []
        self._current: Optional[str] = None  # class name of the running job
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="teacher", daemon=True)
        self._thread.start()

    # -- live-loop side -------------------------------------------------------------------------
    def submit(self, job: Any) -> None:
        with self._lock:
            self._outstanding += 1
        self._jobs.put(job)

    @property
    def busy(self) -> bool:
        """True from `submit` until the live loop has taken the new weights."""
        with self._lock:
            return self._outstanding > 0

    @property
    def queued(self) -> int:
        return self._jobs.qsize()

    def progress(self) -> Optional[Tuple[str, float]]:
        """(class name, fraction of steps done) of the running batch, or None."""
        with self._lock:
            current = self._current
        if current is None:
            return None
        return current, min(1.0, self._steps.done / max(1, self._steps.total))

    def steps(self) -> Dict[str, Any]:
        """The running batch's step i of n and the last step's loss (for the web page)."""
        return {"step": self._steps.done, "steps": self._steps.total, "loss": self._steps.loss}

    def take_updates(self) -> List[Update]:
        """Finished batches since the last call (oldest first); re-raises a worker failure."""
        with self._lock:
            updates, self._updates = self._updates, []
            self._outstanding -= len(updates)
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return updates

    def close(self, wait: bool = True) -> None:
        """Stop the worker; with `wait`, queued jobs are trained first."""
        if not wait:
            self._drain()
        self._jobs.put(None)
        self._thread.join()

    def _drain(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                with self._lock:
                    self._outstanding -= 1

    # -- worker side ----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if isinstance(job, TrainJob):
                    self._train(job)
                else:
                    self._other(job)
            except BaseException as e:  # handed to the live loop by take_updates
                with self._lock:
                    self._outstanding -= 1
                    self._current = None
                self.error = e

    def _train(self, job: TrainJob) -> None:
        learner = self.learner
        batch_index = learner.batches_trained
        with self._lock:
            self._current = job.name
        start_frame, t0 = self._frame_now(), time.perf_counter()
        stats = learner.train_batch(job.latents, np.full(len(job.latents), job.label, np.int64), batch_index)
        params = {n: v.copy() for n, v in learner.params.items()}
        record = {"label": job.name, "class": job.label, "frames": len(job.latents),
                  "first_frame": job.first_frame, "last_frame": job.last_frame,
                  "submitted_frame": job.submitted_frame, "start_frame": start_frame,
                  "batch": batch_index, "duration_s": time.perf_counter() - t0,
                  "loss": stats["loss"], "iterations": stats["iterations"]}
        with self._lock:
            self._updates.append(Update(params, record, job))
            self._current = None
        self._follow_up(job)

    def _other(self, job: Any) -> None:
        """A ForgetJob (new weights published) or a SaveJob (nothing but the save)."""
        params, record = None, {}
        if isinstance(job, ForgetJob):
            record = dict(label=job.name, **{"class": job.label}, **self.learner.forget_class(job.label))
            params = {n: v.copy() for n, v in self.learner.params.items()}
        with self._lock:
            self._updates.append(Update(params, record, job))
        self._follow_up(job)

    def _follow_up(self, job: Any) -> None:
        if self._after_batch is not None:
            try:
                self._after_batch(self.learner, job)
            except BaseException as e:  # the job is published; only the follow-up failed
                self.error = e
