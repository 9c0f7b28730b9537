"""Frame sources: the batch type and the scenario interface shared by CORe50 and the synthetic stream.

Frames everywhere are uint8 NHWC **BGR** (as OpenCV decodes them), labels int64.
"""
from __future__ import annotations

import abc
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

import numpy as np


class SourceError(ValueError):
    """A data-source problem a user can fix (missing folder, corrupt image, bad camera)."""


@dataclass
class FrameBatch:
    """A batch of frames: uint8 (N, S, S, 3) BGR, optional int64 labels and source paths."""

    frames: np.ndarray
    labels: Optional[np.ndarray]
    name: str
    paths: Optional[List[str]] = None

    def __post_init__(self) -> None:
        if self.frames.dtype != np.uint8 or self.frames.ndim != 4 or self.frames.shape[-1] != 3:
            raise SourceError(f"{self.name}: frames must be uint8 (N, H, W, 3), got "
                              f"{self.frames.dtype} {self.frames.shape}")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            if self.labels.shape != (len(self.frames),):
                raise SourceError(f"{self.name}: {len(self.frames)} frames but {self.labels.shape} labels")

    def __len__(self) -> int:
        return len(self.frames)


class Scenario(abc.ABC):
    """A continual-learning stream: training batches in order plus a fixed test set."""

    name: str = "scenario"
    num_classes: int = 0
    input_size: int = 128
    workers: int = 2

    @property
    @abc.abstractmethod
    def n_batches(self) -> int:
        """Number of training batches."""

    @property
    @abc.abstractmethod
    def class_names(self) -> List[str]:
        """One name per class index."""

    @abc.abstractmethod
    def load_batch(self, i: int) -> FrameBatch:
        """Training batch i (0-based), decoded."""

    @abc.abstractmethod
    def test_set(self) -> FrameBatch:
        """The whole test set, decoded."""

    def test_labels(self) -> np.ndarray:
        """The test set's labels (sources that know them without decoding say so)."""
        return np.asarray(self.test_set().labels, np.int64)

    @property
    def test_size(self) -> int:
        return len(self.test_labels())

    def batch_sizes(self) -> Optional[List[int]]:
        """Frames per training batch when known without decoding them (None otherwise)."""
        return None

    def describe(self) -> Optional[Dict[str, object]]:
        """The stream's plan for results.json when the source makes one (None: fixed lists, seeds)."""
        return None

    def _check_index(self, i: int) -> int:
        if not 0 <= i < self.n_batches:
            raise SourceError(f"{self.name}: batch {i} out of range (0..{self.n_batches - 1})")
        return i

    def iter_train(self, start: int = 0) -> Iterator[FrameBatch]:
        """Batches start..end in order; batch i+1 is decoded in the background while i is used."""
        if self.n_batches == 0 or start >= self.n_batches:
            return
        self._check_index(start)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
            pending = pool.submit(self.load_batch, start)
            for i in range(start, self.n_batches):
                batch = pending.result()
                if i + 1 < self.n_batches:
                    pending = pool.submit(self.load_batch, i + 1)
                yield batch

    def iter_test(self, chunk: int = 512) -> Iterator[FrameBatch]:
        """The test set in chunks of at most `chunk` frames (default: slices of `test_set()`)."""
        test = self.test_set()
        for s in range(0, len(test), chunk):
            yield FrameBatch(test.frames[s:s + chunk],
                             None if test.labels is None else test.labels[s:s + chunk],
                             f"{test.name}[{s}:{s + chunk}]",
                             None if test.paths is None else test.paths[s:s + chunk])
