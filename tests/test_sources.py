"""Frame sources: synthetic stream, CORe50 filelists and images, video files and cameras."""
import threading

import cv2
import numpy as np
import pytest

from latent_replay.runtime.sources import (
    CORE50_CLASS_NAMES, Core50Scenario, FrameBatch, Scenario, SourceError, SyntheticScenario,
    VideoSource, center_crop_resize, load_filelists,
)
from latent_replay.runtime.sources.core50 import SHIPPED_FILELISTS


# ---- synthetic stream -------------------------------------------------------------------------
def test_synthetic_deterministic_and_shaped():
    a, b = SyntheticScenario.miniature(seed=3), SyntheticScenario.miniature(seed=3)
    batches = list(a.iter_train())
    assert len(batches) == a.n_batches == 5
    for i, batch in enumerate(batches):
        again = b.load_batch(i)
        np.testing.assert_array_equal(batch.frames, again.frames)
        np.testing.assert_array_equal(batch.labels, again.labels)
        assert batch.frames.dtype == np.uint8 and batch.frames.shape[1:] == (64, 64, 3)
    assert set(batches[0].labels) == {0, 1}  # batch 0: first_classes objects of session 0
    assert all(len(set(bt.labels)) == 1 for bt in batches[1:])
    test = a.test_set()
    assert sorted(set(test.labels)) == [0, 1, 2, 3] and len(test) == 4 * 6
    other = SyntheticScenario.miniature(seed=4).load_batch(0)
    assert not np.array_equal(other.frames, batches[0].frames)
    assert len(set(a.class_names)) == a.num_classes
    with pytest.raises(SourceError):
        a.load_batch(5)


def _features(frames):
    """sqrt of a normalized hue x saturation histogram, plus a bias column."""
    rows = []
    for f in frames:
        h = cv2.calcHist([cv2.cvtColor(f, cv2.COLOR_BGR2HSV)], [0, 1], None, [18, 4], [0, 180, 0, 256]).ravel()
        rows.append(np.sqrt(h / h.sum()))
    return np.hstack([np.array(rows, np.float32), np.ones((len(rows), 1), np.float32)])


def _softmax_steps(w, x, y, steps, lr=2.0):
    for _ in range(steps):
        z = x @ w
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1
        w -= lr * x.T @ p / len(y)
    return w


def test_synthetic_learnable_and_forgets():
    sc = SyntheticScenario(seed=0, frames_per_batch=30, test_frames=20, input_size=96)
    batches = list(sc.iter_train())
    xs, ys = [_features(b.frames) for b in batches], [b.labels for b in batches]
    test = sc.test_set()
    xt = _features(test.frames)
    w = _softmax_steps(np.zeros((xt.shape[1], sc.num_classes), np.float32), np.vstack(xs), np.concatenate(ys), 400)
    joint = ((xt @ w).argmax(1) == test.labels).mean()
    w = np.zeros_like(w)
    for x, y in zip(xs, ys):  # naive fine-tuning, one batch after the other
        w = _softmax_steps(w, x, y, 40)
    naive = ((xt @ w).argmax(1) == test.labels).mean()
    chance = 1.0 / sc.num_classes
    assert joint > 4 * chance, joint
    assert naive < joint - 0.3, (naive, joint)


def test_iter_train_prefetches_next_batch():
    """Batch 1 is decoded on another thread while the caller holds batch 0, without being asked.
    Events, not timing: the decoder records its thread; the wait returns as soon as batch 1 starts
    (its 60 s limit only bounds how long a broken prefetch takes to fail)."""
    started = threading.Event()
    decoded_on = {}

    class Slow(Scenario):
        name, num_classes = "slow", 2
        n_batches = 3
        class_names = ["a", "b"]

        def load_batch(self, i):
            decoded_on[i] = threading.current_thread()
            if i == 1:
                started.set()
            return FrameBatch(np.zeros((1, 8, 8, 3), np.uint8), np.array([i % 2]), f"b{i}")

        def test_set(self):
            return self.load_batch(0)

    it = Slow().iter_train()
    assert next(it).name == "b0"
    assert started.wait(60)  # decoding batch 1 began while the caller holds batch 0 and asks nothing
    assert decoded_on[1] is not threading.current_thread()
    assert [b.name for b in it] == ["b1", "b2"]
    chunks = list(Slow().iter_test(chunk=1))
    assert len(chunks) == 1


# ---- CORe50 -----------------------------------------------------------------------------------
def _write_png(path, colour, size=40):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size, 3), colour, np.uint8))


@pytest.fixture
def fake_core50(tmp_path):
    """core50_128x128 with a few PNGs and a filelist folder of 102 one-line batches."""
    root = tmp_path / "core50_128x128"
    lists = tmp_path / "lists"
    run = lists / "sIII_v2_391" / "run0"
    run.mkdir(parents=True)
    for i in range(102):
        rel = f"s1/o{i % 50 + 1}/C_01_{i % 50 + 1:02d}_{i:03d}.png"
        _write_png(root / rel, (i, 0, 0))
        (run / f"train_batch_{i:02d}_filelist.txt").write_text(f"{rel} {i % 50}\n")
    _write_png(root / "s3/o1/C_03_01_000.png", (0, 255, 0))
    (lists / "test_filelist_20.txt").write_text("s3/o1/C_03_01_000.png 0\n")
    (run / "test_filelist.txt").write_text("s3/o1/C_03_01_000.png 0\ns1/o1/C_01_01_000.png 0\n")
    return tmp_path, lists, run


