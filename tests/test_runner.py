"""`latent-replay run` end to end on small streams: results, plot, resume, export-model, bad input."""
from __future__ import annotations

import json

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from latent_replay.cli import main

# A short synthetic stream: 4 batches of 12 frames at 64 px, head-only CWR* at pool6 (fast on 2 cores).
SMALL = ["--synthetic-batches", "4", "--synthetic-frames", "12", "--synthetic-size", "64", "--quiet"]


def results(out):
    return json.loads((out / "results.json").read_text())


def test_synthetic_run_writes_results_plot_and_table(tmp_path, capsys):
    out = tmp_path / "out"
    # 20 epochs: enough steps on 12 frames for the head to learn (4 give constant predictions, 10%)
    assert main(["run", "CWR", "--out", str(out), "--replay-memory", "20", "--set", "epochs_first=20",
                 "--set", "epochs=20"] + SMALL) == 0
    printed = capsys.readouterr().out
    r = results(out)
    assert r["complete"] and r["method"] == "cwr" and r["latent_layer"] == "pool6"
    batches = r["runs"][0]["batches"]
    assert [b["batch"] for b in batches] == [0, 1, 2, 3]
    for b in batches:
        # 10 test classes (chance 0.1), 5 to 8 of them taught: measured 0.33-0.48
        assert b["accuracy"] > 0.25 and b["train_s"] > 0 and b["front_s"] > 0 and b["peak_rss_mb"] > 0
    # pool bytes = stored patterns x bytes per pattern (+ labels), never more than M patterns
    assert batches[-1]["pool_patterns"] == 20
    assert batches[-1]["pool_bytes"] >= 20 * 1024 * 4
    assert r["summary"]["final_accuracy_mean"] == batches[-1]["accuracy"]
    import onnxruntime

    assert r["versions"]["onnxruntime"] == onnxruntime.__version__
    png = cv2.imread(str(out / "accuracy.png"))
    assert png is not None and png.shape[0] > 100
    assert "final accuracy over 1 run(s)" in printed


def test_seed_argument_form_and_aliases(tmp_path):
    out = tmp_path / "out"
    # the seed's positional form, with its underscore options
    assert main(["run", "AR1F", "391", "latent", "--latent_layer", "pool6", "--replay_memory", "30",
                 "--out", str(out)] + SMALL) == 0
    r = results(out)
    assert (r["method"], r["replay"], r["latent_layer"], r["replay_memory"]) == ("ar1free", "latent", "pool6", 30)


def test_interrupted_run_resumes_to_the_same_curve(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = ["run", "CWR", "--replay-memory", "20", "--seed", "3"] + SMALL
    assert main(args + ["--out", str(straight)]) == 0
    assert main(args + ["--out", str(resumed), "--max-batches", "2", "--save-every", "3"]) == 0
    partial = results(resumed)
    assert not partial["complete"] and len(partial["runs"][0]["batches"]) == 2
    assert main(args + ["--out", str(resumed)]) == 0  # same command: continues from batch 2
    a, b = results(straight)["runs"][0]["batches"], results(resumed)["runs"][0]["batches"]
    assert [x["accuracy"] for x in a] == [x["accuracy"] for x in b]
    assert [x["loss"] for x in a] == pytest.approx([x["loss"] for x in b], rel=1e-6)


def test_runs_are_averaged(tmp_path):
    out = tmp_path / "out"
    assert main(["run", "CWR", "--runs", "0-1", "--replay-memory", "20", "--out", str(out)] + SMALL) == 0
    r = results(out)
    assert [x["run"] for x in r["runs"]] == [0, 1]
    finals = [x["batches"][-1]["accuracy"] for x in r["runs"]]
    assert r["summary"]["runs"] == 2
    assert r["summary"]["final_accuracy_mean"] == pytest.approx(np.mean(finals))
    assert r["summary"]["final_accuracy_std"] == pytest.approx(np.std(finals))


def test_export_model_runs_in_a_plain_inference_session(tmp_path):
    out = tmp_path / "out"
    assert main(["run", "AR1F", "--latent-layer", "conv6/dw", "--replay-memory", "10", "--out", str(out),
                 "--set", "epochs=1", "--set", "epochs_first=1", "--synthetic-batches", "2",
                 "--synthetic-frames", "6", "--synthetic-size", "64", "--quiet"]) == 0
    model = tmp_path / "learned.onnx"
    assert main(["export-model", "--artifacts", str(out / "artifacts"), "--state", str(out / "run0" / "state"),
                 "--out", str(model)]) == 0

    from latent_replay.runtime.learn import LearnerConfig
    from latent_replay.runtime.engine import Back, Front
    from latent_replay.runtime.learn import Learner
    from latent_replay.runtime.sources import SyntheticScenario

    frames = SyntheticScenario(seed=0, input_size=64).test_set().frames[:16]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits, probs = session.run(["logits", "probabilities"], {"frames": frames})
    learner = Learner(Back(out / "artifacts"), LearnerConfig.from_dict(results(out)["runs"][0]["config"]))
    learner.load(out / "run0" / "state")
    expected = learner.logits(Front(out / "artifacts")(frames))
    assert np.ptp(expected) > 0
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)


