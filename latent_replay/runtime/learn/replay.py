"""Latent replay's minibatches: how many new and replayed patterns each holds, and in what order.

With N new patterns and M in the memory, every minibatch holds `N // ((N + M) // mb)` new patterns
and the rest replayed (NICv2-391: 21 + 107); an epoch walks over the new patterns once (shuffled
once per batch, or every epoch) and consumes the memory in consecutive slices (slot order, or
shuffled once per batch or every epoch), wrapping around at its end. The pool decides where the
stored patterns live (`replay/pool.py`, `replay/cuda.py`).

The port's rules (`replay_rules` "port"): M in that formula is the configured memory size, not the
number of stored patterns, and a slice that runs past the end of the memory is cut short (empty
when it starts past the end) instead of wrapping around; `epoch0_patterns` says which new patterns
the port stores (those its epoch-0 minibatches held, padding duplicates included).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional, Tuple

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


def plan_port(n_new: int, n_mem: int, memory_size: int, minibatch: int, pad: bool = True) -> MinibatchPlan:
    """The port's plan: with a memory, `new = N // ((N + M) // mb)` with M the configured
    `memory_size`, `replay = mb - new`, `N // new` iterations; without one, as `plan_minibatches`.
    Where the port divides by zero (N + M < mb, or N < (N + M) // mb) one minibatch holds all N new
    patterns, or each holds one."""
    if n_mem <= 0:
        return plan_minibatches(n_new, 0, minibatch, pad)
    if n_new <= 0:
        raise ValueError("a training batch needs at least one pattern")
    per_mb = max(1, n_new // max(1, (n_new + int(memory_size)) // minibatch))
    return MinibatchPlan(per_mb, max(0, minibatch - per_mb), n_new // per_mb, 0)


def epoch0_patterns(order: np.ndarray, plan: MinibatchPlan) -> np.ndarray:
    """Indices of the new patterns the epoch-0 minibatches hold, in order (with the padding's repeats)."""
    return order[:plan.iterations * plan.new_per_mb]


def _padded(n: int, plan: MinibatchPlan) -> np.ndarray:
    """The batch's indices with the padding, which repeats patterns from the start (cycling when the
    batch is smaller than the padding)."""
    return np.concatenate([np.arange(plan.padded, dtype=np.int64) % n, np.arange(n, dtype=np.int64)])


def new_order(n: int, plan: MinibatchPlan, rng: np.random.Generator) -> np.ndarray:
    """The new patterns' order for a batch: the padded indices, shuffled."""
    return rng.permutation(_padded(n, plan))


def memory_order(rng: np.random.Generator, n_mem: int, shuffle: str) -> np.ndarray:
    """Slot order in which the memory is consumed: slot order (port) or shuffled."""
    if n_mem == 0 or shuffle == "none":
        return np.arange(n_mem, dtype=np.int64)
    return rng.permutation(n_mem)


def minibatches(latents: np.ndarray, labels: np.ndarray, plan: MinibatchPlan, pool: Any, epochs: int,
                rng: np.random.Generator, config: LearnerConfig, on_device: bool = False,
                order: Optional[np.ndarray] = None) -> Iterator[Tuple[Any, np.ndarray]]:
    """Every training minibatch of one incremental batch, in order: (patterns, labels).

    `order`: the new patterns' order (`new_order`), drawn here when not given. The patterns are a
    view of a buffer that the next minibatch overwrites (consume it first), or, with `on_device`, an
    OrtValue the pool assembled on its device without a trip through the host."""
    n = len(latents)
    n_mem = len(pool) if pool is not None else 0
    if order is None:
        order = new_order(n, plan, rng)
    base = _padded(n, plan)
    wrap = config.replay_rules != "port"
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
            if wrap:
                slots = slots_order[(it * plan.replay_per_mb + np.arange(plan.replay_per_mb)) % n_mem]
            else:  # the port: a slice past the end of the memory is short or empty
                slots = slots_order[it * plan.replay_per_mb:(it + 1) * plan.replay_per_mb]
                if not len(slots):
                    yield x[:k], y[:k]
                    continue
            if on_device:
                batch, my = pool.minibatch_ortvalue(x[:k], slots)
                y[k:k + len(slots)] = my
                yield batch, y[:k + len(slots)]
                continue
            y[k:k + len(slots)] = pool.gather_into(slots, x[k:k + len(slots)])
            yield x[:k + len(slots)], y[:k + len(slots)]
