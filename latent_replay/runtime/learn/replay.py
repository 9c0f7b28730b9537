"""Latent replay's minibatches: how many new and replayed patterns each holds, and in what order.

With N new patterns and M in the memory, every minibatch holds `N // ((N + M) // mb)` new patterns
and the rest replayed (NICv2-391: 21 + 107); an epoch walks over the new patterns once (shuffled
once per batch, or every epoch) and consumes the memory in consecutive slices (slot order, or
shuffled once per batch or every epoch), wrapping around at its end. The pool decides where the
stored patterns live (`pool.py`, `pool_cuda.py`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Tuple

import numpy as np

from .config import LearnerConfig


@dataclass(frozen=True)
class MinibatchPlan:
    """Per-epoch layout: `iterations` minibatches of `new_per_mb` new + `replay_per_mb` replayed."""

    new_per_mb: int
    replay_per_mb: int
    iterations: int
    padded: int  # new patterns repeated to fill the last minibatch (no-memory case)


def plan_minibatches(n_new: int, n_mem: int, minibatch: int, pad: bool = True) -> MinibatchPlan:
    """docs/algorithms.md / the PyTorch port.

    With a memory: `new = N // ((N + M) // mb)`, `replay = mb - new`, `N // new` iterations
    (NICv2-391: 300 + 1500 -> 21 + 107, 14 iterations). Without: plain minibatches of `mb` new
    patterns, the last one filled up by repeating patterns (the port's `pad_data`) when `pad`.
    """
    if n_new <= 0:
        raise ValueError("a training batch needs at least one pattern")
    if n_mem <= 0:
        if pad:
            iterations = -(-n_new // minibatch)
            return MinibatchPlan(minibatch, 0, iterations, iterations * minibatch - n_new)
        return MinibatchPlan(min(minibatch, n_new), 0, max(1, n_new // minibatch), 0)
    groups = (n_new + n_mem) // minibatch
    if groups == 0:  # everything fits in one minibatch smaller than `minibatch`
        return MinibatchPlan(n_new, n_mem, 1, 0)
    new = max(1, n_new // groups)
    return MinibatchPlan(new, max(0, minibatch - new), n_new // new, 0)


def memory_order(rng: np.random.Generator, n_mem: int, shuffle: str) -> np.ndarray:
    """Slot order in which the memory is consumed: slot order (port) or shuffled."""
    if n_mem == 0 or shuffle == "none":
        return np.arange(n_mem, dtype=np.int64)
    return rng.permutation(n_mem)


def minibatches(latents: np.ndarray, labels: np.ndarray, plan: MinibatchPlan, pool: Any, epochs: int,
                rng: np.random.Generator, config: LearnerConfig, on_device: bool = False) -> Iterator[Tuple[Any, np.ndarray]]:
    """Every training minibatch of one incremental batch, in order: (patterns, labels).

    The patterns are a view of a buffer that the next minibatch overwrites (consume it first), or,
    with `on_device`, an OrtValue the pool assembled on its device without a trip through the host."""
    n = len(latents)
    n_mem = len(pool) if pool is not None else 0
    # padding repeats patterns from the start (cycling when the batch is smaller than the padding)
    base = np.concatenate([np.arange(plan.padded, dtype=np.int64) % n, np.arange(n, dtype=np.int64)])
    order = rng.permutation(base)
    slots_order = memory_order(rng, n_mem, config.replay_shuffle)
    size = plan.new_per_mb + plan.replay_per_mb
    x = np.empty((size,) + latents.shape[1:], latents.dtype)
    y = np.empty(size, np.int64)
    for epoch in range(epochs):
        if epoch and config.shuffle_each_epoch:
            order = rng.permutation(base)
        if epoch and config.replay_shuffle == "epoch":
            slots_order = memory_order(rng, n_mem, config.replay_shuffle)
        for it in range(plan.iterations):
            idx = order[it * plan.new_per_mb:(it + 1) * plan.new_per_mb]
            k = len(idx)
            np.take(latents, idx, axis=0, out=x[:k])
            y[:k] = labels[idx]
            if not plan.replay_per_mb:
                yield x[:k], y[:k]
                continue
            slots = slots_order[(it * plan.replay_per_mb + np.arange(plan.replay_per_mb)) % n_mem]
            if on_device:
                batch, my = pool.minibatch_ortvalue(x[:k], slots)
                y[k:k + len(slots)] = my
                yield batch, y[:k + len(slots)]
                continue
            mx, my = pool.gather(slots)
            x[k:k + len(slots)] = mx
            y[k:k + len(slots)] = my
            yield x[:k + len(slots)], y[:k + len(slots)]
