"""CWR* (docs/algorithms.md) against a reference written here in the style of the PyTorch port
(dict of saved rows, per-class counters), on a known sequence of batches."""
from __future__ import annotations

import numpy as np
import pytest

from latent_replay.export.exporter import export
from latent_replay.runtime.learn import LearnerConfig
from latent_replay.runtime.engine import Back
from latent_replay.runtime.learn import Learner, LearnerHooks
from latent_replay.runtime.learn.cwr import Cwr
from helpers import make_weights

CLASSES, FEATURES = 6, 1024


class ReferenceCwr:
    """reset_weights / consolidate_weights / set_consolidate_weights, written out plainly."""

    def __init__(self):
        self.saved = {}
        self.past = {c: 0 for c in range(CLASSES)}

    def reset(self, labels):
        self.cur = {c: int(np.sum(labels == c)) for c in range(CLASSES)}
        self.classes = sorted(c for c in range(CLASSES) if self.cur[c] > 0)
        head = np.zeros((CLASSES, FEATURES))
        for c, w in self.saved.items():
            if c in self.classes:
                head[c] = w
        return head

    def consolidate(self, trained):
        avg = np.mean([trained[c] for c in self.classes])
        for c in self.classes:
            if c in self.saved:
                w = np.sqrt(self.past[c] / self.cur[c])
                self.saved[c] = (self.saved[c] * w + trained[c] - avg) / (w + 1)
            else:
                self.saved[c] = trained[c] - avg
            self.past[c] += self.cur[c]
        head = trained.copy()
        for c, w in self.saved.items():
            head[c] = w
        return head


SEQUENCE = [  # (new-batch labels, memory labels)
    ([0, 0, 1, 1, 1, 2], []),
    ([3, 3, 3], [0, 1, 2, 1]),
    ([1, 1], [0, 1, 3, 3]),
    ([4, 5, 5, 0], [3, 1, 1, 0, 2]),
]


def test_cwr_matches_reference():
    rng = np.random.default_rng(0)
    cwr, ref = Cwr(CLASSES, FEATURES), ReferenceCwr()
    for new, mem in SEQUENCE:
        new, mem = np.array(new, np.int64), np.array(mem, np.int64)
        head = cwr.begin(new, mem)
        np.testing.assert_allclose(head, ref.reset(np.concatenate([new, mem])), atol=1e-6)
        trained = head + rng.standard_normal(head.shape).astype(np.float32)  # what training made of it
        np.testing.assert_allclose(cwr.consolidate(trained), ref.consolidate(trained), atol=1e-5)
        assert list(cwr.past) == [ref.past[c] for c in range(CLASSES)]
    assert list(cwr.past) == [6, 10, 3, 6, 1, 2]  # new + memory counts, summed over the batches


def test_consolidation_formula_by_hand():
    """Second visit of a class: cw = (cw * sqrt(past / cur) + tw - avg) / (sqrt(past / cur) + 1)."""
    cwr = Cwr(2, 2)
    cwr.begin(np.array([0, 0, 0, 0]), np.array([], np.int64))
    cwr.consolidate(np.array([[1.0, 3.0], [5.0, 5.0]], np.float32))  # class 0 only: avg 2
    np.testing.assert_allclose(cwr.cw, [[-1.0, 1.0], [0.0, 0.0]])
    head = cwr.begin(np.array([0]), np.array([1]))
    np.testing.assert_allclose(head, [[-1.0, 1.0], [0.0, 0.0]])
    cwr.consolidate(np.array([[2.0, 2.0], [4.0, 0.0]], np.float32))  # avg over both rows: 2
    np.testing.assert_allclose(cwr.cw[0], (np.array([-1.0, 1.0]) * 2 + 0.0) / 3)  # sqrt(4 / 1) = 2
    np.testing.assert_allclose(cwr.cw[1], [2.0, -2.0])
    assert list(cwr.past) == [5, 1]


@pytest.mark.parametrize("unseen", ["trained", "zero"])
def test_learner_resets_and_consolidates(tmp_path, unseen):
    """CWR* in the learner (latent layer pool6): the head at the first step of each batch is the
    reset layer, and after the batch it is the consolidation of the trained head."""
    export(make_weights(1), "pool6", CLASSES, tmp_path / "art")
    cfg = LearnerConfig.preset("pytorch", method="cwr", replay_memory=8, minibatch=4, epochs=2, epochs_first=2,
                               lr_later=0.01, cwr_unseen_rows=unseen)
    first_head, trained = [], []

    class Recorder(LearnerHooks):
        """The head at the first step of each batch, and after its last step (before consolidation)."""

        def before_step(self, lrn):
            if len(first_head) == len(trained):
                first_head.append(lrn.back.get(lrn.head))

        def after_step(self, lrn, loss):
            self.last = lrn.back.get(lrn.head)

        def end_batch(self, lrn, batch_index, stats):
            trained.append(self.last)

    learner = Learner(Back(tmp_path / "art", device="cpu", threads=1), cfg, hooks=[Recorder()])
    ref = ReferenceCwr()

    rng = np.random.default_rng(0)
    for b, (new, _) in enumerate(SEQUENCE):
        labels = np.array(new, np.int64)
        mem_labels = learner.pool.labels
        x = np.abs(rng.standard_normal((len(labels), FEATURES))).astype(np.float32)
        learner.train_batch(x, labels, b)
        np.testing.assert_allclose(first_head[b], ref.reset(np.concatenate([labels, mem_labels])), atol=1e-6)
        expected = ref.consolidate(trained[b].astype(np.float64))
        if unseen == "zero":
            expected[[c for c in range(CLASSES) if c not in ref.saved]] = 0
        np.testing.assert_allclose(learner.back.get(learner.head), expected, atol=1e-5)
        assert not np.allclose(trained[b], first_head[b])  # the head did train
