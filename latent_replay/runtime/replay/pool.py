"""Replay memory of Latent Replay: (latent, label) pairs, host (numpy) implementation.

The insertion rule (docs/algorithms.md): after training batch i (0-based), choose
`h = min(M // (i + 1), len(batch))` random patterns of the batch (without replacement) and write them
into the empty slots first, then over h random filled slots (without replacement). A label always
travels with its own activation. With `grow=False` (the PyTorch port's rule) only the first
insertion fills empty slots: later ones overwrite `min(h, size)` random filled slots, so the memory
keeps the size of its first filling.

Storage modes:

- ``fp32``: exact.
- ``fp16``: half the memory, relative error about 1e-3.
- ``uint8``: a quarter of the memory. Stored latents are post-ReLU (>= 0), so an unsigned code with
  a per-channel scale and no zero point is enough. The scale of channel c (axis 0 of a CxHxW
  pattern, the single axis of a (1024,) pattern) is fixed once, from the first inserted batch:
  ``max(x[:, c]) / 255`` (1 for an all-zero channel). It is never re-fitted, because re-scaling
  would change the value of patterns already stored; later values above ``255 * scale`` are
  clipped to 255 and counted in ``clipped`` (negative values, which post-ReLU latents never have,
  are clipped to 0 and counted too). The absolute error of an unclipped value is at most scale/2.

Raw frames (latent layer ``data``, ``input_dtype=np.uint8``) are stored as uint8 as they are,
whatever ``storage`` says, and gathered back as uint8.

The slot selection, validation, encoding and state handling live in `ReplayPoolBase`, shared with
the CUDA pool (`pool_cuda.CudaReplayPool`), so the same seed gives the same slots on both.
"""
from __future__ import annotations

import abc
import json
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

STORAGES = ("fp32", "fp16", "uint8")
_STORAGE_DTYPE = {"fp32": np.float32, "fp16": np.float16, "uint8": np.uint8}


def _scalar(value: Any) -> Any:
    """A python scalar from a value that may have gone through np.savez (0-d array)."""
    if isinstance(value, np.ndarray):
        return value.item() if value.ndim == 0 else value.tolist()
    return value


