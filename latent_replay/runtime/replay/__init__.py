"""The replay memory: (latent, label) pairs in host memory (`pool.py`) or CUDA memory (`cuda.py`).

Both pools share the insertion rule, storage formats and state (`ReplayPoolBase`), so the same seed
gives the same memory on either device.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .pool import STORAGES, ReplayPool, ReplayPoolBase

__all__ = ["STORAGES", "ReplayPool", "ReplayPoolBase", "make_pool", "pool_for"]


def make_pool(device: str, capacity: int, pattern_shape: Sequence[int], storage: str = "fp32",
              seed: int = 0, input_dtype: Any = np.float32, **kwargs: Any) -> ReplayPoolBase:
    """'cpu' -> ReplayPool, 'cuda' -> CudaReplayPool (RuntimeError saying why if unavailable)."""
    if device == "cpu":
        return ReplayPool(capacity, pattern_shape, storage, seed, input_dtype)
    if device == "cuda":
        from .cuda import CudaReplayPool, cuda_available
        ok, reason = cuda_available()
        if not ok:
            raise RuntimeError(f"CUDA replay pool unavailable: {reason}; use --device cpu")
        return CudaReplayPool(capacity, pattern_shape, storage, seed, input_dtype, **kwargs)
    raise ValueError(f"unknown pool device {device!r}; choose 'cpu' or 'cuda'")


def pool_for(device: str, capacity: int, pattern_shape: Sequence[int], storage: str = "fp32", seed: int = 0,
             input_dtype: Any = np.float32) -> ReplayPoolBase:
    """The pool for an engine on `device`: in CUDA memory when pycuda can provide it, else on the host
    (the engine then copies each minibatch to the device; slower, same results)."""
    if device == "cuda":
        try:
            return make_pool("cuda", capacity, pattern_shape, storage, seed, input_dtype)
        except RuntimeError:
            pass
    return make_pool("cpu", capacity, pattern_shape, storage, seed, input_dtype)
