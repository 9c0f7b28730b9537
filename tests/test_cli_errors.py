"""Bad input answered in one line on stderr with exit code 2 -- no traceback, no OpenCV warnings,
nothing written -- and the messages that tell the user where they stand (resume, Ctrl-C)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from latent_replay.cli import build_parser, main
from safety_helpers import CWR, only_line, template_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return template_run(tmp_path_factory)


# -- export --out that resolves to the working folder ------------------------------------------------
@pytest.mark.parametrize("out", [".", "inner/..", "./inner/../."])
def test_export_into_the_working_folder(tmp_path, monkeypatch, capsys, out):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inner").mkdir()
    assert main(["export", "--latent-layer", "pool6", "--out", out]) == 2
    line = only_line(capsys.readouterr().err, "export")
    assert "is the current folder" in line and "--out artifacts" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inner"]


def test_export_into_a_folder_above_the_working_one(tmp_path, monkeypatch, capsys):
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")
    assert main(["export", "--latent-layer", "pool6", "--out", ".."]) == 2
    assert "a folder above the current one" in only_line(capsys.readouterr().err, "export")


def test_export_to_a_path_with_dots_that_names_a_new_folder(tmp_path, capsys):
    (tmp_path / "inner").mkdir()
    out = tmp_path / "inner" / ".." / "art"
    assert main(["export", "--latent-layer", "pool6", "--classes", "3", "--out", str(out)]) == 0
    assert (tmp_path / "art" / "manifest.json").is_file()


# -- bench ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--layers", "foo"], ("--layers 'foo'", "unknown latent layer foo", "conv5_4/dw")),
    (["--storage", "fp32,int4"], ("--storage", "unknown storage int4", "uint8")),
    (["--layers", ","], ("--layers", "(empty list)")),
    (["--threads", "-1"], ("--threads",)),
])
def test_bench_arguments_are_checked_up_front(tmp_path, capsys, monkeypatch, args, words):
    from latent_replay.apps.bench import command as bench

    def must_not_run(*a, **k):
        raise AssertionError("the benchmark started")

    monkeypatch.setattr(bench, "benchmark", must_not_run)
    assert main(["bench", "--quick", "--out", str(tmp_path / "b")] + args) == 2
    line = only_line(capsys.readouterr().err, "bench")
    assert all(w in line for w in words), line
    assert not (tmp_path / "b").exists()


def test_bench_bad_layers_in_a_real_process_exits_2(tmp_path):
    """As a user runs it (a fresh interpreter, `python -m latent_replay.cli`), and as a script calling
    benchmark() directly sees it (a SystemExit with the message)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "latent_replay.cli", "bench", "--quick", "--layers", "foo",
                           "--out", str(tmp_path / "b")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "unknown latent layer foo" in only_line(proc.stderr, "bench")
    from latent_replay.apps.bench import command as bench

    with pytest.raises(SystemExit) as e:
        bench.check_arguments(build_parser().parse_args(["bench", "--layers", "foo"]))
    assert isinstance(e.value.code, str) and "unknown latent layer foo" in e.value.code


# -- --device cuda on an onnxruntime without the CUDA provider ---------------------------------------------
@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this onnxruntime has the CUDA provider")
@pytest.mark.parametrize("command", ["run", "stream", "predict", "bench"])
def test_device_cuda_without_the_cuda_provider(template, tmp_path, capsys, monkeypatch, command):
    """The engines' own check, asked before anything is written: no export into --out/--state, no traceback."""
    from latent_replay.apps.bench import command as bench

    def must_not_run(*a, **k):
        raise AssertionError("the benchmark started")

    monkeypatch.setattr(bench, "benchmark", must_not_run)
    written = tmp_path / "written"
    argv = {"run": CWR + ["--out", str(written)],
            "stream": ["stream", "--source", "synthetic", "--headless", "--max-frames", "3", "--weights", "random",
                       "--state", str(written)],
            "predict": ["predict", "--state", str(template)],
            "bench": ["bench", "--quick", "--out", str(written)]}[command]
    assert main(argv + ["--device", "cuda"]) == 2
    line = only_line(capsys.readouterr().err, command)
    assert "no CUDA execution provider" in line and "onnxruntime-gpu" in line and "--device cpu" in line, line
    assert not written.exists()


# -- stream sources that deliver nothing ----------------------------------------------------------------
class _OpensButEmpty:
    """What OpenCV's FFmpeg backend does with some files that are not videos: opens, then no frame."""

    def __init__(self, *args) -> None:
        pass

    def isOpened(self) -> bool:
        return True

    def read(self):
        return False, None

    def get(self, prop) -> float:
        return 0.0

    def set(self, prop, value) -> bool:
        return True

    def release(self) -> None:
        pass


