"""Callbacks around a learner's work, for the pieces built on it (progress in the camera demo,
timing in the benchmark) so that none of them has to patch or subclass the learner or the engine."""
from __future__ import annotations

import time
from typing import Any, Dict, List


class LearnerHooks:
    """Override what you need; every method does nothing by default."""

    def begin_batch(self, learner: Any, batch_index: int, plan: Any, steps: int) -> None:
        """Before the first step of an incremental batch; `steps` = minibatches it will train."""

    def before_step(self, learner: Any) -> None:
        """Right before each training step."""

    def after_step(self, learner: Any, loss: float) -> None:
        """Right after each training step."""

    def end_batch(self, learner: Any, batch_index: int, stats: Dict[str, Any]) -> None:
        """After the batch (consolidation and memory update included)."""

    def state(self, learner: Any, meta: Dict[str, Any]) -> None:
        """When the learner's state is taken: add what must be saved with it to `meta`."""


class StepTimer(LearnerHooks):
    """Records the wall time of every training step (the engine's share of a batch)."""

    def __init__(self) -> None:
        self.times: List[float] = []
        self._t0 = 0.0

    def before_step(self, learner: Any) -> None:
        self._t0 = time.perf_counter()

    def after_step(self, learner: Any, loss: float) -> None:
        self.times.append(time.perf_counter() - self._t0)
