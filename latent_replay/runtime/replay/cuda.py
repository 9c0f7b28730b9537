"""Replay memory in CUDA device memory (pycuda), with on-device gather + dequantize.

Buffers for the whole capacity are allocated once. Insertion encodes on the host (shared code in
`ReplayPoolBase`, so slot choices and quantization match `ReplayPool` exactly) and copies each
pattern into its slot. `gather_device` gathers a minibatch into a preallocated device buffer in the
input dtype (float32, or uint8 for raw frames). pycuda is imported lazily: importing this module
never needs it.

Training minibatches for ONNX Runtime (`minibatch_ortvalue`, `as_ortvalue`) are written straight
into a tensor that ONNX Runtime itself allocated on the device
(`OrtValue.ortvalue_from_shape_and_type(shape, dtype, "cuda", device_id)`, reused while the
minibatch shape stays), through its `data_ptr()`: ORT's CUDA allocations live in the device's
primary context, the one this pool's pycuda context retains. That logic is `OrtValueMinibatches`,
which only needs two copy primitives; `tests/test_pool_ortvalue.py` runs it on the CPU with host
copies and a 'cpu' OrtValue.
"""
from __future__ import annotations

import abc
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .pool import ReplayPoolBase

_KERNELS = r"""
#include <cuda_fp16.h>
extern "C" {
__global__ void gather_f32(const float* src, const long long* idx, float* dst,
                           long long n, long long per) {
  for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < n * per;
       t += (long long)blockDim.x * gridDim.x)
    dst[t] = src[idx[t / per] * per + t % per];
}
__global__ void gather_f16(const __half* src, const long long* idx, float* dst,
                           long long n, long long per) {
  for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < n * per;
       t += (long long)blockDim.x * gridDim.x)
    dst[t] = __half2float(src[idx[t / per] * per + t % per]);
}
__global__ void gather_q8(const unsigned char* src, const long long* idx, const float* scale,
                          float* dst, long long n, long long per, long long per_channel) {
  for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < n * per;
       t += (long long)blockDim.x * gridDim.x) {
    long long c = t % per;
    dst[t] = (float)src[idx[t / per] * per + c] * scale[c / per_channel];
  }
}
__global__ void gather_u8(const unsigned char* src, const long long* idx, unsigned char* dst,
                          long long n, long long per) {
  for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < n * per;
       t += (long long)blockDim.x * gridDim.x)
    dst[t] = src[idx[t / per] * per + t % per];
}
}
"""


def cuda_available() -> Tuple[bool, str]:
    """(True, device name) if pycuda imports and sees a GPU, else (False, the reason)."""
    try:
        import pycuda.driver as cuda
    except Exception as exc:  # ImportError, or a broken CUDA install
        return False, f"pycuda is not installed or does not load ({exc.__class__.__name__}: {exc})"
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            return False, "no CUDA device found"
        return True, cuda.Device(0).name()
    except Exception as exc:
        return False, f"CUDA driver error: {exc}"