def test_stream_source_that_delivers_no_frame(tmp_path, capsys, monkeypatch):
    from latent_replay.runtime.sources import video

    notes = tmp_path / "notes.txt"
    notes.write_text("a text file, not a video\n")
    state = tmp_path / "state"
    base = ["stream", "--headless", "--state", str(state), "--weights", "random"]
    assert main(base + ["--source", str(notes)]) == 2  # this OpenCV refuses to open it
    assert "cannot read video file" in only_line(capsys.readouterr().err, "stream")
    monkeypatch.setattr(video.cv2, "VideoCapture", _OpensButEmpty)  # another OpenCV opens it, reads nothing
    assert main(base + ["--source", str(notes)]) == 2
    line = only_line(capsys.readouterr().err, "stream")
    assert f"--source {notes} delivered no frame" in line
    assert not state.exists()


def test_a_file_that_is_not_a_video_gives_our_line_only(tmp_path):
    """FFmpeg's own 'moov atom not found' stays out of the terminal: in a fresh process, as a user runs it
    (FFmpeg's log level is set once per process), for a text file named .mp4 and a cut-off real video."""
    import os
    import subprocess
    import sys

    notes = tmp_path / "notes.mp4"
    notes.write_text("a text file, not a video\n")
    clip, cut = tmp_path / "clip.mp4", tmp_path / "cut.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 64))
    for k in range(20):
        writer.write(np.full((64, 64, 3), 10 * k, np.uint8))
    writer.release()
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}  # as in a user's shell
    for source in (notes, cut):
        state = tmp_path / f"state-{source.stem}"
        proc = subprocess.run([sys.executable, "-m", "latent_replay.cli", "stream", "--source", str(source),
                               "--headless", "--weights", "random", "--state", str(state)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert f"cannot read video file {source}" in only_line(proc.stderr, "stream")
        assert not state.exists()


def test_two_opencv_wheels_are_named_at_stream_start_with_the_fix(tmp_path, capsys, monkeypatch):
    """`pip install opencv-python` on top of the package's opencv-python-headless: both share cv2."""
    from importlib import metadata

    site = tmp_path / "site"  # an installed opencv-python, as pip records it
    info = site / "opencv_python-4.10.0.84.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: opencv-python\nVersion: 4.10.0.84\n")
    monkeypatch.syspath_prepend(str(site))
    assert metadata.version("opencv-python") == "4.10.0.84" and metadata.version("opencv-python-headless")
    assert main(["stream", "--source", "synthetic", "--headless", "--max-frames", "3", "--weights", "random",
                 "--state", str(tmp_path / "state")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert warnings == ["warning: opencv-python and opencv-python-headless are installed together and share the cv2 "
                        "module; keep one: pip uninstall -y opencv-python opencv-python-headless && pip install "
                        "opencv-python (the window; opencv-python-headless for --headless only)"]


# -- CORe50 folders ---------------------------------------------------------------------------------
def _fake_core50(tmp_path: Path, n: int = 3):
    """core50_128x128 with a few 40 px PNGs and NICv2-391 lists for run 0 (batch b holds object b)."""
    root, lists = tmp_path / "core50" / "core50_128x128", tmp_path / "lists"
    run = lists / "sIII_v2_391" / "run0"
    run.mkdir(parents=True)

    def png(rel: str, label: int) -> str:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), np.full((40, 40, 3), 40 * label, np.uint8))
        return f"{rel} {label}"

    for b in range(n):
        lines = [png(f"s1/o{b + 1}/C_01_{b + 1:02d}_{k:03d}.png", b) for k in range(4)]
        (run / f"train_batch_{b:02d}_filelist.txt").write_text("\n".join(lines) + "\n")
    test = [png(f"s3/o{b + 1}/C_03_{b + 1:02d}_000.png", b) for b in range(n)]
    (lists / "test_filelist_20.txt").write_text("\n".join(test) + "\n")
    (run / "test_filelist.txt").write_text("\n".join(test) + "\n")
    return root, lists


def test_an_empty_or_wrong_core50_folder_is_one_line_before_anything(tmp_path, capfd):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    for folder in (empty, REPO / "docs"):  # an empty folder, a folder of other files
        assert main(["run", "AR1F", "391", "latent", str(folder), "--out", str(out), "--quiet"]) == 2
        err = capfd.readouterr().err  # the C-level stderr too: OpenCV writes its warnings there
        line = only_line(err, "run")
        assert "does not hold the CORe50 images" in line and "core50_128x128.zip" in line
        assert "WARN" not in err
        assert not out.exists()


def test_a_missing_or_corrupt_core50_image_is_named_once_with_the_real_flag(tmp_path, capfd):
    from latent_replay.runtime.sources import Core50Scenario, SourceError, load_filelists

    root, lists = _fake_core50(tmp_path)
    (root / "s1" / "o1" / "C_01_01_001.png").unlink()
    load_filelists.cache_clear()
    with pytest.raises(SourceError) as e:
        Core50Scenario(root, filelists=lists, input_size=32).load_batch(0)
    assert "C_01_01_001.png is missing" in str(e.value) and "--skip-bad-images" in str(e.value)
    (root / "s1" / "o2" / "C_01_02_000.png").write_bytes(b"not a png")
    with pytest.raises(SourceError, match="C_01_02_000.png is corrupt.*--skip-bad-images"):
        Core50Scenario(root, filelists=lists, input_size=32).load_batch(1)
    assert "WARN" not in capfd.readouterr().err  # OpenCV's own warnings stay out of the terminal


# -- run arguments and the messages of a run ------------------------------------------------------------
def test_a_reversed_runs_range(tmp_path, capsys):
    assert main(CWR + ["--runs", "9-3", "--out", str(tmp_path / "out")]) == 2
    line = only_line(capsys.readouterr().err, "run")
    assert "the range 9-3 is reversed; write 3-9" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, words", [
    (["--set", "foo=1"], ("unknown learner setting(s) foo",)),
    (["--set", "epochs=0"], ("epochs must be at least 1",)),
    (["--latent-layer", "conv5_4/dw"], ("CWR* trains only the output layer",)),
    (["--core50", "/nonexistent/core50"], ("/nonexistent/core50",)),
    (["--max-batches", "0"], ("--max-batches must be at least 1, got 0",)),
    (["--max-batches", "-1"], ("--max-batches must be at least 1, got -1",)),
    (["--threads", "-1"], ("--threads must be at least 0, got -1",)),
    # the option the user typed, not the setting behind it
    (["--synthetic-batches", "0"], ("--synthetic-batches must be 1..26", "got 0")),
    (["--synthetic-size", "8"], ("--synthetic-size must be at least 16, got 8",)),
    (["--set", "lr_first=-1"], ("--set lr_first=-1: lr_first must be >= 0",)),
    (["--filelists", str(REPO / "latent_replay" / "data")], ("--filelists applies to CORe50 only",)),
    (["--core50", str(REPO / "README.md")], ("CORe50 image folder", "README.md is not a folder")),
])
def test_mistakes_found_before_the_first_write(tmp_path, capsys, args, words):
    """No 13 MB export and no empty --out left behind: all of it is checked before anything is written."""
    for out in (tmp_path / "new", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        assert main(CWR + args + ["--out", str(out)]) == 2
        line = only_line(capsys.readouterr().err, "run")
        assert all(w in line for w in words), line
    assert not (tmp_path / "new").exists() and list((tmp_path / "empty").iterdir()) == []


@pytest.mark.parametrize("args, words", [
    (["--method", "cwr", "--latent-layer", "conv5_4/dw"], ("CWR* trains only the output layer",)),
    (["--lr", "-1"], ("--lr must be >= 0, got -1.0",)),
    (["--epochs", "0"], ("--epochs must be at least 1, got 0",)),
    (["--latent-layer", "conv9/dw"], ("valid latent layers",)),
    (["--threads", "-1"], ("--threads must be at least 0, got -1",)),
    (["--train-threads", "-1"], ("--train-threads must be at least 0, got -1",)),
])
def test_stream_mistakes_found_before_the_first_write(tmp_path, capsys, args, words):
    state = tmp_path / "state"
    assert main(["stream", "--source", "synthetic", "--headless", "--max-frames", "3", "--weights", "random",
                 "--state", str(state)] + args) == 2
    line = only_line(capsys.readouterr().err, "stream")
    assert all(w in line for w in words), line
    assert not state.exists()


def test_resume_and_ctrl_c_say_where_the_run_stands(template, tmp_path, capsys, monkeypatch):
    from latent_replay.runtime import state as state_module

    out = tmp_path / "out"
    args = CWR + ["--artifacts", str(template / "artifacts"), "--out", str(out)]
    real_save = state_module.save_state
    saves = []

    def ctrl_c_at_save(n):
        def save(state, directory):
            saves.append(directory)
            if len(saves) == n:
                raise KeyboardInterrupt
            real_save(state, directory)
        return save

    with monkeypatch.context() as m:  # Ctrl-C while the first batch is being saved
        m.setattr(state_module, "save_state", ctrl_c_at_save(1))
        assert main(args) == 130
    err = capsys.readouterr().err
    assert "latent-replay run: interrupted: nothing was saved yet (the first batch had not finished)" in err
    saves.clear()
    with monkeypatch.context() as m:  # Ctrl-C during the second batch's save
        m.setattr(state_module, "save_state", ctrl_c_at_save(2))
        assert main(args) == 130
    err = capsys.readouterr().err
    assert f"interrupted: saved run 0 up to batch 1 of 4 in {out}; the same command continues from there" in err
    assert main(args + ["--max-batches", "1"]) == 0
    assert "run 0: resuming at batch 1 of 4" in capsys.readouterr().err
    assert main(args) == 0
    assert "run 0: resuming at batch 2 of 4" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["complete"]


def test_license_file_matches_setup():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "the latent-replay authors" in text
    assert 'license="MIT"' in (REPO / "setup.py").read_text()

