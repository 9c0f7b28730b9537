"""The continual-learning metrics on hand-made accuracy matrices whose answers are worked out by hand.

Each matrix is built so that the usual mistakes give another number: a sign error in BWT, counting
the class first seen in the last batch in forgetting (off by one), taking the maximum over the final
batch or over batches before the class was learned, weighting BWT by class instead of by task.
"""
from __future__ import annotations

import numpy as np
import pytest

from latent_replay.apps.run.metrics import (as_matrix, average_accuracy, backward_transfer, first_batches,
                                            forgetting, forgetting_per_class, metrics, per_class_accuracy)

# 4 batches x 5 classes. Batch 0 brings classes 0 and 1, batch 1 class 2, batch 2 only new sessions of
# known classes (no new class: no task), batch 3 class 3; class 4 is never trained.
BATCH_CLASSES = [[0, 1], [2, 0], [1, 2], [3]]
A = np.array([
    # c0    c1    c2    c3    c4
    [0.80, 0.60, 0.95, 0.00, 0.00],  # after batch 0 (c2 scores before being learned: must not count)
    [0.50, 0.90, 0.70, 0.00, 0.10],  # after batch 1
    [0.60, 0.30, 0.90, 0.10, 0.00],  # after batch 2
    [0.40, 0.95, 0.20, 0.90, 0.05],  # after batch 3 (the last): c1 ends above its best
])


def test_first_batches():
    np.testing.assert_array_equal(first_batches(BATCH_CLASSES, 5), [0, 0, 1, 3, -1])


def test_forgetting_by_hand():
    first = first_batches(BATCH_CLASSES, 5)
    # c0: max(0.8, 0.5, 0.6) - 0.4 = 0.4; c1: max(0.6, 0.9, 0.3) - 0.95 = -0.05;
    # c2: max over batches 1..2 (0.7, 0.9) - 0.2 = 0.7 (not 0.95 - 0.2: batch 0 is before c2 was learned);
    # c3 first appears in the last batch, c4 never: no forgetting for them.
    assert forgetting_per_class(A, first) == pytest.approx([0.4, -0.05, 0.7, None, None])
    assert forgetting(A, first) == pytest.approx((0.4 - 0.05 + 0.7) / 3)  # 0.35
    # what the usual mistakes would give instead, so that the test can tell:
    assert forgetting(A, first) != pytest.approx((0.4 - 0.05 + 0.7 + 0.0) / 4)  # c3 counted (off by one)
    assert forgetting(A, first) != pytest.approx((0.4 + 0.0 + 0.7) / 3)  # max over the final batch too
    assert forgetting(A, first) != pytest.approx((0.4 - 0.05 + 0.75) / 3)  # max from batch 0 for c2


def test_backward_transfer_and_average_accuracy_by_hand():
    first = first_batches(BATCH_CLASSES, 5)
    # tasks: batch 0 = {c0, c1}, batch 1 = {c2}, batch 3 = {c3} (the last: no BWT term)
    # R[3,0] - R[0,0] = (0.4 + 0.95) / 2 - (0.8 + 0.6) / 2 = -0.025; R[3,1] - R[1,1] = 0.2 - 0.7 = -0.5
    assert backward_transfer(A, first) == pytest.approx((-0.025 - 0.5) / 2)  # -0.2625
    assert backward_transfer(A, first) != pytest.approx((0.025 + 0.5) / 2)  # sign error
    assert backward_transfer(A, first) != pytest.approx((-0.4 + 0.35 - 0.5) / 3)  # per class, not per task
    assert backward_transfer(A, first) != pytest.approx((-0.025 - 0.5 + 0.0) / 3)  # last task counted
    # ACC: final accuracy per task, averaged over the 3 tasks (c4, never trained, does not count)
    assert average_accuracy(A, first) == pytest.approx(((0.4 + 0.95) / 2 + 0.2 + 0.9) / 3)


def test_textbook_bwt_when_every_batch_is_one_task():
    """One new class per batch: the definitions reduce to Lopez-Paz & Ranzato's formulas, computed
    here by their textbook loops."""
    rng = np.random.default_rng(0)
    t = 6
    r = rng.uniform(0, 1, (t, t))
    first = first_batches([[i] for i in range(t)], t)
    bwt = sum(r[t - 1, i] - r[i, i] for i in range(t - 1)) / (t - 1)
    acc = sum(r[t - 1, i] for i in range(t)) / t
    fgt = sum(max(r[b, i] for b in range(i, t - 1)) - r[t - 1, i] for i in range(t - 1)) / (t - 1)
    assert backward_transfer(r, first) == pytest.approx(bwt)
    assert average_accuracy(r, first) == pytest.approx(acc)
    assert forgetting(r, first) == pytest.approx(fgt)


