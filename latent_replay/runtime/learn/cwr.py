"""CWR* on the output layer: reset before a batch, consolidate after it (docs/algorithms.md, CWR*)."""
from __future__ import annotations

from typing import Dict, Mapping

import numpy as np


class Cwr:
    """CWR* on the output layer (docs/algorithms.md; the port's reset/consolidate_weights)."""

    def __init__(self, classes: int, features: int, unseen_rows: str = "trained") -> None:
        self.cw = np.zeros((classes, features), np.float32)
        self.past = np.zeros(classes, np.int64)
        self.unseen_rows = unseen_rows
        self.classes = np.zeros(0, np.int64)
        self.cur = np.zeros(classes, np.int64)

    def begin(self, new_labels: np.ndarray, memory_labels: np.ndarray) -> np.ndarray:
        """Record the batch's classes and counts (new + memory); return the reset output layer."""
        n = len(self.past)
        self.cur = (np.bincount(new_labels, minlength=n) + np.bincount(memory_labels, minlength=n))[:n]
        self.classes = np.flatnonzero(self.cur)
        head = np.zeros_like(self.cw)
        head[self.classes] = self.cw[self.classes]
        return head

    def consolidate(self, trained: np.ndarray) -> np.ndarray:
        """Fold the trained rows into `cw` (one scalar mean shift); return the inference layer."""
        cls = self.classes
        tw = trained.astype(np.float64)
        avg = tw[cls].mean()
        w = np.sqrt(self.past[cls] / self.cur[cls])[:, None]
        self.cw[cls] = ((self.cw[cls] * w + (tw[cls] - avg)) / (w + 1.0)).astype(np.float32)
        self.past[cls] += self.cur[cls]
        return self.inference_head(trained)

    def inference_head(self, trained: np.ndarray) -> np.ndarray:
        """`cw` for every class ever consolidated; other rows keep the trained values (as the port's
        set_consolidate_weights) or are zero."""
        head = trained.copy() if self.unseen_rows == "trained" else np.zeros_like(self.cw)
        seen = self.past > 0
        head[seen] = self.cw[seen]
        return head

    def state(self) -> Dict[str, np.ndarray]:
        return {"cwr/cw": self.cw.copy(), "cwr/past": self.past.copy()}

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.cw = np.array(arrays["cwr/cw"], np.float32)
        self.past = np.array(arrays["cwr/past"], np.int64)
