"""CUDA replay pool: same slots, same values as the host pool.

Skipped, with the reason, where pycuda is not installed or no NVIDIA GPU is present; where pycuda is
installed and a GPU device node exists, a broken CUDA setup fails these tests instead of skipping."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from latent_replay.runtime.replay import ReplayPool, make_pool
from latent_replay.runtime.replay.cuda import cuda_available

OK, REASON = cuda_available()
GPU_PRESENT = any(Path("/dev").glob("nvidia[0-9]*"))
HAS_PYCUDA = importlib.util.find_spec("pycuda") is not None
pytestmark = pytest.mark.skipif(not OK and not (HAS_PYCUDA and GPU_PRESENT),
                                reason=f"CUDA replay pool not testable here: {REASON}")


def batches(shape, n_batches=8, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_batches):
        n = int(rng.integers(10, 50))
        if dtype == np.uint8:
            x = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
        else:
            x = np.maximum(rng.normal(0, 1, (n,) + shape), 0).astype(np.float32)
        out.append((x, rng.integers(0, 50, n)))
    return out


@pytest.mark.parametrize("storage,shape,dtype", [
    ("fp32", (8, 4, 4), np.float32), ("fp16", (8, 4, 4), np.float32),
    ("uint8", (8, 4, 4), np.float32), ("uint8", (32,), np.float32), ("fp32", (6, 6, 3), np.uint8),
])
def test_cuda_matches_host(storage, shape, dtype):
    host = ReplayPool(40, shape, storage=storage, seed=4, input_dtype=dtype)
    dev = make_pool("cuda", 40, shape, storage=storage, seed=4, input_dtype=dtype, max_gather=8)
    for i, (x, y) in enumerate(batches(shape, dtype=dtype)):
        assert host.insert_batch(x, y, i) == dev.insert_batch(x, y, i)
        idx = np.random.default_rng(i).integers(0, len(host), 20)  # > max_gather: buffer grows
        xh, yh = host.gather(idx)
        xd, yd = dev.gather(idx)
        assert xd.dtype == xh.dtype
        np.testing.assert_array_equal(yh, yd)
        np.testing.assert_allclose(xd, xh, rtol=1e-6, atol=1e-6)
    assert dev.nbytes == host.nbytes and dev.clipped == host.clipped


def test_cuda_state_round_trip():
    shape = (4, 3, 3)
    data = batches(shape, 10)
    host = ReplayPool(30, shape, storage="uint8", seed=1)
    for i, (x, y) in enumerate(data[:5]):
        host.insert_batch(x, y, i)
    from latent_replay.runtime.replay.cuda import CudaReplayPool
    dev = CudaReplayPool.from_state_dict(host.state_dict())
    for i, (x, y) in enumerate(data[5:], start=5):
        host.insert_batch(x, y, i)
        dev.insert_batch(x, y, i)
    idx = np.arange(len(host))
    np.testing.assert_allclose(dev.gather(idx)[0], host.gather(idx)[0], rtol=1e-6)


def test_ortvalue_wrap():
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider")
    pool = make_pool("cuda", 10, (4,), seed=0)
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    pool.insert_batch(x, np.arange(10), 0)
    value, labels = pool.as_ortvalue([3, 1])
    assert value.shape() == [2, 4] and value.device_name().lower() == "cuda"
    np.testing.assert_array_equal(value.numpy(), x[labels])


def test_minibatch_built_on_the_device_matches_the_host_one():
    """New rows copied up + replayed rows gathered on the device = the host-assembled minibatch."""
    shape = (8, 4, 4)
    dev = make_pool("cuda", 40, shape, storage="uint8", seed=1)
    host = ReplayPool(40, shape, storage="uint8", seed=1)
    for i, (x, y) in enumerate(batches(shape, n_batches=3)):
        dev.insert_batch(x, y, i)
        host.insert_batch(x, y, i)
    new = np.abs(np.random.default_rng(9).standard_normal((5,) + shape)).astype(np.float32)
    slots = np.arange(12)
    value, labels = dev.minibatch_ortvalue(new, slots)
    hx, hy = host.gather(slots)
    assert value.device_name().lower() == "cuda" and value.shape() == [17] + list(shape)
    np.testing.assert_array_equal(labels, hy)
    np.testing.assert_allclose(value.numpy(), np.concatenate([new, hx]), rtol=1e-6, atol=1e-6)


def test_learner_on_cuda_matches_the_cpu_learner(tmp_path):
    """AR1*-free with the CUDA pool and the CUDA back (minibatches never visit the host) trains the
    same weights as the host pool on the CPU, within float tolerance."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA execution provider (install onnxruntime-gpu)")
    from helpers import make_weights
    from latent_replay.export.exporter import export
    from latent_replay.runtime.learn import LearnerConfig
    from latent_replay.runtime.engine import Back
    from latent_replay.runtime.learn import Learner

    export(make_weights(2, classes=5), "conv6/dw", 5, tmp_path / "art")
    config = LearnerConfig.preset("pytorch", replay_memory=30, minibatch=16, epochs=1, epochs_first=1)
    rng = np.random.default_rng(0)
    stream = [(np.abs(rng.standard_normal((20, 1024, 4, 4))).astype(np.float32), rng.integers(0, 5, 20))
              for _ in range(3)]
    learners = []
    for device in ("cpu", "cuda"):
        back = Back(tmp_path / "art", device=device)
        pool = make_pool(device, 30, (1024, 4, 4), seed=0)
        learner = Learner(back, config, pool)
        assert learner._on_device == (device == "cuda")
        for i, (x, y) in enumerate(stream):
            learner.train_batch(x, y, i)
        learners.append(learner)
    for name in learners[0].params:
        np.testing.assert_allclose(learners[1].params[name], learners[0].params[name], rtol=1e-3, atol=1e-4)