class OrtValueMinibatches(ReplayPoolBase):
    """Minibatches as OrtValues allocated by ONNX Runtime on `ort_device`, filled in place.

    A pool whose storage also provides `_copy_to_ptr` (host array -> memory at a pointer on
    `ort_device`) and `_gather_to_ptr` (stored patterns of some slots, decoded to the input dtype ->
    memory at a pointer on `ort_device`)."""

    ort_device = "cuda"
    device_id = 0
    _ort_values: Optional[Dict[int, Any]] = None

    def _ort_buffer(self, rows: int) -> Any:
        """The output tensor for `rows` patterns: allocated by ORT once per size and kept, so that a
        size keeps its device address (the engine's CUDA graphs read their input at a fixed address)."""
        import onnxruntime as ort

        if self._ort_values is None:
            self._ort_values = {}
        value = self._ort_values.get(int(rows))
        if value is None:
            shape: List[int] = [int(rows)] + list(self._shape)
            value = ort.OrtValue.ortvalue_from_shape_and_type(shape, self._input_dtype.type, self.ort_device,
                                                              self.device_id)
            self._ort_values[int(rows)] = value
        return value

    def minibatch_ortvalue(self, new: np.ndarray, indices: Any) -> Tuple[Any, np.ndarray]:
        """A whole training minibatch on the device, handed to ORT without a trip through the host:
        the `new` rows are copied up, the replayed patterns are gathered right after them on the
        device. Returns (OrtValue on `ort_device` of shape (len(new) + len(indices), ...), replay
        labels). The tensor is reused by every later call of the same size."""
        idx = self._check_indices(indices)
        new = np.ascontiguousarray(new, dtype=self._input_dtype)
        if new.shape[1:] != self._shape:
            raise ValueError(f"new patterns of shape {new.shape[1:]} do not fit a pool of {self._shape}")
        k, n = len(new), len(idx)
        value = self._ort_buffer(k + n)
        ptr = int(value.data_ptr())
        if k:
            self._copy_to_ptr(new, ptr)
        if n:
            self._gather_to_ptr(idx, ptr + k * new.itemsize * self.pattern_values)
        return value, self._labels[idx].copy()

    def as_ortvalue(self, indices: Any) -> Tuple[Any, np.ndarray]:
        """The replayed patterns alone as an OrtValue on `ort_device`; returns (value, labels)."""
        empty = np.zeros((0,) + tuple(self._shape), self._input_dtype)
        return self.minibatch_ortvalue(empty, indices)

    @abc.abstractmethod
    def _copy_to_ptr(self, array: np.ndarray, ptr: int) -> None:
        """Copy a contiguous host array to `ptr` on `ort_device`."""

    @abc.abstractmethod
    def _gather_to_ptr(self, idx: np.ndarray, ptr: int) -> None:
        """Write the patterns of slots `idx`, in the input dtype, one after the other at `ptr`."""


