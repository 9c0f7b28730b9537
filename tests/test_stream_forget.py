"""What forgetting a class means, per method (`Learner.forget_class`, the stream's `forget NAME`):

- CWR* (head only): the class's output row is zero in the inference head, its consolidated row and
  count are reset (the next teaching of that output starts as a new class), and its replay patterns
  are gone from the memory; the other classes' rows and patterns are untouched, bit for bit.
- AR1*-free / AR1*: the same for the head and the memory; the layers below that the batches trained
  keep their values (shared by every class: they are not rolled back).
And the class book: a forgotten name frees its output for the next new name.
"""
from __future__ import annotations

import numpy as np
import pytest

from latent_replay.apps.stream.live import ClassBook
from latent_replay.export.exporter import export
from latent_replay.runtime.engine import Back, Front
from latent_replay.runtime.learn import Learner, LearnerConfig
from helpers import make_frames, make_weights

CLASSES = 5


@pytest.fixture(scope="module", params=[("cwr", "pool6"), ("ar1free", "conv6/dw")], ids=["cwr", "ar1free"])
def trained(request, tmp_path_factory):
    method, layer = request.param
    art = tmp_path_factory.mktemp("forget") / "art"
    export(make_weights(2), layer, CLASSES, art)
    cfg = LearnerConfig.preset("pytorch", method=method, replay_memory=60, minibatch=8, epochs=2, epochs_first=2,
                               lr_first=0.01, lr_later=0.01)
    learner = Learner(Back(art, device="cpu", threads=1), cfg)
    front = Front(art, device="cpu", threads=1)
    latents = {c: front(make_frames(12, seed=10 + c)) for c in range(3)}
    for b, c in enumerate(range(3)):
        learner.train_batch(latents[c], np.full(12, c, np.int64), b)
    return learner, latents, method


def test_forget_resets_the_head_row_and_drops_the_patterns(trained):
    learner, latents, method = trained
    head = learner.back.get(learner.head).copy()
    pool_labels = learner.pool.labels
    assert (pool_labels == 1).any() and np.abs(head[1]).sum() > 0
    others = {n: v.copy() for n, v in learner.params.items() if n != learner.head}
    kept = np.flatnonzero(pool_labels != 1)
    kept_patterns = learner.pool.gather(kept)[0]

    result = learner.forget_class(1)

    after = learner.back.get(learner.head)
    assert result["patterns_dropped"] == int((pool_labels == 1).sum())
    assert np.all(after[1] == 0) and np.array_equal(np.delete(after, 1, 0), np.delete(head, 1, 0))
    assert learner.cwr.past[1] == 0 and np.all(learner.cwr.cw[1] == 0)
    assert not (learner.pool.labels == 1).any() and len(learner.pool) == len(kept)
    np.testing.assert_array_equal(learner.pool.gather(np.arange(len(kept)))[0], kept_patterns)  # the others, in order
    for n, v in others.items():  # AR1*-free's lower layers keep what they learned; nothing else moves either
        np.testing.assert_array_equal(learner.params[n], v)
    # the next batch of that output starts from a zero row (CWR*'s reset of a class never consolidated)
    learner.train_batch(latents[1], np.full(12, 1, np.int64), 3)
    assert learner.cwr.past[1] == 12 and np.abs(learner.back.get(learner.head)[1]).sum() > 0


def test_forgotten_name_frees_its_output():
    book = ClassBook(4, ["mug", "cup", "pen"], [0, 1, 2], [10, 20, 30])
    book.forget(1)
    assert book.known == [0, 2] and book.names == ["mug", "", "pen"] and book.meta()["frames"] == [10, 0, 30]
    assert book.index("ball") == 1 and book.index("cap") == 3


def test_forget_out_of_range(trained):
    with pytest.raises(ValueError, match="out of range"):
        trained[0].forget_class(CLASSES)


def test_stdin_lines_and_keys_make_the_same_commands():
    from latent_replay.apps.stream.control import CommandError, check_name, key_command, parse_line

    assert (parse_line("teach red mug").kind, parse_line("teach red mug").name) == ("teach", "red mug")
    r = parse_line("rename red mug -> blue mug")
    assert (r.kind, r.name, r.new_name) == ("rename", "red mug", "blue mug")
    assert [parse_line(w).kind for w in ("forget x", "more x", "pause", "resume", "save", "quit")] == \
        ["forget", "more", "pause", "resume", "save", "quit"]
    assert parse_line("   ") is None
    for bad in ("teach", "rename a b", "dance", "pause now"):
        with pytest.raises(CommandError):
            parse_line(bad)
    assert key_command(ord("2"), ["a", "b"]).name == "b" and key_command(ord("q"), []).kind == "quit"
    with pytest.raises(CommandError, match="no class 3"):
        key_command(ord("3"), ["a", "b"])
    assert check_name("  <script>  ") == "<script>"
    for bad in ("", "x" * 41, "a\tb", None):
        with pytest.raises(CommandError):
            check_name(bad)
