"""Learner state: save after batch k, load into a fresh learner, continue == uninterrupted run; a
crash while saving leaves the previous state loadable."""
from __future__ import annotations

import os

import numpy as np
import pytest

from latent_replay.export.exporter import export
from latent_replay.runtime.learn import LearnerConfig
from latent_replay.runtime.engine import Back
from latent_replay.runtime.learn import Learner
from helpers import make_weights

LAYER, CLASSES = "conv6/dw", 5
CFG = LearnerConfig.preset("pytorch", method="ar1", replay_memory=24, minibatch=8, epochs=1, epochs_first=1,
                           lr_later=0.01, replay_shuffle="epoch", seed=3)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    path = tmp_path_factory.mktemp("state") / "art"
    export(make_weights(4), LAYER, CLASSES, path)
    return path


def batches(n=4, size=16):
    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        y = rng.integers(0, CLASSES, size)
        x = np.abs(rng.standard_normal((size, 1024, 4, 4)) + 0.5 * y.reshape(-1, 1, 1, 1)).astype(np.float32)
        out.append((x, y))
    return out


def fresh(artifacts):
    return Learner(Back(artifacts, device="cpu", threads=1), CFG)


def assert_same(a: Learner, b: Learner):
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)
        np.testing.assert_array_equal(a.back.get(name), b.back.get(name), err_msg=name)


def test_resume_equals_uninterrupted(artifacts, tmp_path):
    data = batches()
    test_x = np.concatenate([x for x, _ in data])
    test_y = np.concatenate([y for _, y in data])
    straight = fresh(artifacts)
    for i, (x, y) in enumerate(data):
        straight.train_batch(x, y, i)

    first = fresh(artifacts)
    for i, (x, y) in enumerate(data[:2]):
        first.train_batch(x, y, i)
    first.save(tmp_path / "state")
    assert Learner.saved_config(tmp_path / "state") == CFG
    resumed = fresh(artifacts)
    resumed.load(tmp_path / "state")
    assert resumed.batches_trained == 2 and len(resumed.pool) == len(first.pool)
    for i, (x, y) in enumerate(data[2:], start=2):
        resumed.train_batch(x, y, i)

    assert_same(straight, resumed)
    np.testing.assert_array_equal(straight.cwr.cw, resumed.cwr.cw)
    np.testing.assert_array_equal(straight.si.F["conv6/sep/weight"], resumed.si.F["conv6/sep/weight"])
    np.testing.assert_array_equal(straight.pool.labels, resumed.pool.labels)
    assert straight.evaluate(test_x, test_y) == resumed.evaluate(test_x, test_y)


def test_crash_while_saving_keeps_previous_state(artifacts, tmp_path, monkeypatch):
    data = batches(2)
    learner = fresh(artifacts)
    learner.train_batch(*data[0], 0)
    learner.save(tmp_path / "state")
    saved = {n: v.copy() for n, v in learner.params.items()}
    learner.train_batch(*data[1], 1)

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")
    with monkeypatch.context() as m:
        m.setattr(np, "savez", broken_savez)
        with pytest.raises(OSError):
            learner.save(tmp_path / "state")
    check = fresh(artifacts)
    check.load(tmp_path / "state")
    for name, value in saved.items():
        np.testing.assert_array_equal(check.params[name], value)
    assert check.batches_trained == 1

    # A crash between moving the old state aside and moving the new one in: the old one is found.
    real_replace = os.replace
    calls = []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)
    with monkeypatch.context() as m:
        m.setattr(os, "replace", crash_on_second)
        with pytest.raises(KeyboardInterrupt):
            learner.save(tmp_path / "state")
    assert not (tmp_path / "state").exists()
    check = fresh(artifacts)
    check.load(tmp_path / "state")
    assert check.batches_trained == 1
    learner.save(tmp_path / "state")  # the next save completes and replaces it
    check.load(tmp_path / "state")
    assert check.batches_trained == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_load_refuses_other_settings(artifacts, tmp_path):
    learner = fresh(artifacts)
    learner.train_batch(*batches(1)[0], 0)
    learner.save(tmp_path / "state")
    other = Learner(Back(artifacts, device="cpu", threads=1), CFG.replace(lr_later=0.5))
    with pytest.raises(ValueError, match="lr_later"):
        other.load(tmp_path / "state")
    with pytest.raises(FileNotFoundError):
        other.load(tmp_path / "missing")
