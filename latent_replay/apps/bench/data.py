"""The data of the benchmark's incremental batch, identical on every side (this runtime's engines,
onnxruntime-training, every PyTorch variant), so that their results can be cross-checked and not
only their times compared:

- the new frames (random-weights calibration frames) and their labels;
- the replay memory as after batch 0: `memory` post-ReLU-like patterns with labels, generated in
  chunks of 100 (no big temporary) and inserted by the pool's own insertion rule; the PyTorch side
  places every pattern in the slot that rule gives it (`memory_slots`);
- the order in which the new patterns are consumed: the learner's first draw of its generator
  (`np.random.default_rng([seed, 1]).permutation(n)`), mirrored by the PyTorch side;
- a fingerprint of the trained output layer (its product with a fixed random vector) to compare
  what two implementations learned.
"""
from __future__ import annotations

from typing import Any, Iterator, List, Sequence, Tuple

import numpy as np

from ...models import mobilenet_v1 as net

CLASSES = 50
SEED = 0
CHUNK = 100  # memory patterns generated and inserted at a time


def new_frames(n: int) -> Tuple[np.ndarray, np.ndarray]:
    """The incremental batch's `n` new frames (uint8 NHWC) and their labels."""
    from ...models.random_init import calibration_frames

    frames = calibration_frames(np.random.default_rng(2), n, net.DEFAULT_INPUT_SIZE)
    labels = np.random.default_rng([SEED, 2]).integers(0, CLASSES, n).astype(np.int64)
    return frames, labels


def memory_chunks(shape: Sequence[int], memory: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """The memory's patterns and labels, CHUNK at a time, in generation order."""
    rng = np.random.default_rng([SEED, 3])
    for i in range(0, memory, CHUNK):
        n = min(CHUNK, memory - i)
        yield (np.maximum(rng.standard_normal((n,) + tuple(shape), dtype=np.float32), 0),
               rng.integers(0, CLASSES, n).astype(np.int64))


def fill_pool(pool: Any, shape: Sequence[int], memory: int) -> None:
    """Insert the memory into an empty pool as batch 0, chunk by chunk."""
    for x, y in memory_chunks(shape, memory):
        pool.insert_batch(x, y, 0)


def memory_slots(memory: int, seed: int = SEED) -> np.ndarray:
    """slot[j]: where `fill_pool` puts the j-th generated pattern, found by running the pool's
    insertion rule (which depends on counts only) on a pool of one-value patterns that hold their
    own index."""
    from ...runtime.replay import ReplayPool

    tiny = ReplayPool(memory, (1,), "fp32", seed)
    for i in range(0, memory, CHUNK):
        n = min(CHUNK, memory - i)
        index = np.arange(i, i + n)
        tiny.insert_batch(index.astype(np.float32).reshape(n, 1), index, 0)
    held = tiny.gather(np.arange(memory))[1]  # labels: the index of the pattern in each slot
    if sorted(held.tolist()) != list(range(memory)):
        raise AssertionError("the memory's insertion rule did not place every pattern exactly once")
    slots = np.empty(memory, np.int64)
    slots[held] = np.arange(memory)
    return slots


def new_order(n: int, seed: int = SEED) -> np.ndarray:
    """The order the learner consumes the batch's new patterns in (its generator's first draw)."""
    return np.random.default_rng([seed, 1]).permutation(n)


def fingerprint(head: np.ndarray) -> List[float]:
    """The trained output layer (classes x features) times a fixed random vector."""
    head = np.asarray(head, np.float64)
    v = np.random.default_rng(7).standard_normal(head.shape[1])
    return [float(x) for x in head @ v]


def fingerprint_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """|a - b| / |a|: how far two trained output layers are apart, relative."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))
