"""Replay pool: insertion rule, label alignment, compression, state round trip."""
import numpy as np
import pytest

from latent_replay.runtime.replay import ReplayPool, make_pool


def reference_insert(rng, mem_x, mem_y, x, y, i, capacity):
    """The docs/algorithms.md rule written out directly (lists grow until full, then overwrite)."""
    h = min(capacity // (i + 1), len(x))
    if h == 0:
        return mem_x, mem_y
    src = rng.choice(len(x), size=h, replace=False)
    free = capacity - len(mem_x)
    n_new = min(h, free)
    mem_x = mem_x + [x[s] for s in src[:n_new]]
    mem_y = mem_y + [y[s] for s in src[:n_new]]
    if h > n_new:
        dst = rng.choice(len(mem_x) - n_new, size=h - n_new, replace=False)
        for s, d in zip(src[n_new:], dst):
            mem_x[d], mem_y[d] = x[s], y[s]
    return mem_x, mem_y


def labelled_batch(rng, n, shape, label_of):
    """Patterns whose every value encodes their label (value = label + 0.25), post-ReLU-like."""
    y = np.array([label_of(k) for k in range(n)], dtype=np.int64)
    x = np.broadcast_to((y + 0.25).astype(np.float32).reshape((n,) + (1,) * len(shape)), (n,) + shape)
    return np.ascontiguousarray(x + rng.uniform(0, 0.01, (n,) + shape).astype(np.float32)), y


def stream(n_batches=12, shape=(4, 3, 3), seed=1):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 40, n_batches)
    return [labelled_batch(rng, int(n), shape, lambda k, i=i: (i * 7 + k) % 11) for i, n in enumerate(sizes)]


def test_matches_reference_rule():
    capacity, shape = 30, (4, 3, 3)
    pool = ReplayPool(capacity, shape, seed=5)
    rng = np.random.default_rng(5)
    mem_x, mem_y = [], []
    for i, (x, y) in enumerate(stream(shape=shape)):
        h = pool.insert_batch(x, y, i)
        assert h == min(capacity // (i + 1), len(x))
        mem_x, mem_y = reference_insert(rng, mem_x, mem_y, x, y, i, capacity)
        assert len(pool) == len(mem_x)
        got_x, got_y = pool.gather(np.arange(len(pool)))
        np.testing.assert_array_equal(got_x, np.stack(mem_x))
        np.testing.assert_array_equal(got_y, np.array(mem_y))
        np.testing.assert_array_equal(pool.labels, got_y)


def test_fills_empty_slots_first():
    pool = ReplayPool(100, (2,), seed=0)
    x = np.ones((30, 2), np.float32)
    assert pool.insert_batch(x, np.zeros(30, np.int64), 0) == 30
    assert pool.insert_batch(x, np.ones(30, np.int64), 1) == 30
    assert len(pool) == 60
    np.testing.assert_array_equal(pool.class_counts(3), [30, 30, 0])
    pool.insert_batch(x, np.full(30, 2), 2)  # h = min(33, 30) = 30 into the 40 empty slots
    assert len(pool) == 90
    np.testing.assert_array_equal(pool.class_counts(4), [30, 30, 30, 0])
    pool.insert_batch(x, np.full(30, 3), 3)  # h = 25: 10 empty slots, then 15 overwritten
    assert len(pool) == 100
    counts = pool.class_counts(4)
    assert counts.sum() == 100 and counts[3] == 25


@pytest.mark.parametrize("storage,shape", [("fp32", (8, 4, 4)), ("fp16", (8, 4, 4)),
                                           ("uint8", (8, 4, 4)), ("uint8", (16,))])
def test_label_alignment(storage, shape):
    pool = ReplayPool(50, shape, storage=storage, seed=3)
    for i, (x, y) in enumerate(stream(20, shape)):
        pool.insert_batch(x * 1.0, y, i)
        got_x, got_y = pool.gather(np.random.default_rng(i).integers(0, len(pool), 40))
        assert got_x.dtype == np.float32 and got_y.dtype == np.int64
        decoded = np.floor(got_x.reshape(len(got_x), -1) + 0.05).astype(np.int64)
        assert (decoded == got_y[:, None]).all()


def test_compression_error_and_size():
    shape = (16, 4, 4)
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(0, 2, (200,) + shape), 0).astype(np.float32)
    y = rng.integers(0, 50, 200)
    pools = {s: ReplayPool(200, shape, storage=s, seed=0) for s in ("fp32", "fp16", "uint8")}
    for p in pools.values():
        p.insert_batch(x, y, 0)
    exact, _ = pools["fp32"].gather(np.arange(200))
    half, _ = pools["fp16"].gather(np.arange(200))
    q8, _ = pools["uint8"].gather(np.arange(200))
    assert np.all(np.abs(half - exact) <= 1e-3 * np.abs(exact) + 1e-7)
    scale = pools["uint8"].scale.reshape(16, 1, 1)
    assert np.all(np.abs(q8 - exact) <= scale / 2 + 1e-6)
    assert pools["uint8"].clipped == 0
    labels = 200 * 8
    assert pools["fp32"].nbytes == 200 * 16 * 16 * 4 + labels
    assert pools["fp16"].bytes_per_pattern * 2 == pools["fp32"].bytes_per_pattern
    assert pools["uint8"].bytes_per_pattern * 4 == pools["fp32"].bytes_per_pattern
    assert pools["uint8"].nbytes - labels == (pools["fp32"].nbytes - labels) // 4 + 16 * 4