def test_classes_without_test_frames_and_short_runs():
    first = first_batches(BATCH_CLASSES, 5)
    untested = A.copy()
    untested[:, 1] = np.nan  # c1 has no test frame: it drops out, task 0 is c0 alone
    assert forgetting(untested, first) == pytest.approx((0.4 + 0.7) / 2)
    assert backward_transfer(untested, first) == pytest.approx(((0.4 - 0.8) + (0.2 - 0.7)) / 2)
    one = A[:1]
    first_one = first_batches(BATCH_CLASSES[:1], 5)
    assert forgetting(one, first_one) is None and backward_transfer(one, first_one) is None
    assert average_accuracy(one, first_one) == pytest.approx(0.7)
    m = metrics(A, first, [0.3, 0.5, 0.6, 0.55])
    assert m["final_accuracy"] == 0.55 and m["mean_accuracy_over_batches"] == pytest.approx(0.4875)
    with pytest.raises(ValueError):
        forgetting(A, first[:4])


def test_per_class_accuracy_and_json_rows():
    truth = np.array([0, 0, 0, 1, 1, 3])
    pred = np.array([0, 1, 0, 1, 0, 2])
    row = per_class_accuracy(pred, truth, 4)
    assert row == pytest.approx([2 / 3, 0.5, None, 0.0])
    m = as_matrix([row, [1.0, None, None, 1.0]])
    assert m.shape == (2, 4) and np.isnan(m[0, 2]) and m[1, 0] == 1.0


# -- in a run: results.json, the heat map, the table -------------------------------------------------
SMALL = ["--synthetic-batches", "4", "--synthetic-frames", "12", "--synthetic-size", "64", "--quiet",
         "--replay-memory", "20", "--set", "epochs_first=20", "--set", "epochs=20"]


def test_a_run_records_the_matrix_the_learner_gives(tmp_path, capsys):
    """The last row of the saved matrix is recomputed from the saved learner on the test frames; every
    row's frame-weighted mean is the batch's accuracy; first batches follow the scenario's content;
    an interrupted run resumes to the same matrix."""
    import json

    import cv2

    from latent_replay.cli import main
    from latent_replay.runtime.engine import Back, Front
    from latent_replay.runtime.learn import Learner, LearnerConfig
    from latent_replay.runtime.sources import SyntheticScenario

    out, resumed = tmp_path / "out", tmp_path / "resumed"
    assert main(["run", "CWR", "--out", str(out)] + SMALL) == 0
    printed = capsys.readouterr().out
    r = json.loads((out / "results.json").read_text())
    run = r["runs"][0]
    scenario = SyntheticScenario(n_batches=4, seed=0, input_size=64, frames_per_batch=12, difficulty=0.1)
    assert run["class_names"] == scenario.class_names
    matrix = as_matrix(run["accuracy_matrix"])
    assert matrix.shape == (4, 10)
    expected_first = [None] * 10
    for b in range(4):
        for c, _ in scenario.batch_content(b):
            expected_first[c] = b if expected_first[c] is None else expected_first[c]
    assert run["first_batch"] == expected_first

    test = scenario.test_set()
    learner = Learner(Back(out / "artifacts"), LearnerConfig.from_dict(run["config"]))
    learner.load(out / "run0" / "state")
    pred = learner.predict(Front(out / "artifacts")(test.frames))[0]
    for c in range(10):
        mask = test.labels == c
        assert matrix[-1, c] == pytest.approx(np.mean(pred[mask] == c))
    counts = np.bincount(test.labels, minlength=10)
    for b, batch in enumerate(run["batches"]):
        assert np.sum(matrix[b] * counts) / counts.sum() == pytest.approx(batch["accuracy"])
        assert "class_accuracy" not in batch  # the matrix holds them, once

    first = first_batches([b["classes"] for b in run["batches"]], 10)
    assert run["metrics"]["forgetting"] == pytest.approx(forgetting(matrix, first))
    assert run["metrics"]["backward_transfer"] == pytest.approx(backward_transfer(matrix, first))
    assert r["summary"]["forgetting_mean"] == pytest.approx(run["metrics"]["forgetting"])
    assert r["summary"]["accuracy_matrix_mean"] == run["accuracy_matrix"]
    png = cv2.imread(str(out / "accuracy_matrix.png"))
    assert png is not None and png.shape[0] > 100
    head = printed.splitlines()[0].split()
    assert head[:9] == ["run", "batches", "final", "acc", "%", "avg", "acc", "%", "forgetting"] and "BWT" in head
    row = printed.splitlines()[1].split()
    assert float(row[3]) == pytest.approx(100 * run["metrics"]["average_accuracy"], abs=0.006)
    assert float(row[5]) == pytest.approx(100 * run["metrics"]["backward_transfer"], abs=0.006)

    assert main(["run", "CWR", "--out", str(resumed), "--max-batches", "2"] + SMALL) == 0
    assert main(["run", "CWR", "--out", str(resumed)] + SMALL) == 0
    again = json.loads((resumed / "results.json").read_text())["runs"][0]
    assert again["accuracy_matrix"] == run["accuracy_matrix"] and again["metrics"] == run["metrics"]
