"""`latent-replay predict` with what was learned (--state, --model) and the learned model's metadata.

The reference is the learner itself: `Learner.predict` on the front's latents of the same frames
(the engine's eval graph, loaded from the saved state), against which predict's merged inference
ONNX is compared. Images are written as PNG at the input size, so they reach the model unchanged.
"""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from latent_replay.cli import main
from latent_replay.runtime.engine import Back, Front
from latent_replay.runtime.learn import Learner, LearnerConfig
from latent_replay.runtime.sources import SyntheticScenario
from safety_helpers import only_line

SIZE = 64
# AR1*-free at conv6/dw: the whole back trains (BRN statistics, CWR* head), 3 batches
RUN = ["run", "AR1F", "--latent-layer", "conv6/dw", "--replay-memory", "10", "--set", "epochs=8",
       "--set", "epochs_first=8", "--synthetic-batches", "3", "--synthetic-frames", "12",
       "--synthetic-size", str(SIZE), "--quiet"]


def scenario():
    return SyntheticScenario(n_batches=3, seed=0, input_size=SIZE, frames_per_batch=12, difficulty=0.1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished run, 8 test frames (2 per class for 4 classes) as PNG, and the learner's own answer."""
    tmp = tmp_path_factory.mktemp("predict")
    out = tmp / "out"
    assert main(RUN + ["--out", str(out)]) == 0
    test = scenario().test_set()
    pick = np.concatenate([np.flatnonzero(test.labels == c)[:2] for c in range(4)])
    frames = test.frames[pick]
    images = []
    for k, frame in enumerate(frames):
        images.append(str(tmp / f"frame{k}.png"))
        assert cv2.imwrite(images[-1], frame)
    config = json.loads((out / "results.json").read_text())["runs"][0]["config"]
    learner = Learner(Back(out / "artifacts"), LearnerConfig.from_dict(config))
    learner.load(out / "run0" / "state")
    pred, probs = learner.predict(Front(out / "artifacts")(frames))
    assert len(set(pred.tolist())) > 1  # a learned head tells frames apart
    return {"tmp": tmp, "out": out, "images": images, "pred": pred, "probs": probs,
            "names": scenario().class_names}


def json_lines(text):
    return [json.loads(line) for line in text.strip().splitlines()]


def check_equals_learner(lines, trained, top):
    assert [x["image"] for x in lines] == trained["images"]
    for x, pred, probs in zip(lines, trained["pred"], trained["probs"]):
        assert x["class"] == pred and x["prediction"] == trained["names"][pred]
        assert len(x["top"]) == top
        for entry in x["top"]:
            assert entry["class"] == trained["names"][entry["index"]]
            assert entry["probability"] == pytest.approx(probs[entry["index"]], rel=1e-4, abs=2e-6)
        shown = [e["probability"] for e in x["top"]]
        assert shown == sorted(shown, reverse=True) and shown[0] == pytest.approx(probs.max(), rel=1e-4)


@pytest.mark.parametrize("where", ["run0/state", "."])
def test_predict_state_equals_the_learner(trained, capsys, where):
    """Through the run's state and through the run folder (one run: run0); artifacts found in OUT."""
    capsys.readouterr()
    assert main(["predict", "--state", str(trained["out"] / where), "--json", "--top", "3"] + trained["images"]) == 0
    check_equals_learner(json_lines(capsys.readouterr().out), trained, 3)


def test_images_of_other_sizes_are_centre_cropped_and_resized(trained, tmp_path, capsys):
    """A wider image whose central square is the frame, and the frame upscaled 2x by repeating pixels
    (area resizing gives the frame back exactly), predict as the frame itself."""
    frame = cv2.imread(trained["images"][0])
    wide = np.concatenate([np.zeros((SIZE, 16, 3), np.uint8), frame, np.full((SIZE, 16, 3), 255, np.uint8)], 1)
    big = frame.repeat(2, axis=0).repeat(2, axis=1)
    cv2.imwrite(str(tmp_path / "wide.png"), wide)
    cv2.imwrite(str(tmp_path / "big.png"), big)
    capsys.readouterr()
    assert main(["predict", "--state", str(trained["out"]), "--json", "--top", "3", trained["images"][0],
                 str(tmp_path / "wide.png"), str(tmp_path / "big.png")]) == 0
    same, wide_line, big_line = json_lines(capsys.readouterr().out)
    assert wide_line["top"] == same["top"] and big_line["top"] == same["top"]


def test_learned_model_file_carries_names_and_predicts_like_the_learner(trained, capsys):
    model = trained["tmp"] / "learned.onnx"
    assert main(["export-model", "--state", str(trained["out"] / "run0" / "state"), "--out", str(model)]) == 0
    # any onnxruntime user reads the metadata
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    assert meta["class_names"] == trained["names"]
    taught = sorted({c for b in range(3) for c, _ in scenario().batch_content(b)})
    assert meta["trained_classes"] == taught
    assert meta["input"]["shape"] == ["batch", SIZE, SIZE, 3] and meta["input"]["channel_order"] == "BGR"
    assert meta["input"]["dtype"] == "uint8" and meta["input"]["layout"] == "NHWC"
    manifest = json.loads((trained["out"] / "artifacts" / "manifest.json").read_text())
    assert {k: meta["preprocessing"][k] for k in manifest["preprocessing"]} == manifest["preprocessing"]
    assert meta["latent_replay"]["latent_layer"] == "conv6/dw" and meta["latent_replay"]["method"] == "ar1free"

    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--json", "--top", "2"] + trained["images"]) == 0
    check_equals_learner(json_lines(capsys.readouterr().out), trained, 2)
    assert main(["predict", "--model", str(model), "--top", "1"] + trained["images"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"{img}: {trained['names'][p]} ({trained['probs'][k, p]:.3f})"
                     for k, (img, p) in enumerate(zip(trained["images"], trained["pred"]))]


def test_artifacts_alone_with_a_trained_head_are_used_as_exported(tmp_path, capsys):
    """Weights that bring a head (the seed's Caffe model has a trained mid_fc7): names class_N, and the
    probabilities of the exported back itself."""
    from helpers import make_frames, make_weights
    from latent_replay.export.exporter import export

    art = tmp_path / "art"
    export(make_weights(0, classes=4), "pool6", 4, art, input_size=SIZE)
    frame = make_frames(1, seed=1, size=SIZE)
    cv2.imwrite(str(tmp_path / "f.png"), frame[0])
    assert main(["predict", "--artifacts", str(art), "--json", "--top", "4", str(tmp_path / "f.png")]) == 0
    (line,) = json_lines(capsys.readouterr().out)
    logits = Back(art).logits(Front(art)(frame)).astype(np.float64)[0]
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert {e["class"]: e["probability"] for e in line["top"]} == {
        f"class_{c}": pytest.approx(expected[c], rel=1e-4, abs=2e-6) for c in range(4)}


def test_untrained_heads_are_refused(trained, tmp_path, capsys):
    from latent_replay.runtime.state import load_state, save_state

    # the export's own head (random weights: all zero)
    assert main(["predict", "--artifacts", str(trained["out"] / "artifacts")] + trained["images"][:1]) == 2
    line = only_line(capsys.readouterr().err, "predict")
    assert "untrained" in line and "--state" in line and "--model" in line
    # a stream state that was never taught: refused through --state and through the exported model
    stream = tmp_path / "stream"
    assert main(["stream", "--source", "synthetic", "--headless", "--max-frames", "3", "--weights", "random",
                 "--classes", "5", "--state", str(stream)]) == 0
    assert main(["export-model", "--state", str(stream), "--out", str(tmp_path / "untaught.onnx")]) == 0
    assert "untrained" in capsys.readouterr().err
    for args in (["--state", str(stream)], ["--model", str(tmp_path / "untaught.onnx")]):
        assert main(["predict"] + args) == 2
        line = only_line(capsys.readouterr().err, "predict")
        assert "untrained (no class was trained)" in line and "--state" in line
    # a state whose head rows are all zero, although it says it trained classes
    state = load_state(trained["out"] / "run0" / "state")
    state["arrays"]["param/mid_fc7/weight"][:] = 0
    zeroed = tmp_path / "zeroed"
    shutil.copytree(trained["out"] / "artifacts", zeroed / "artifacts")
    save_state(state, zeroed / "run0" / "state")
    assert main(["predict", "--state", str(zeroed / "run0" / "state")] + trained["images"][:1]) == 2
    assert "all zeros" in only_line(capsys.readouterr().err, "predict")


def test_a_taught_stream_state_predicts_with_its_names(tmp_path, capsys):
    schedule = tmp_path / "schedule.json"
    schedule.write_text(json.dumps({"classes": ["blue thing", "red thing"], "teach": [
        {"frames": [0, 19], "label": "blue thing"}, {"frames": [100, 119], "label": "red thing"}]}))
    state = tmp_path / "stream"
    assert main(["stream", "--source", "synthetic", "--headless", "--schedule", str(schedule), "--weights",
                 "random", "--classes", "4", "--max-frames", "125", "--state", str(state)]) == 0
    frames = SyntheticScenario(seed=5, input_size=128, difficulty=0.1).test_set().frames[::60][:4]
    images = []
    for k, frame in enumerate(frames):
        images.append(str(tmp_path / f"f{k}.png"))
        cv2.imwrite(images[-1], frame)
    capsys.readouterr()
    assert main(["predict", "--state", str(state), "--json", "--top", "4"] + images) == 0
    lines = json_lines(capsys.readouterr().out)
    saved = json.loads((state / "learner" / "state.json").read_text())
    learner = Learner(Back(state / "artifacts"), LearnerConfig.from_dict(saved["config"]))
    learner.load(state / "learner")
    pred, probs = learner.predict(Front(state / "artifacts")(frames))
    names = ["blue thing", "red thing", "class_2", "class_3"]
    for x, p, pr in zip(lines, pred, probs):
        assert x["prediction"] == names[p]
        assert {e["class"]: e["trained"] for e in x["top"]} == {"blue thing": True, "red thing": True,
                                                                 "class_2": False, "class_3": False}
        for e in x["top"]:
            assert e["probability"] == pytest.approx(pr[e["index"]], rel=1e-4, abs=2e-6)


def test_bad_input_is_one_line_exit_2(trained, tmp_path, capsys):
    out, image = trained["out"], trained["images"][0]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    (tmp_path / "empty").mkdir()
    lonely = tmp_path / "lonely"  # a state copied away from its artifacts
    shutil.copytree(out / "run0" / "state", lonely / "state")
    other = tmp_path / "other"  # artifacts cut at another layer
    assert main(["export", "--latent-layer", "pool6", "--classes", "10", "--input-size", str(SIZE), "--out",
                 str(other)]) == 0
    capsys.readouterr()
    cases = [
        (["--state", str(tmp_path / "nothing"), image], "does not exist"),
        (["--state", str(tmp_path / "empty"), image], "holds no learner state"),
        (["--state", str(lonely / "state"), image], "found no artifacts next to the state"),
        (["--state", str(out), "--artifacts", str(other), image], "pass the artifacts the learner used"),
        (["--model", str(tmp_path / "nothing.onnx"), image], "does not exist"),
        (["--model", str(tmp_path), image], "is a folder"),
        (["--model", str(tmp_path / "bad.onnx"), image], "is not an ONNX model"),
        (["--model", str(out / "artifacts" / "front.onnx"), image], "carries no class names"),
        (["--model", str(tmp_path / "bad.onnx"), "--state", str(out), image], "drop --state"),
        (["--state", str(out), str(tmp_path / "missing.png")], "missing.png does not exist"),
        (["--state", str(out), str(tmp_path / "bad.png")], "cannot read image"),
        (["--state", str(out), str(tmp_path / "empty")], "is a folder"),
        (["--state", str(out), "--top", "0", image], "--top must be at least 1"),
        ([image], "nothing to predict with"),
    ]
    for args, words in cases:
        assert main(["predict"] + args) == 2, args
        assert words in only_line(capsys.readouterr().err, "predict"), args


def test_artifacts_a_run_was_given_are_found_from_its_results(tmp_path, capsys):
    """A run trained on --artifacts elsewhere has no OUT/artifacts: predict finds the recorded ones."""
    art, out = tmp_path / "art", tmp_path / "out"
    assert main(["export", "--latent-layer", "pool6", "--classes", "10", "--input-size", str(SIZE), "--out",
                 str(art)]) == 0
    assert main(["run", "CWR", "--artifacts", str(art), "--out", str(out), "--synthetic-batches", "2",
                 "--synthetic-frames", "8", "--synthetic-size", str(SIZE), "--replay-memory", "10", "--quiet"]) == 0
    assert not (out / "artifacts").exists()
    frame = scenario().test_set().frames[:1]
    cv2.imwrite(str(tmp_path / "f.png"), frame[0])
    capsys.readouterr()
    assert main(["predict", "--state", str(out / "run0" / "state"), "--json", str(tmp_path / "f.png")]) == 0
    (line,) = json_lines(capsys.readouterr().out)
    assert line["prediction"] in scenario().class_names


def test_class_names_and_trained_classes_of_states():
    """Stream class books, run records, and the fallbacks for states saved before runs recorded them."""
    from latent_replay.apps.export_model import state_classes

    head = np.zeros((4, 8), np.float32)
    head[[1, 3]] = 1.0
    arrays = {"param/mid_fc7/weight": head}
    stream = state_classes({"meta": {"stream": {"class_names": ["cup", "pen"], "trained": [1]}},
                            "arrays": arrays}, 4, "mid_fc7/weight")
    assert stream.names == ["cup", "pen", "class_2", "class_3"] and stream.trained == [1]
    run = state_classes({"meta": {"class_names": ["a", "b", "c", "d"], "batches_trained": 2,
                                  "records": [{"classes": [0, 2]}, {"classes": [2]}]}, "arrays": arrays},
                        4, "mid_fc7/weight")
    assert run.names == ["a", "b", "c", "d"] and run.trained == [0, 2]
    old_cwr = state_classes({"meta": {"batches_trained": 2, "records": [{}]},
                             "arrays": dict(arrays, **{"cwr/past": np.array([0, 5, 0, 2])})}, 4, "mid_fc7/weight")
    assert old_cwr.names == ["class_0", "class_1", "class_2", "class_3"] and old_cwr.trained == [1, 3]
    old_naive = state_classes({"meta": {"batches_trained": 1}, "arrays": arrays}, 4, "mid_fc7/weight")
    assert old_naive.trained == [1, 3]
    fresh = state_classes({"meta": {"batches_trained": 0}, "arrays": arrays}, 4, "mid_fc7/weight")
    assert fresh.trained == []