class CudaReplayPool(OrtValueMinibatches):
    """Replay memory on a CUDA device; same interface and same slot choices as `ReplayPool`."""

    def __init__(self, capacity: int, pattern_shape: Sequence[int], storage: str = "fp32",
                 seed: int = 0, input_dtype: Any = np.float32, device_id: int = 0,
                 max_gather: int = 128) -> None:
        super().__init__(capacity, pattern_shape, storage, seed, input_dtype)
        ok, reason = cuda_available()
        if not ok:
            raise RuntimeError(f"CUDA replay pool unavailable: {reason}")
        import pycuda.driver as cuda
        from pycuda.compiler import SourceModule
        self._cuda = cuda
        self.device_id = int(device_id)
        # The primary context is the one ONNX Runtime's CUDA provider uses: pointers are shared.
        self._ctx = cuda.Device(self.device_id).retain_primary_context()
        with self._active():
            self._patterns = cuda.mem_alloc(self._capacity * self.bytes_per_pattern)
            cuda.memset_d8(self._patterns, 0, self._capacity * self.bytes_per_pattern)
            self._scale_dev = cuda.mem_alloc(self.channels * 4)
            cuda.memcpy_htod(self._scale_dev, np.ones(self.channels, np.float32))
            module = SourceModule(_KERNELS, no_extern_c=True)
            kind = "u8" if self._raw else {"fp32": "f32", "fp16": "f16", "uint8": "q8"}[self._storage]
            self._kernel = module.get_function(f"gather_{kind}")
            self._out_cap = 0
            self._out = None
            self._idx_dev = None
            self._reserve(max(1, int(max_gather)))

    # ---- context and buffers -------------------------------------------------------------------
    def _active(self):
        ctx = self._ctx

        class _Push:
            def __enter__(self_inner):
                ctx.push()

            def __exit__(self_inner, *exc):
                ctx.pop()
        return _Push()

    def _reserve(self, n: int) -> None:
        if n <= self._out_cap:
            return
        self._out = self._cuda.mem_alloc(n * self.pattern_values * self._input_dtype.itemsize)
        self._idx_dev = self._cuda.mem_alloc(n * 8)
        self._out_cap = n

    @property
    def nbytes(self) -> int:
        """Device bytes for patterns + scale, plus the host label array (gather buffer excluded)."""
        return super().nbytes

    # ---- storage hooks -------------------------------------------------------------------------
    def _write(self, slots: np.ndarray, stored: np.ndarray, labels: np.ndarray) -> None:
        base, row = int(self._patterns), self.bytes_per_pattern
        stored = np.ascontiguousarray(stored)
        with self._active():
            for k, slot in enumerate(slots):
                self._cuda.memcpy_htod(base + int(slot) * row, stored[k])
            if self._scale is not None:
                self._cuda.memcpy_htod(self._scale_dev, self._scale)

    def _read_stored(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx),) + self._shape, dtype=self._store_dtype)
        base, row = int(self._patterns), self.bytes_per_pattern
        with self._active():
            for k, slot in enumerate(idx):
                self._cuda.memcpy_dtoh(out[k], base + int(slot) * row)
        return out

    def _on_scale_loaded(self) -> None:
        if self._scale is not None:
            with self._active():
                self._cuda.memcpy_htod(self._scale_dev, self._scale)

    # ---- device gather -------------------------------------------------------------------------
    def gather_device(self, indices: Any) -> Tuple[int, Tuple[int, ...], np.ndarray]:
        """Gather on the device: (device pointer, shape, host labels int64).

        The pointer addresses a preallocated pycuda buffer of `input_dtype` that the next call
        overwrites: use it before gathering again (`as_ortvalue` gives a tensor ORT owns instead).
        """
        idx = self._check_indices(indices)
        n = len(idx)
        with self._active():
            self._reserve(n)
            self._launch_gather(idx, int(self._out))
        return int(self._out), (n,) + self._shape, self._labels[idx].copy()

    def _launch_gather(self, idx: np.ndarray, out_ptr: int) -> None:
        """Gather (and dequantize) the patterns at slots `idx` into device memory at `out_ptr`
        (inside the active context; the index buffer must hold len(idx) entries)."""
        n = len(idx)
        if not n:
            return
        self._cuda.memcpy_htod(self._idx_dev, np.ascontiguousarray(idx))
        total = n * self.pattern_values
        grid = (int(min(65535, (total + 255) // 256)), 1)
        args = [self._patterns, self._idx_dev]
        if self._quantized:
            args.append(self._scale_dev)
        args += [np.uintp(out_ptr), np.int64(n), np.int64(self.pattern_values)]
        if self._quantized:
            args.append(np.int64(self.pattern_values // self.channels))
        self._kernel(*args, block=(256, 1, 1), grid=grid)
        self._cuda.Context.synchronize()

    def _copy_to_ptr(self, array: np.ndarray, ptr: int) -> None:
        with self._active():
            self._cuda.memcpy_htod(ptr, array)

    def _gather_to_ptr(self, idx: np.ndarray, ptr: int) -> None:
        with self._active():
            self._reserve(len(idx))  # the index buffer
            self._launch_gather(idx, ptr)

    def _gather_host(self, idx: np.ndarray) -> np.ndarray:
        ptr, shape, _ = self.gather_device(idx)
        out = np.empty(shape, dtype=self._input_dtype)
        if out.size:
            with self._active():
                self._cuda.memcpy_dtoh(out, ptr)
        return out

    def close(self) -> None:
        """Free the device buffers now; the pool is unusable afterwards."""
        with self._active():
            for name in ("_patterns", "_scale_dev", "_out", "_idx_dev"):
                buf = getattr(self, name, None)
                if buf is not None:
                    buf.free()
                    setattr(self, name, None)
        self._out_cap = 0