def test_uint8_scale_is_fixed_and_clips():
    pool = ReplayPool(10, (2,), storage="uint8")
    pool.insert_batch(np.array([[1.0, 0.0], [0.5, 0.0]], np.float32), np.array([0, 1]), 0)
    np.testing.assert_allclose(pool.scale, [1 / 255, 1.0])
    pool.insert_batch(np.array([[3.0, 100.0]], np.float32), np.array([2]), 1)
    x, y = pool.gather([len(pool) - 1])
    assert y[0] == 2 and x[0, 0] == pytest.approx(1.0) and x[0, 1] == pytest.approx(100.0)
    assert pool.clipped == 1


def test_raw_frames_stay_uint8():
    pool = ReplayPool(5, (8, 8, 3), storage="fp32", input_dtype=np.uint8)
    frames = np.random.default_rng(0).integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    pool.insert_batch(frames, np.arange(7), 0)
    x, y = pool.gather(np.arange(5))
    assert pool.storage == "uint8" and x.dtype == np.uint8
    np.testing.assert_array_equal(x, frames[y])
    assert pool.bytes_per_pattern == 8 * 8 * 3


@pytest.mark.parametrize("storage", ["fp32", "uint8"])
def test_state_round_trip_continues_identically(tmp_path, storage):
    shape = (4, 3, 3)
    batches = stream(14, shape)
    a = ReplayPool(25, shape, storage=storage, seed=9)
    for i, (x, y) in enumerate(batches[:6]):
        a.insert_batch(x, y, i)
    np.savez(tmp_path / "pool.npz", **a.state_dict())
    with np.load(tmp_path / "pool.npz") as f:
        b = ReplayPool.from_state_dict(dict(f))
    assert len(b) == len(a) and b.clipped == a.clipped
    for i, (x, y) in enumerate(batches[6:], start=6):
        assert a.insert_batch(x, y, i) == b.insert_batch(x, y, i)
        xa, ya = a.gather(np.arange(len(a)))
        xb, yb = b.gather(np.arange(len(b)))
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_errors():
    with pytest.raises(ValueError, match="capacity"):
        ReplayPool(0, (4,))
    with pytest.raises(ValueError, match="storage"):
        ReplayPool(4, (4,), storage="int4")
    pool = ReplayPool(4, (4,))
    with pytest.raises(ValueError, match="shape"):
        pool.insert_batch(np.zeros((2, 5), np.float32), np.zeros(2, np.int64), 0)
    with pytest.raises(IndexError):
        pool.gather([0])
    with pytest.raises(ValueError, match="does not match"):
        ReplayPool(8, (4,)).load_state_dict(pool.state_dict())
    with pytest.raises(ValueError):
        make_pool("tpu", 4, (4,))
    assert isinstance(make_pool("cpu", 4, (4,)), ReplayPool)


@pytest.mark.parametrize("storage,dtype", [("fp32", np.float32), ("fp16", np.float32), ("uint8", np.float32),
                                           ("fp32", np.uint8)])
def test_gather_into_writes_what_gather_returns(storage, dtype):
    """The minibatch assembly's one-pass gather into a slice equals gather() for every storage."""
    rng = np.random.default_rng(0)
    shape = (6, 3, 3) if dtype == np.float32 else (4, 4, 3)
    pool = ReplayPool(20, shape, storage=storage, seed=1, input_dtype=dtype)
    x = (np.abs(rng.standard_normal((20,) + shape)) * 3).astype(dtype) if dtype == np.float32 else \
        rng.integers(0, 256, (20,) + shape, dtype=np.uint8)
    pool.insert_batch(x, rng.integers(0, 5, 20), 0)
    slots = np.array([4, 0, 19, 4, 7])
    expected, labels = pool.gather(slots)
    out = np.full((9,) + shape, 7, dtype)
    got = pool.gather_into(slots, out[2:7])
    np.testing.assert_array_equal(out[2:7], expected)
    np.testing.assert_array_equal(got, labels)
    assert (out[:2] == 7).all() and (out[7:] == 7).all()  # only the slice is written