def test_core50_fake_tree_numeric_order(fake_core50):
    tmp_path, lists, _ = fake_core50
    sc = Core50Scenario(tmp_path, filelists=lists, input_size=32)  # parent of core50_128x128 works
    assert sc.n_batches == 102 and sc.num_classes == 50
    for i in (0, 9, 10, 99, 100, 101):
        batch = sc.load_batch(i)
        assert batch.labels.tolist() == [i % 50] and batch.paths[0].endswith(f"_{i:03d}.png")
        assert batch.frames.shape == (1, 32, 32, 3) and batch.frames[0, 0, 0, 0] == i  # resized, BGR
    assert [b.labels[0] for b in sc.iter_train(start=98)] == [48, 49, 0, 1]
    assert len(sc.test_set()) == 1
    full = Core50Scenario(tmp_path / "core50_128x128", filelists=lists, test_set="full", input_size=32)
    assert [len(c) for c in full.iter_test(chunk=1)] == [1, 1]
    assert sc.class_names == CORE50_CLASS_NAMES and sc.class_names[0] == "plug_adapter1"


def test_core50_bad_images(fake_core50):
    tmp_path, lists, run = fake_core50
    root = tmp_path / "core50_128x128"
    (root / "s1/o2/bad.png").write_bytes(b"not a png at all")
    (run / "train_batch_00_filelist.txt").write_text(
        "s1/o1/C_01_01_000.png 0\ns1/o2/missing.png 1\ns1/o2/bad.png 1\n")
    load_filelists.cache_clear()
    with pytest.raises(SourceError, match="missing.png is missing"):
        Core50Scenario(root, filelists=lists, input_size=32).load_batch(0)
    (run / "train_batch_00_filelist.txt").write_text("s1/o2/bad.png 1\n")
    load_filelists.cache_clear()
    with pytest.raises(SourceError, match="bad.png is corrupt"):
        Core50Scenario(root, filelists=lists, input_size=32).load_batch(0)
    (run / "train_batch_00_filelist.txt").write_text(
        "s1/o1/C_01_01_000.png 0\ns1/o2/missing.png 1\ns1/o2/bad.png 1\n")
    load_filelists.cache_clear()
    sc = Core50Scenario(root, filelists=lists, input_size=32, skip_bad_images=True)
    batch = sc.load_batch(0)
    assert len(batch) == 1 and sc.bad_images == 2 and batch.labels.tolist() == [0]


def test_core50_user_errors(fake_core50, tmp_path):
    _, lists, run = fake_core50
    with pytest.raises(SourceError, match="core50_128x128.zip"):
        Core50Scenario(tmp_path / "nowhere", filelists=lists)
    with pytest.raises(SourceError, match="scenario"):
        Core50Scenario(tmp_path, scenario=100, filelists=lists)
    (run / "train_batch_05_filelist.txt").write_text("s1/o1/x.png 50\n")
    load_filelists.cache_clear()
    with pytest.raises(SourceError, match="label 50 out of range"):
        Core50Scenario(tmp_path, filelists=lists)
    with pytest.raises(SourceError, match="no NICv2-79 run 0"):
        Core50Scenario(tmp_path, scenario=79, filelists=lists)


def test_shipped_filelists(tmp_path):
    assert SHIPPED_FILELISTS.is_file()
    lists = load_filelists(str(SHIPPED_FILELISTS.resolve()), 391, 0)
    assert len(lists.batches) == 391
    assert len(lists.batches[0]) == 2999 and len({y for _, y in lists.batches[0]}) == 10
    assert all(len({y for _, y in b}) == 1 for b in lists.batches[1:])
    assert len(lists.test_reduced) == 2249 and len(lists.test_full) == 44972
    (tmp_path / "core50_128x128").mkdir()
    sc = Core50Scenario(tmp_path)  # default: shipped lists, cached
    assert sc.n_batches == 391 and sc.test_size == 2249


# ---- video ------------------------------------------------------------------------------------
def test_center_crop_resize():
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[:, 20:140] = 200  # exactly the central square
    out = center_crop_resize(frame, 64)
    assert out.shape == (64, 64, 3) and out.min() == 200


def test_video_file_round_trip(tmp_path):
    path = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    assert writer.isOpened()
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)] * 3
    for c in colours:
        writer.write(np.full((120, 160, 3), c, np.uint8))
    writer.release()
    with VideoSource(path, input_size=48) as src:
        assert not src.is_live
        frames = list(src.frames())
    assert len(frames) == len(colours)
    for f, c in zip(frames, colours):
        assert f.shape == (48, 48, 3) and f.dtype == np.uint8
        assert np.abs(f.reshape(-1, 3).mean(0) - c).max() < 20  # BGR order kept
    with VideoSource(path, input_size=48) as src:
        assert len(list(src.frames(limit=4))) == 4


def test_video_errors(tmp_path):
    with pytest.raises(SourceError, match="camera index 63 does not exist"):
        VideoSource("63")
    with pytest.raises(SourceError, match="cannot read video file"):
        VideoSource(str(tmp_path / "none.mp4"))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"garbage" * 100)
    with pytest.raises(SourceError, match="cannot read video file"):
        VideoSource(str(bad))