class ReplayPoolBase(abc.ABC):
    """Fixed-capacity replay memory; subclasses say where the patterns live (host or device)."""

    def __init__(self, capacity: int, pattern_shape: Sequence[int], storage: str = "fp32",
                 seed: int = 0, input_dtype: Any = np.float32) -> None:
        if int(capacity) <= 0:
            raise ValueError(f"replay memory capacity must be > 0, got {capacity}")
        if storage not in STORAGES:
            raise ValueError(f"unknown replay storage {storage!r}; choose one of {', '.join(STORAGES)}")
        self._input_dtype = np.dtype(input_dtype)
        if self._input_dtype not in (np.dtype(np.float32), np.dtype(np.uint8)):
            raise ValueError(f"input_dtype must be float32 or uint8, got {self._input_dtype}")
        self._capacity = int(capacity)
        self._shape: Tuple[int, ...] = tuple(int(s) for s in pattern_shape)
        if not self._shape or any(s <= 0 for s in self._shape):
            raise ValueError(f"invalid pattern shape {self._shape}")
        self._raw = self._input_dtype == np.dtype(np.uint8)
        self._storage = "uint8" if self._raw else storage
        self._store_dtype = np.dtype(_STORAGE_DTYPE[self._storage])
        self._quantized = self._storage == "uint8" and not self._raw
        self._rng = np.random.default_rng(seed)
        self._size = 0
        self._labels = np.zeros(self._capacity, dtype=np.int64)
        self._scale = np.ones(self.channels, dtype=np.float32) if self._quantized else None
        self._scale_set = False
        self.clipped = 0  # values clipped by uint8 quantization (see module docstring)

    # ---- properties ----------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def pattern_shape(self) -> Tuple[int, ...]:
        return self._shape

    @property
    def storage(self) -> str:
        """Effective storage ('uint8' for raw frames whatever was asked)."""
        return self._storage

    @property
    def input_dtype(self) -> np.dtype:
        """Dtype of inserted and gathered patterns (float32, or uint8 for raw frames)."""
        return self._input_dtype

    @property
    def channels(self) -> int:
        return self._shape[0]

    @property
    def pattern_values(self) -> int:
        return int(np.prod(self._shape))

    @property
    def bytes_per_pattern(self) -> int:
        """Bytes of one stored pattern (label and shared scale excluded)."""
        return self.pattern_values * self._store_dtype.itemsize

    @property
    def nbytes(self) -> int:
        """Bytes allocated for patterns, labels and scales."""
        scale = self._scale.nbytes if self._scale is not None else 0
        return self._capacity * self.bytes_per_pattern + self._labels.nbytes + scale

    @property
    def scale(self) -> Optional[np.ndarray]:
        """Per-channel uint8 scale (None unless storage is uint8 for float latents)."""
        return None if self._scale is None else self._scale.copy()

    def __len__(self) -> int:
        return self._size

    @property
    def labels(self) -> np.ndarray:
        """Labels of the filled slots (a copy)."""
        return self._labels[: self._size].copy()

    def class_counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self._labels[: self._size], minlength=num_classes)[:num_classes]

    # ---- insertion -----------------------------------------------------------------------------
    def select(self, n: int, batch_index: int, grow: bool = True) -> Tuple[np.ndarray, np.ndarray]:
        """The insertion rule: (indices into the batch, destination slots); advances the RNG.
        `grow=False`: empty slots are filled only while the memory is empty (see the module docstring)."""
        if batch_index < 0:
            raise ValueError(f"batch_index must be >= 0, got {batch_index}")
        h = min(self._capacity // (batch_index + 1), n)
        fixed = not grow and self._size > 0
        if fixed:
            h = min(h, self._size)
        if h <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        src = self._rng.choice(n, size=h, replace=False).astype(np.int64)
        n_empty = 0 if fixed else min(h, self._capacity - self._size)
        empty = np.arange(self._size, self._size + n_empty, dtype=np.int64)
        rest = h - n_empty
        filled = (self._rng.choice(self._size, size=rest, replace=False).astype(np.int64)
                  if rest else np.zeros(0, np.int64))
        return src, np.concatenate([empty, filled])

    def insert_batch(self, latents: np.ndarray, labels: np.ndarray, batch_index: int, grow: bool = True) -> int:
        """Add patterns of training batch `batch_index` by the insertion rule; returns h."""
        latents, labels = self._check_batch(latents, labels)
        src, slots = self.select(len(latents), batch_index, grow)
        if len(src) == 0:
            return 0
        if self._quantized and not self._scale_set:
            self._fit_scale(latents)
        self._write(slots, self.encode(latents[src]), labels[src])
        self._labels[slots] = labels[src]
        self._size = max(self._size, int(slots.max()) + 1)
        return len(src)

    def _check_batch(self, latents: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        latents = np.asarray(latents)
        labels = np.asarray(labels)
        if latents.shape[1:] != self._shape:
            raise ValueError(f"latents of shape {latents.shape[1:]} do not fit a pool of {self._shape}")
        if labels.shape != (len(latents),):
            raise ValueError(f"{len(latents)} latents but labels of shape {labels.shape}")
        if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0):
            raise ValueError("labels must be non-negative integers")
        if self._raw and latents.dtype != np.uint8:
            raise ValueError(f"this pool stores raw uint8 frames, got {latents.dtype}")
        return latents, labels.astype(np.int64)

    # ---- encoding ------------------------------------------------------------------------------
    def _channel_view(self, x: np.ndarray) -> np.ndarray:
        """Reshape a scale vector to broadcast over (N,) + pattern_shape."""
        return x.reshape((1, self.channels) + (1,) * (len(self._shape) - 1))

    def _fit_scale(self, latents: np.ndarray) -> None:
        axes = tuple(i for i in range(latents.ndim) if i != 1)
        peak = np.max(latents.astype(np.float32), axis=axes) if latents.size else np.zeros(self.channels)
        scale = (peak / 255.0).astype(np.float32)
        scale[~(scale > 0)] = 1.0
        self._scale[:] = scale
        self._scale_set = True

    def encode(self, latents: np.ndarray) -> np.ndarray:
        """Patterns in the stored dtype (counts clipped values for uint8)."""
        if self._raw:
            return np.ascontiguousarray(latents, dtype=np.uint8)
        x = latents.astype(np.float32, copy=False)
        if not self._quantized:
            return np.ascontiguousarray(x.astype(self._store_dtype))
        q = np.rint(x / self._channel_view(self._scale))
        self.clipped += int(np.count_nonzero((q > 255) | (q < 0)))
        return np.clip(q, 0, 255).astype(np.uint8)

    def decode(self, stored: np.ndarray) -> np.ndarray:
        """Stored patterns back in `input_dtype`."""
        if self._raw:
            return stored
        if self._quantized:
            return stored.astype(np.float32) * self._channel_view(self._scale)
        return stored.astype(np.float32)

    # ---- reading -------------------------------------------------------------------------------
    def _check_indices(self, indices: Any) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self._size):
            raise IndexError(f"replay indices must be in [0, {self._size}), got {idx.min()}..{idx.max()}")
        return idx

    def gather(self, indices: Any) -> Tuple[np.ndarray, np.ndarray]:
        """(patterns in `input_dtype`, labels int64) of the given filled slots, on the host."""
        idx = self._check_indices(indices)
        return self._gather_host(idx), self._labels[idx].copy()

    def gather_into(self, indices: Any, out: np.ndarray) -> np.ndarray:
        """Write the patterns of the given slots into `out` (host, `input_dtype`, len(indices) rows:
        a slice of the minibatch being assembled); returns their labels."""
        idx = self._check_indices(indices)
        self._decode_into(idx, out)
        return self._labels[idx]

    def _decode_into(self, idx: np.ndarray, out: np.ndarray) -> None:
        out[...] = self._gather_host(idx)

    def drop_class(self, label: int) -> int:
        """Remove every pattern of `label`; the others move up to fill the slots in their order (the
        freed slots at the end are filled first by the next batches). Returns how many were dropped."""
        keep = np.flatnonzero(self._labels[: self._size] != int(label)).astype(np.int64)
        dropped = self._size - len(keep)
        if dropped:
            stored, labels = self._read_stored(keep), self._labels[keep].copy()
            if len(keep):
                self._write(np.arange(len(keep), dtype=np.int64), stored, labels)
            self._labels[: len(keep)] = labels
            self._size = len(keep)
        return dropped

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Numpy arrays and JSON-able scalars; `np.savez(**pool.state_dict())` can store it."""
        state: Dict[str, Any] = {
            "capacity": self._capacity,
            "pattern_shape": list(self._shape),
            "storage": self._storage,
            "input_dtype": self._input_dtype.name,
            "size": self._size,
            "clipped": self.clipped,
            "rng_state": json.dumps(self._rng.bit_generator.state),
            "patterns": self._read_stored(np.arange(self._size, dtype=np.int64)),
            "labels": self._labels[: self._size].copy(),
        }
        if self._scale is not None:
            state["scale"] = self._scale.copy()
            state["scale_set"] = self._scale_set
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore a `state_dict()`; the future behaviour (slot choices included) is identical."""
        meta = {k: _scalar(state[k]) for k in ("capacity", "pattern_shape", "storage", "input_dtype")}
        mine = {"capacity": self._capacity, "pattern_shape": list(self._shape),
                "storage": self._storage, "input_dtype": self._input_dtype.name}
        if meta != mine:
            raise ValueError(f"replay state {meta} does not match this pool {mine}")
        size = int(_scalar(state["size"]))
        patterns = np.asarray(state["patterns"])
        if patterns.shape != (size,) + self._shape or patterns.dtype != self._store_dtype:
            raise ValueError("replay state patterns do not match its size/shape/storage")
        self._size = 0
        if size:
            slots = np.arange(size, dtype=np.int64)
            labels = np.asarray(state["labels"], dtype=np.int64)
            self._write(slots, patterns, labels)
            self._labels[:size] = labels
        self._size = size
        self.clipped = int(_scalar(state["clipped"]))
        self._rng.bit_generator.state = json.loads(str(_scalar(state["rng_state"])))
        if self._scale is not None:
            self._scale[:] = np.asarray(state["scale"], dtype=np.float32)
            self._scale_set = bool(_scalar(state["scale_set"]))
        self._on_scale_loaded()

    @classmethod
    def from_state_dict(cls, state: Dict[str, Any], **kwargs: Any):
        """A new pool rebuilt from `state_dict()` (extra kwargs go to the constructor)."""
        pool = cls(int(_scalar(state["capacity"])), tuple(_scalar(state["pattern_shape"])),
                   storage=str(_scalar(state["storage"])),
                   input_dtype=np.dtype(str(_scalar(state["input_dtype"]))), **kwargs)
        pool.load_state_dict(state)
        return pool

    # ---- storage hooks -------------------------------------------------------------------------
    @abc.abstractmethod
    def _write(self, slots: np.ndarray, stored: np.ndarray, labels: np.ndarray) -> None:
        """Put encoded patterns (stored dtype) and their labels into the given slots."""

    @abc.abstractmethod
    def _read_stored(self, idx: np.ndarray) -> np.ndarray:
        """Encoded patterns of the given slots, as a host array."""

    def _gather_host(self, idx: np.ndarray) -> np.ndarray:
        return self.decode(self._read_stored(idx))

    def _on_scale_loaded(self) -> None:
        """Hook for pools that keep a copy of the scale elsewhere (the device)."""


class ReplayPool(ReplayPoolBase):
    """Replay memory in host memory (numpy)."""

    def __init__(self, capacity: int, pattern_shape: Sequence[int], storage: str = "fp32",
                 seed: int = 0, input_dtype: Any = np.float32) -> None:
        super().__init__(capacity, pattern_shape, storage, seed, input_dtype)
        self._patterns = np.zeros((self._capacity,) + self._shape, dtype=self._store_dtype)

    def _write(self, slots: np.ndarray, stored: np.ndarray, labels: np.ndarray) -> None:
        self._patterns[slots] = stored

    def _read_stored(self, idx: np.ndarray) -> np.ndarray:
        return self._patterns[idx]

    def _decode_into(self, idx: np.ndarray, out: np.ndarray) -> None:
        """One pass into the minibatch: no intermediate copies (they cost ~3% of a step at conv5_4/dw)."""
        if self._patterns.dtype == out.dtype:
            np.take(self._patterns, idx, axis=0, out=out)
        elif self._quantized:
            np.multiply(self._patterns[idx], self._channel_view(self._scale), out=out)
        else:
            out[...] = self._patterns[idx]
