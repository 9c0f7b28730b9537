"""The user's own image folders as a stream: layout, the NICv2-like plan, the test split, and
`latent-replay run METHOD folder:DIR` end to end (class names into results.json and predict)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from latent_replay.cli import main
from latent_replay.runtime.sources import FolderScenario, SourceError

COLOURS = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255)]


def make_folder(root: Path, classes: int = 4, sessions: int = 2, images: int = 6, size=(40, 40)) -> Path:
    """root/objK/sS/img_N.png: class K a colour, brighter by session, a shifted square per image."""
    for c in range(classes):
        for s in range(max(sessions, 1)):  # sessions 0: DIR/CLASS/*.png
            folder = root / f"obj{c + 1}" / f"s{s + 1}" if sessions else root / f"obj{c + 1}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(images):
                img = np.full(size + (3,), 40 + 30 * s, np.uint8)
                cv2.rectangle(img, (4 + k, 4), (24 + k, 24), COLOURS[c % len(COLOURS)], -1)
                cv2.imwrite(str(folder / f"img_{k}.png"), img)
    return root


def all_training(scenario: FolderScenario):
    return [p for i in range(scenario.n_batches) for p, _ in scenario.batch_entries(i)]


def test_plan_is_nicv2_like_and_seeded(tmp_path):
    root = make_folder(tmp_path / "objs")
    a = FolderScenario(root, first_classes=2, seed=0)
    # batch 0: the first session of the first 2 classes; then each other class-session alone
    assert a.n_batches == 1 + 4 * 2 - 2
    first = a.describe()["batches"][0]
    assert [(u["class"], u["session"]) for u in first] == [("obj1", "s1"), ("obj2", "s1")]
    assert all(len(batch) == 1 for batch in a.describe()["batches"][1:])
    # every training image exactly once, none of them in the test set, labels = folder order
    train = all_training(a)
    assert len(train) == len(set(train)) and not set(train) & {p for p, _ in a._test}
    assert a.class_names == ["obj1", "obj2", "obj3", "obj4"]
    # held out: round(0.2 * 6) = 1 image of every class-session, the same for every run (split seed)
    assert Counter(Path(p).parent.as_posix() for p, _ in a._test) == {f"obj{c}/s{s}": 1 for c in range(1, 5)
                                                                       for s in (1, 2)}
    b, c = FolderScenario(root, first_classes=2, seed=1), FolderScenario(root, first_classes=2, seed=0)
    assert b._test == a._test and c.describe() == a.describe()
    assert [u for bt in b.describe()["batches"][1:] for u in bt] != [u for bt in a.describe()["batches"][1:] for u in bt]
    batch = a.load_batch(1)
    assert batch.frames.shape == (5, 128, 128, 3) and len(set(batch.labels.tolist())) == 1


def test_per_batch_cuts_class_sessions_and_flat_classes_are_one_session(tmp_path):
    root = make_folder(tmp_path / "flat", classes=3, sessions=0, images=10)  # DIR/CLASS/*.png
    s = FolderScenario(root, first_classes=1, per_batch=3, test_fraction=0.2)
    sizes = [u["images"] for batch in s.describe()["batches"] for u in batch]
    assert sorted(sizes) == sorted([3, 3, 2] * 3) and s.describe()["batches"][0][0]["session"] is None
    assert s.test_size == 3 * 2


def test_a_test_folder_is_the_test_set(tmp_path):
    root = make_folder(tmp_path / "objs", classes=3, sessions=1, images=4)
    make_folder(root / "test", classes=2, sessions=1, images=2)
    s = FolderScenario(root, first_classes=1)
    assert s.test_size == 4 and sorted(set(s.test_labels().tolist())) == [0, 1]
    assert len(all_training(s)) == 12 and s.describe()["test"] == "folder"
    (root / "test" / "ghost").mkdir()
    with pytest.raises(SourceError, match="test class that the training folders do not have"):
        FolderScenario(root)


def test_images_are_cropped_to_their_central_square(tmp_path):
    root = make_folder(tmp_path / "wide", classes=2, sessions=1, images=3, size=(40, 80))
    frames = FolderScenario(root, first_classes=1, input_size=32).load_batch(0).frames
    assert frames.shape[1:] == (32, 32, 3)


@pytest.mark.parametrize("layout,words", [
    ("missing", "does not exist"), ("file", "is not a folder"), ("one", "at least 2 are needed"),
    ("mixed", "holds both images and session folders"), ("empty", "holds no images")])
def test_bad_layouts(tmp_path, layout, words):
    root = tmp_path / "objs"
    if layout == "file":
        root.write_text("notes")
    elif layout == "one":
        make_folder(root, classes=1)
    elif layout == "mixed":
        make_folder(root, classes=2)
        cv2.imwrite(str(root / "obj1" / "loose.png"), np.zeros((8, 8, 3), np.uint8))
    elif layout == "empty":
        make_folder(root, classes=2)
        (root / "obj3").mkdir()
    with pytest.raises(SourceError, match=words):
        FolderScenario(root)


def test_run_on_a_folder_end_to_end(tmp_path, capsys):
    """`run CWR folder:DIR` (random weights of width 0.5): trains, records the plan and the class names,
    and predict names the folder's classes."""
    root = make_folder(tmp_path / "objs", classes=3, sessions=2, images=5)
    out = tmp_path / "out"
    assert main(["run", "CWR", f"folder:{root}", "--first-classes", "2", "--input-size", "32", "--out", str(out),
                 "--quiet", "--width", "0.5"]) == 0
    manifest = json.loads((out / "artifacts" / "manifest.json").read_text())
    assert manifest["architecture"]["width"] == 0.5 and manifest["latent_shape"] == [512]
    results = json.loads((out / "results.json").read_text())
    assert results["scenario"] == "folder" and results["folder"] == str(root)
    run = results["runs"][0]
    assert run["class_names"] == ["obj1", "obj2", "obj3"] and run["n_batches"] == 5
    assert [u["class"] for u in run["plan"]["batches"][0]] == ["obj1", "obj2"]
    capsys.readouterr()
    assert main(["predict", "--state", str(out), str(root / "obj3" / "s1" / "img_0.png"), "--top", "3"]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in ("obj1", "obj2", "obj3"))


