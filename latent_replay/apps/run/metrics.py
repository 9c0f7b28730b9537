"""Continual-learning metrics as pure functions over an accuracy matrix.

`matrix[b, c]` is the test accuracy on class c (an object, for CORe50) measured right after
training batch b (0-based, T batches); NaN where class c has no test frame. `first[c]` is the first
training batch that holds class c, -1 when no batch did. In class-incremental batches (NICv2, the
synthetic stream) there are no given tasks, so the "task" of a class is the batch where it first
appears: task i is the set of classes whose first batch is i (batches that bring no new class have
no task). With that, the Lopez-Paz & Ranzato (2017) and Chaudhry et al. (2018) definitions read:

- R[b, i] = mean of matrix[b, c] over the classes c of task i (each class weighs the same);
- average accuracy ACC = mean over every task i of R[T-1, i] (classes never trained do not count);
- backward transfer BWT = mean over the tasks i < T-1 of R[T-1, i] - R[i, i] (accuracy on a task at
  the end minus right after it was learned; negative = forgotten), i.e. 1/(T-1) sum_{i<T} (R_{T,i} -
  R_{i,i}) of the paper when every batch brings one task;
- forgetting of class c with first[c] < T-1 = max over b in [first[c], T-2] of matrix[b, c] minus
  matrix[T-1, c] (best accuracy it had after being learned, before the last batch, minus final;
  positive = forgotten); the forgetting of a run is its mean over those classes.

Classes without test frames are left out everywhere; a metric with no class to average is None.
See README ("What the numbers mean").
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np


def per_class_accuracy(predicted: np.ndarray, truth: np.ndarray, classes: int) -> List[Optional[float]]:
    """Accuracy on each class 0..classes-1 (None for a class with no test frame): one row of the matrix."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if predicted.shape != truth.shape:
        raise ValueError(f"{predicted.shape} predictions for {truth.shape} labels")
    total = np.bincount(truth, minlength=classes)[:classes]
    right = np.bincount(truth[predicted == truth], minlength=classes)[:classes]
    return [float(right[c] / total[c]) if total[c] else None for c in range(classes)]


def first_batches(batch_classes: Sequence[Sequence[int]], classes: int) -> np.ndarray:
    """first[c]: the first batch (index into `batch_classes`) whose training labels hold class c, -1 if none."""
    first = np.full(classes, -1, np.int64)
    for b, labels in enumerate(batch_classes):
        for c in labels:
            if 0 <= int(c) < classes and first[int(c)] < 0:
                first[int(c)] = b
    return first


def as_matrix(rows: Sequence[Sequence[Optional[float]]]) -> np.ndarray:
    """A (T, C) float matrix from JSON rows (None -> NaN)."""
    if not len(rows):
        return np.zeros((0, 0))
    return np.array([[np.nan if v is None else float(v) for v in row] for row in rows], np.float64)


def _check(matrix: np.ndarray, first: np.ndarray) -> None:
    if matrix.ndim != 2 or first.shape != (matrix.shape[1],):
        raise ValueError(f"need a (batches, classes) matrix and one first batch per class, got {matrix.shape} "
                         f"and {first.shape}")
    if first.size and first.max() >= matrix.shape[0]:
        raise ValueError(f"a class first appears in batch {first.max()} of {matrix.shape[0]}")


def _tasks(matrix: np.ndarray, first: np.ndarray) -> Dict[int, np.ndarray]:
    """task (first batch) -> its classes that have test frames."""
    tested = ~np.isnan(matrix).all(0)
    return {int(i): np.flatnonzero((first == i) & tested) for i in sorted(set(first[(first >= 0) & tested]))}


def task_accuracy(matrix: np.ndarray, first: np.ndarray) -> Dict[int, np.ndarray]:
    """task i -> R[:, i]: the class-mean accuracy on task i's classes after every batch."""
    matrix, first = np.asarray(matrix, np.float64), np.asarray(first, np.int64)
    _check(matrix, first)
    return {i: np.nanmean(matrix[:, cls], axis=1) for i, cls in _tasks(matrix, first).items()}


def average_accuracy(matrix: np.ndarray, first: np.ndarray) -> Optional[float]:
    """ACC: the final accuracy on each task (class mean), averaged over the tasks (Lopez-Paz & Ranzato)."""
    r = task_accuracy(matrix, first)
    return float(np.mean([acc[-1] for acc in r.values()])) if r else None


def backward_transfer(matrix: np.ndarray, first: np.ndarray) -> Optional[float]:
    """BWT: mean over the tasks learned before the last batch of (final - right after learning it)."""
    r = task_accuracy(matrix, first)
    last = np.asarray(matrix).shape[0] - 1
    diffs = [acc[last] - acc[i] for i, acc in r.items() if i < last]
    return float(np.mean(diffs)) if diffs else None


def forgetting_per_class(matrix: np.ndarray, first: np.ndarray) -> List[Optional[float]]:
    """Per class: max accuracy after its first batch and before the last one, minus the final
    accuracy; None for classes first seen in the last batch, never trained, or without test frames."""
    matrix, first = np.asarray(matrix, np.float64), np.asarray(first, np.int64)
    _check(matrix, first)
    last = matrix.shape[0] - 1
    out: List[Optional[float]] = []
    for c in range(matrix.shape[1]):
        seen = matrix[first[c]:last, c] if 0 <= first[c] < last else np.zeros(0)
        out.append(float(seen.max() - matrix[last, c]) if seen.size and not np.isnan(seen).any() else None)
    return out


def forgetting(matrix: np.ndarray, first: np.ndarray) -> Optional[float]:
    """Forgetting of a run: the per-class forgetting averaged over the classes seen before the last batch."""
    values = [f for f in forgetting_per_class(matrix, first) if f is not None]
    return float(np.mean(values)) if values else None


def metrics(matrix: np.ndarray, first: np.ndarray, curve: Sequence[float]) -> Dict[str, object]:
    """Every metric of one run: ACC, BWT, forgetting (and per class), the final accuracy over all test
    frames and the mean of the accuracy curve (Rebuffi et al.'s average incremental accuracy)."""
    return {
        "final_accuracy": float(curve[-1]) if len(curve) else None,
        "average_accuracy": average_accuracy(matrix, first),
        "forgetting": forgetting(matrix, first),
        "backward_transfer": backward_transfer(matrix, first),
        "mean_accuracy_over_batches": float(np.mean(curve)) if len(curve) else None,
        "forgetting_per_class": forgetting_per_class(matrix, first),
    }