# -- bad input ---------------------------------------------------------------------------------
def _fake_core50(tmp_path, n_batches=3, per_batch=4):
    """A tiny CORe50 tree (40 px PNGs, resized on load) with NICv2-391-style filelists for run 0."""
    root = tmp_path / "core50" / "core50_128x128"
    lists = tmp_path / "lists"
    run = lists / "sIII_v2_391" / "run0"
    run.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def png(rel, label):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img = np.full((40, 40, 3), 40 * label, np.uint8) + rng.integers(0, 30, (40, 40, 3), dtype=np.uint8)
        cv2.imwrite(str(path), img)
        return f"{rel} {label}"

    for b in range(n_batches):
        lines = [png(f"s1/o{b + 1}/C_01_{b + 1:02d}_{k:03d}.png", b) for k in range(per_batch)]
        (run / f"train_batch_{b:02d}_filelist.txt").write_text("\n".join(lines) + "\n")
    test = [png(f"s3/o{b + 1}/C_03_{b + 1:02d}_000.png", b) for b in range(n_batches)]
    (lists / "test_filelist_20.txt").write_text("\n".join(test) + "\n")
    (run / "test_filelist.txt").write_text("\n".join(test) + "\n")
    return tmp_path / "core50", lists


def test_core50_run_on_a_fake_tree_and_bad_images(tmp_path, capsys):
    core50, lists = _fake_core50(tmp_path)
    base = ["run", "CWR", "391", "latent", str(core50), "--filelists", str(lists), "--replay-memory", "5",
            "--quiet", "--classes", "50"]
    assert main(base + ["--out", str(tmp_path / "ok")]) == 0
    assert results(tmp_path / "ok")["complete"]
    bad = core50 / "core50_128x128" / "s1" / "o2" / "C_01_02_001.png"
    bad.write_bytes(b"not a png")
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "C_01_02_001.png" in err and "Traceback" not in err
    r = json.loads((tmp_path / "bad" / "results.json").read_text()) if (tmp_path / "bad" / "results.json").exists() else None
    assert r is None or not r["complete"]
    assert main(base + ["--out", str(tmp_path / "skip"), "--skip-bad-images"]) == 0
    assert results(tmp_path / "skip")["runs"][0]["batches"][-1]["bad_images"] == 1


@pytest.mark.parametrize("args, message", [
    (["AR1F", "391", "latent", "/nonexistent/core50"], "/nonexistent/core50"),
    (["--replay-memory", "0"], "must be > 0"),
    (["CWR", "--latent-layer", "conv5_4/dw"], "pool6"),
    (["--latent-layer", "conv9/dw"], "valid latent layers"),
    (["XYZ"], "unknown method"),
    (["naive", "no", "AR1F"], "cannot tell"),
    (["AR1F", "100"], "79, 196 or 391"),
    (["--runs", "0-12"], "runs 0..9"),
])
def test_bad_run_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    code = main(["run"] + args + ["--out", str(tmp_path / "out")] + SMALL)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err


def test_artifacts_that_do_not_match_the_run(tmp_path, capsys):
    art = tmp_path / "art"
    assert main(["export", "--latent-layer", "pool6", "--classes", "3", "--input-size", "64", "--out", str(art)]) == 0
    capsys.readouterr()
    assert main(["run", "AR1F", "--latent-layer", "conv5_4/dw", "--artifacts", str(art), "--out",
                 str(tmp_path / "o1")] + SMALL) == 2
    assert "exported at latent layer 'pool6'" in capsys.readouterr().err
    # 3 classes cannot hold the synthetic stream's 10 labels
    assert main(["run", "CWR", "--artifacts", str(art), "--out", str(tmp_path / "o2")] + SMALL) == 2
    assert "classes" in capsys.readouterr().err