@pytest.mark.parametrize("args,words", [
    (["run", "CWR", "folder:{missing}"], "does not exist"),
    (["run", "CWR", "folder:{root}", "--per-batch", "0"], "--per-batch must be at least 1"),
    (["run", "CWR", "folder:{root}", "--first-classes", "9"], "--first-classes must be 1..3"),
    (["run", "CWR", "--first-classes", "2"], "give folder:DIR"),
])
def test_folder_mistakes_are_one_line_and_write_nothing(tmp_path, capsys, args, words):
    root = make_folder(tmp_path / "objs", classes=3, sessions=1, images=3)
    out = tmp_path / "out"
    argv = [a.format(root=root, missing=tmp_path / "nope") for a in args] + ["--out", str(out), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not out.exists()


def test_a_stream_of_small_batches_is_warned_about_at_start(tmp_path, capsys):
    """Batches far smaller than CORe50's 300 images at the preset's rates: one note with the settings to
    use; none once --set chooses the later rate."""
    root = make_folder(tmp_path / "objs", classes=3, sessions=2, images=5)
    args = ["run", "CWR", f"folder:{root}", "--first-classes", "2", "--input-size", "32", "--quiet", "--max-batches", "1"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    notes = [l for l in capsys.readouterr().err.splitlines() if "learn little from each small batch" in l]
    assert len(notes) == 1 and "about 4 images" in notes[0] and "--set lr_later=0.005" in notes[0]
    assert main(args + ["--out", str(tmp_path / "b"), "--set", "lr_later=0.005"]) == 0
    assert "learn little" not in capsys.readouterr().err
