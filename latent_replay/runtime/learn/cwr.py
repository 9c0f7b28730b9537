"""CWR* on the output layer: reset before a batch, consolidate after it (docs/algorithms.md, CWR*)."""
from __future__ import annotations

from typing import Dict, Mapping

import numpy as np


class Cwr:
    """CWR* on the output layer (docs/algorithms.md; the port's reset/consolidate_weights).

    `class_list` "unique" (the paper): every class of the batch and of the memory counts once.
    "per_memory_entry" (the port's code, whose class list is a set built over a tensor, which keeps
    every memory entry): a class counts once if it is in the new batch plus once per memory pattern
    of that class; the mean that is subtracted is weighted by those counts and the running average
    `cw = (cw w + (trained - avg)) / (w + 1)` is applied once per count (`w` does not change within
    a batch), which pulls `cw` towards the trained row.
    """

    def __init__(self, classes: int, features: int, unseen_rows: str = "trained", class_list: str = "unique") -> None:
        self.cw = np.zeros((classes, features), np.float32)
        self.past = np.zeros(classes, np.int64)
        self.unseen_rows = unseen_rows
        self.class_list = class_list
        self.classes = np.zeros(0, np.int64)
        self.cur = np.zeros(classes, np.int64)
        self.entries = np.zeros(classes, np.int64)  # times each class is in the batch's class list

    def begin(self, new_labels: np.ndarray, memory_labels: np.ndarray) -> np.ndarray:
        """Record the batch's classes and counts (new + memory); return the reset output layer."""
        n = len(self.past)
        self.cur = (np.bincount(new_labels, minlength=n) + np.bincount(memory_labels, minlength=n))[:n]
        if self.class_list == "per_memory_entry":
            self.entries = ((np.bincount(new_labels, minlength=n) > 0).astype(np.int64)
                            + np.bincount(memory_labels, minlength=n))[:n]
        else:
            self.entries = (self.cur > 0).astype(np.int64)
        self.classes = np.flatnonzero(self.cur)
        head = np.zeros_like(self.cw)
        head[self.classes] = self.cw[self.classes]
        return head

    def consolidate(self, trained: np.ndarray) -> np.ndarray:
        """Fold the trained rows into `cw` (one scalar mean shift); return the inference layer."""
        cls = self.classes
        tw = trained.astype(np.float64)
        if self.class_list == "per_memory_entry":
            return self._consolidate_per_entry(trained, tw)
        avg = tw[cls].mean()
        w = np.sqrt(self.past[cls] / self.cur[cls])[:, None]
        self.cw[cls] = ((self.cw[cls] * w + (tw[cls] - avg)) / (w + 1.0)).astype(np.float32)
        self.past[cls] += self.cur[cls]
        return self.inference_head(trained)

    def _consolidate_per_entry(self, trained: np.ndarray, tw: np.ndarray) -> np.ndarray:
        """The port's consolidation over its class list with repeats (see the class docstring)."""
        cls = self.classes
        k = self.entries[cls]
        shift = (k[:, None] * tw[cls]).sum() / (k.sum() * tw.shape[1])  # mean over the repeated rows
        weight = np.sqrt(self.past[cls] / self.cur[cls])[:, None]
        cw = self.cw[cls].astype(np.float64)
        for repeat in range(int(k.max()) if len(k) else 0):
            again = k > repeat
            cw[again] = (cw[again] * weight[again] + (tw[cls][again] - shift)) / (weight[again] + 1.0)
        self.cw[cls] = cw.astype(np.float32)
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
