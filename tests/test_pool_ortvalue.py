"""The CUDA pool's OrtValue hand-off, run on the CPU.

`pool_cuda.OrtValueMinibatches` builds each training minibatch in a tensor that ONNX Runtime
allocates (`OrtValue.ortvalue_from_shape_and_type`) and fills it through `data_ptr()`; the CUDA pool
only adds the device copies. Here the same class runs with host copies into a 'cpu' OrtValue, so the
allocation, the offsets, the dtypes and the learner's on-device branch (minibatches handed to the
back as OrtValues) are tested without a GPU. The CUDA copies themselves are in test_pool_cuda.py.
"""
from __future__ import annotations

import ctypes

import numpy as np
import onnxruntime as ort
import pytest

from latent_replay.export.exporter import export
from latent_replay.runtime.learn import LearnerConfig
from latent_replay.runtime.engine import Back
from latent_replay.runtime.engine.step import StepBack
from latent_replay.runtime.learn import Learner
from latent_replay.runtime.replay.pool import ReplayPool
from latent_replay.runtime.replay.cuda import OrtValueMinibatches
from helpers import make_weights


class HostOrtValuePool(OrtValueMinibatches, ReplayPool):
    """The CUDA pool's OrtValue logic over the host pool: 'device' copies are memmoves."""

    ort_device = "cpu"

    def _copy_to_ptr(self, array, ptr):
        array = np.ascontiguousarray(array)
        ctypes.memmove(ptr, array.ctypes.data, array.nbytes)

    def _gather_to_ptr(self, idx, ptr):
        self._copy_to_ptr(np.ascontiguousarray(self._gather_host(idx), dtype=self.input_dtype), ptr)


def filled(pool_cls, storage, shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    pool = pool_cls(24, shape, storage=storage, seed=1, input_dtype=dtype)
    for i in range(3):
        if dtype == np.uint8:
            x = rng.integers(0, 256, (10,) + shape, dtype=np.uint8)
        else:
            x = np.abs(rng.standard_normal((10,) + shape)).astype(np.float32)
        pool.insert_batch(x, rng.integers(0, 5, 10), i)
    return pool


@pytest.mark.parametrize("storage,shape,dtype", [
    ("fp32", (8, 4, 4), np.float32), ("fp16", (8, 4, 4), np.float32), ("uint8", (8, 4, 4), np.float32),
    ("uint8", (32,), np.float32), ("fp32", (6, 6, 3), np.uint8),
])
def test_minibatch_ortvalue_equals_the_host_minibatch(storage, shape, dtype):
    pool = filled(HostOrtValuePool, storage, shape, dtype)
    host = filled(ReplayPool, storage, shape, dtype)
    rng = np.random.default_rng(3)
    new = (rng.integers(0, 256, (5,) + shape, dtype=np.uint8) if dtype == np.uint8
           else np.abs(rng.standard_normal((5,) + shape)).astype(np.float32))
    slots = np.array([3, 0, 17, 3, 9, 22, 11])
    value, labels = pool.minibatch_ortvalue(new, slots)
    hx, hy = host.gather(slots)
    assert isinstance(value, ort.OrtValue) and value.device_name().lower() == "cpu"
    assert value.shape() == [12] + list(shape)
    assert value.data_type() == ("tensor(uint8)" if dtype == np.uint8 else "tensor(float)")
    np.testing.assert_array_equal(labels, hy)
    np.testing.assert_array_equal(value.numpy(), np.concatenate([new, hx]))

    alone, alone_labels = pool.as_ortvalue(slots[:4])
    assert alone.shape() == [4] + list(shape)
    np.testing.assert_array_equal(alone.numpy(), hx[:4])
    np.testing.assert_array_equal(alone_labels, hy[:4])


def test_the_tensor_is_allocated_once_per_shape():
    pool = filled(HostOrtValuePool, "fp32", (4,), np.float32)
    new = np.ones((2, 4), np.float32)
    a, _ = pool.minibatch_ortvalue(new, [0, 1, 2])
    ptr = a.data_ptr()
    b, _ = pool.minibatch_ortvalue(new * 2, [3, 4, 5])
    assert b.data_ptr() == ptr  # same size: the same ORT tensor, refilled
    c, _ = pool.minibatch_ortvalue(new, [0])
    assert c.shape() == [3, 4]  # another size: a new tensor
    np.testing.assert_array_equal(b.numpy()[:2], new * 2)
    d, _ = pool.minibatch_ortvalue(new, [6, 7, 8])
    assert d.data_ptr() == ptr  # and back: each size keeps its tensor (CUDA graphs read fixed addresses)
    with pytest.raises(ValueError, match="do not fit"):
        pool.minibatch_ortvalue(np.ones((2, 5), np.float32), [0])
    with pytest.raises(IndexError):
        pool.minibatch_ortvalue(new, [99])


class CountingBack:
    """A CPU engine that counts the minibatches it receives as OrtValues (the learner takes its
    on-device branch because the pool builds its minibatches on the engine's device, 'cpu' here)."""

    def __init__(self, back):
        self._back = back
        self.ortvalue_steps = 0

    def __getattr__(self, name):
        return getattr(self._back, name)

    def step(self, latent, *args, **kwargs):
        self.ortvalue_steps += isinstance(latent, ort.OrtValue)
        return self._back.step(latent, *args, **kwargs)


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["plain", "graph-bookkeeping"])
def test_learner_on_device_branch_trains_like_the_host_branch(tmp_path, cuda_graph):
    """AR1*-free with minibatches handed over as OrtValues == the same learner with numpy minibatches
    (also through the CUDA-graph bookkeeping of the step engine, which the CPU runs uncaptured)."""
    export(make_weights(2), "conv6/dw", 5, tmp_path / "art")
    config = LearnerConfig.preset("pytorch", replay_memory=12, minibatch=8, epochs=1, epochs_first=1,
                                  lr_first=0.05, lr_later=0.05)
    rng = np.random.default_rng(0)
    stream = [(np.abs(rng.standard_normal((8, 1024, 4, 4))).astype(np.float32), rng.integers(0, 5, 8))
              for _ in range(3)]
    host = Learner(Back(tmp_path / "art", device="cpu", threads=1), config)
    labelled = CountingBack(StepBack(tmp_path / "art", device="cpu", threads=1, cuda_graph=cuda_graph))
    device = Learner(labelled, config, HostOrtValuePool(12, (1024, 4, 4), seed=config.seed))
    for i, (x, y) in enumerate(stream):
        host.train_batch(x, y, i)
        device.train_batch(x, y, i)
    assert labelled.ortvalue_steps > 0  # the replayed minibatches went through the OrtValue path
    if cuda_graph:
        assert labelled._graphs.replays > 0
    for name, value in host.params.items():
        np.testing.assert_allclose(device.params[name], value, rtol=0, atol=1e-6, err_msg=name)
    probe = stream[0][0]
    np.testing.assert_allclose(device.logits(probe), host.logits(probe), rtol=0, atol=1e-5)
