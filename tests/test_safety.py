"""Nothing of the user's is lost: folders that are not ours are refused untouched, an experiment
never overwrites another one, a second process is locked out, a damaged or unsaveable learner state
is reported (the previous good one kept), and files get the user's umask. Real files, the real CLI."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from latent_replay.cli import main
from safety_helpers import CWR, SMALL, TEMPLATE_UMASK, copy_run, error_line, only_line, snapshot, template_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return template_run(tmp_path_factory)


def user_folder(path: Path) -> Path:
    """A folder with the user's own files in it."""
    (path / "photos").mkdir(parents=True)
    (path / "notes.txt").write_text("do not lose me\n")
    (path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return path


# -- folders that are not ours are refused, untouched ----------------------------------------------
def test_export_refuses_a_folder_of_user_files(tmp_path, capsys):
    mine = user_folder(tmp_path / "mine")
    before = snapshot(mine)
    assert main(["export", "--latent-layer", "pool6", "--out", str(mine)]) == 2
    line = only_line(capsys.readouterr().err, "export")
    assert "notes.txt" in line and "not an export" in line and "refusing" in line
    assert snapshot(mine) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary folder left either
    # a file given as the output folder
    assert main(["export", "--out", str(mine / "notes.txt")]) == 2
    assert "is not a folder" in only_line(capsys.readouterr().err, "export")
    assert snapshot(mine) == before


def test_export_writes_an_empty_folder_and_replaces_only_a_previous_export(tmp_path, capsys):
    out = tmp_path / "art"
    out.mkdir()
    assert main(["export", "--latent-layer", "pool6", "--classes", "3", "--out", str(out)]) == 0
    first = json.loads((out / "manifest.json").read_text())
    assert main(["export", "--latent-layer", "pool6", "--classes", "4", "--out", str(out)]) == 0  # a previous export
    assert json.loads((out / "manifest.json").read_text())["classes"] == 4 and first["classes"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_disk_full_while_exporting_keeps_the_previous_export(template, tmp_path, capsys, monkeypatch):
    from latent_replay.export import exporter

    out = copy_run(template / "artifacts", tmp_path / "art")
    before = snapshot(out)

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(exporter, "_optimize_front", disk_full)
    assert main(["export", "--latent-layer", "pool6", "--out", str(out)]) == 2
    assert "No space left on device" in error_line(capsys.readouterr().err, "export")
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_run_and_stream_refuse_a_folder_of_user_files(tmp_path, capsys):
    mine = user_folder(tmp_path / "mine")
    before = snapshot(mine)
    assert main(CWR + ["--out", str(mine)]) == 2
    assert "not a run folder" in only_line(capsys.readouterr().err, "run")
    assert main(["stream", "--source", "synthetic", "--headless", "--max-frames", "3", "--state", str(mine)]) == 2
    assert "not a stream state" in only_line(capsys.readouterr().err, "stream")
    assert snapshot(mine) == before  # not even a lock file


def test_run_and_stream_do_not_take_each_others_folders(template, tmp_path, capsys):
    run = copy_run(template, tmp_path / "run")
    before = snapshot(run)
    assert main(["stream", "--source", "synthetic", "--headless", "--max-frames", "3", "--state", str(run)]) == 2
    assert "is the output folder of `latent-replay run`" in only_line(capsys.readouterr().err, "stream")
    assert snapshot(run) == before
    state = tmp_path / "stream-state"
    (state / "learner").mkdir(parents=True)
    assert main(CWR + ["--out", str(state)]) == 2
    assert "is the state folder of `latent-replay stream`" in only_line(capsys.readouterr().err, "run")
    assert sorted(p.name for p in state.iterdir()) == ["learner"]


def test_learner_state_swap_refuses_a_folder_that_is_not_a_state(tmp_path, capsys):
    from latent_replay.runtime.state import StateError, load_state, save_state

    state = {"arrays": {"w": np.arange(3.0)}, "meta": {"batches": 1}}
    mine = user_folder(tmp_path / "mine")
    before = snapshot(mine)
    with pytest.raises(StateError, match="not a learner state"):
        save_state(state, mine)
    assert snapshot(mine) == before
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StateError, match="not a folder"):
        save_state(state, tmp_path / "afile")
    # an empty folder, and the leftover of an interrupted save of ours, are replaced
    (tmp_path / "empty").mkdir()
    save_state(state, tmp_path / "empty")
    (tmp_path / "leftover").mkdir()
    (tmp_path / "leftover" / "state.npz").write_bytes(b"half written")
    save_state(state, tmp_path / "leftover")
    assert load_state(tmp_path / "leftover")["meta"] == {"batches": 1}
    # through the CLI: a run's state folder holding other files stops the run before it writes
    out = tmp_path / "out"
    user_folder(out / "run0" / "state")
    assert main(CWR + ["--out", str(out)]) == 2
    assert "not a learner state" in only_line(capsys.readouterr().err, "run")
    assert sorted(p.name for p in out.iterdir()) == ["run0"]


def test_export_model_refuses_a_folder_and_files_that_are_not_models(template, tmp_path, capsys):
    base = ["export-model", "--artifacts", str(template / "artifacts"), "--state", str(template / "run0" / "state")]
    folder = user_folder(tmp_path / "mine")
    before = snapshot(folder)
    assert main(base + ["--out", str(folder)]) == 2
    line = only_line(capsys.readouterr().err, "export-model")
    assert "is a folder" in line and "learned.onnx" in line
    assert main(base + ["--out", str(folder / "notes.txt")]) == 2
    assert "not an ONNX model" in only_line(capsys.readouterr().err, "export-model")
    assert snapshot(folder) == before
    model = tmp_path / "learned.onnx"
    assert main(base + ["--out", str(model)]) == 0
    assert main(base + ["--out", str(model)]) == 0  # our own model is replaced


# -- one experiment never overwrites another -------------------------------------------------------
def test_each_experiment_has_its_own_default_folder(tmp_path, monkeypatch):
    from latent_replay.cli import build_parser
    from latent_replay.apps.run.options import options_from_args

    def default(argv):
        return options_from_args(build_parser().parse_args(["run"] + argv)).default_out().as_posix()

    assert default([]) == "runs/ar1free-synthetic-latent-conv5_4_dw"
    assert default(["CWR"]) == "runs/cwr-synthetic-latent-pool6"
    assert default(["naive", "no"]) == "runs/naive-synthetic-no-conv5_4_dw"
    assert default(["AR1S", "79", "/data/core50"]) == "runs/ar1-79-latent-conv5_4_dw"

    monkeypatch.chdir(tmp_path)  # `run AR1F ...` then `run CWR`, both without --out
    assert main(["run", "AR1F", "--latent-layer", "conv6/dw", "--set", "epochs=1", "--set", "epochs_first=1"]
                + SMALL) == 0
    first = tmp_path / "runs" / "ar1free-synthetic-latent-conv6_dw"
    before = snapshot(first)
    assert main(CWR) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [first.name, "cwr-synthetic-latent-pool6"]
    assert snapshot(first) == before
    assert json.loads((first / "artifacts" / "manifest.json").read_text())["latent_layer"] == "conv6/dw"


@pytest.mark.parametrize("args, words", [
    (["run", "AR1F", "--latent-layer", "conv6/dw"] + SMALL, ("other artifacts", "latent layer pool6")),
    (CWR + ["--replay-memory", "30"], ("another experiment", "replay memory 20, not 30")),
    (CWR + ["--set", "epochs=2"], ("run 0 saved with other settings", "epochs=")),
])
def test_an_incompatible_run_folder_is_refused_before_anything_is_written(template, tmp_path, capsys, args, words):
    out = copy_run(template, tmp_path / "out")
    before = snapshot(out)
    assert main(args + ["--out", str(out)]) == 2
    line = only_line(capsys.readouterr().err, "run")
    assert all(w in line for w in words) and "--fresh" in line and "--out" in line
    assert snapshot(out) == before


def test_fresh_starts_over_in_the_same_folder(template, tmp_path):
    out = copy_run(template, tmp_path / "out")
    assert main(CWR + ["--set", "epochs=2", "--fresh", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and results["runs"][0]["config"]["epochs"] == 2


# -- two processes --------------------------------------------------------------------------------
HOLD = """
import sys, time
from pathlib import Path
from latent_replay.folders import FolderLock
with FolderLock(Path(sys.argv[1]), "--out"):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_second_process_on_the_same_folder_is_refused(template, tmp_path, capsys):
    out = copy_run(template, tmp_path / "out")
    state = tmp_path / "state"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    holders = [subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env) for folder in (out, state)]
    try:
        for h in holders:
            assert h.stdout.readline().strip() == "locked"
        before = snapshot(out)
        assert main(CWR + ["--out", str(out)]) == 2
        line = error_line(capsys.readouterr().err, "run")
        assert f"in use by another latent-replay process (pid {holders[0].pid})" in line
        assert snapshot(out) == before
        assert main(["stream", "--source", "synthetic", "--headless", "--max-frames", "3", "--weights", "random",
                     "--state", str(state)]) == 2
        assert f"(pid {holders[1].pid})" in error_line(capsys.readouterr().err, "stream")
        assert sorted(p.name for p in state.iterdir()) == [".latent-replay.lock"]  # nothing exported
    finally:
        for h in holders:
            h.communicate("", timeout=30)  # the holder exits: its lock goes with it
    assert main(CWR + ["--out", str(out)]) == 0  # now it runs (the run is complete: nothing to train)


TRY = """
import sys
from pathlib import Path
from latent_replay.folders import FolderError, FolderLock
try:
    with FolderLock(Path(sys.argv[1]), "--out"):
        print("locked")
except FolderError as e:
    print(e)
"""


def test_finished_folders_keep_no_lock_file(template, tmp_path):
    from latent_replay.folders import LOCK_NAME

    assert not (template / LOCK_NAME).exists()  # a finished run
    state = tmp_path / "state"
    assert main(["stream", "--source", "synthetic", "--headless", "--max-frames", "3", "--weights", "random",
                 "--state", str(state)]) == 0
    assert sorted(p.name for p in state.iterdir()) == ["artifacts", "learner"]


def test_a_lock_file_removed_between_open_and_lock_is_not_trusted(tmp_path, monkeypatch):
    """Removing the lock file on release is safe: a process that opened the file just before its holder
    removed it, and locked it just after, must not trust that lock (the file is gone; a third process
    would create and lock a new one). It locks the file in place instead, and keeps others out."""
    from latent_replay import folders

    real_open, opened = open, []

    def opened_then_removed(path, *args, **kwargs):
        f = real_open(path, *args, **kwargs)
        opened.append(path)
        if len(opened) == 1:
            os.unlink(path)  # the holder's release, between our open and our lock
        return f

    folder = tmp_path / "out"
    folder.mkdir()
    (folder / folders.LOCK_NAME).write_text("4242")  # a holder's lock file
    monkeypatch.setattr(folders, "open", opened_then_removed, raising=False)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with folders.FolderLock(folder, "--out"):
        assert len(opened) == 2 and (folder / folders.LOCK_NAME).read_text() == str(os.getpid())
        other = subprocess.run([sys.executable, "-c", TRY, str(folder)], capture_output=True, text=True, env=env,
                               timeout=120)
        assert f"in use by another latent-replay process (pid {os.getpid()})" in other.stdout, other
    assert not (folder / folders.LOCK_NAME).exists()
    other = subprocess.run([sys.executable, "-c", TRY, str(folder)], capture_output=True, text=True, env=env,
                           timeout=120)
    assert other.stdout.strip() == "locked" and os.listdir(folder) == []


def test_the_folder_lock_without_fcntl(tmp_path, monkeypatch):
    from latent_replay import folders

    monkeypatch.setattr(folders, "fcntl", None)
    with folders.FolderLock(tmp_path / "a" / "b", "--out"):
        assert (tmp_path / "a" / "b").is_dir()
    assert not (tmp_path / "a").exists()  # created by the lock, left empty: removed again


# -- damaged and unsaveable states ------------------------------------------------------------------
def flip_bytes(path: Path) -> bytes:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return bytes(data)


def test_a_damaged_state_is_reported_and_kept(template, tmp_path, capsys):
    out = tmp_path / "out"
    args = CWR + ["--artifacts", str(template / "artifacts"), "--out", str(out)]
    assert main(args + ["--max-batches", "2"]) == 0
    state = out / "run0" / "state"
    good = tmp_path / "good-at-2"
    copy_run(state, good)
    assert main(args) == 0  # batches 2 and 3
    damaged = flip_bytes(state / "state.npz")
    capsys.readouterr()
    assert main(args) == 2
    line = error_line(capsys.readouterr().err, "run")
    assert "damaged" in line and "CRC" in line and "--fresh" in line and ".state.previous" not in line
    assert (state / "state.npz").read_bytes() == damaged  # never deleted or repaired behind the user's back

    # with the previous good state beside it: the message says how to continue from it ...
    copy_run(good, out / "run0" / ".state.previous")
    assert main(args) == 2
    line = error_line(capsys.readouterr().err, "run")
    assert ".state.previous is intact" in line and f"mv {state} {state}.damaged" in line
    # ... and doing what it says continues from batch 2
    state.rename(state.parent / "state.damaged")
    assert main(args) == 0
    assert "run 0: resuming at batch 2 of 4" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["complete"]
    assert (out / "run0" / "state.damaged" / "state.npz").read_bytes() == damaged


def test_export_model_reports_a_damaged_state(template, tmp_path, capsys):
    state = copy_run(template / "run0" / "state", tmp_path / "state")
    flip_bytes(state / "state.npz")
    assert main(["export-model", "--artifacts", str(template / "artifacts"), "--state", str(state),
                 "--out", str(tmp_path / "m.onnx")]) == 2
    assert "damaged" in only_line(capsys.readouterr().err, "export-model")


def test_disk_full_while_saving_keeps_the_previous_state(template, tmp_path, capsys, monkeypatch):
    from latent_replay.runtime import state as state_module

    out = tmp_path / "out"
    args = CWR + ["--artifacts", str(template / "artifacts"), "--out", str(out)]
    assert main(args + ["--max-batches", "1"]) == 0
    real_write = state_module.write_synced

    def disk_full(path, write):
        real_write(path, lambda f: f.write(b"PK\x03\x04 partial"))  # part of the file got written
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    capsys.readouterr()
    with monkeypatch.context() as m:
        m.setattr(state_module, "write_synced", disk_full)
        assert main(args) == 2
    line = error_line(capsys.readouterr().err, "run")
    assert "No space left on device" in line and "previously saved state is kept" in line
    assert sorted(p.name for p in (out / "run0").iterdir()) == ["state"]  # no temporary folder left
    saved = state_module.load_state(out / "run0" / "state")
    assert len(saved["meta"]["records"]) == 1  # batch 0, intact and loadable
    assert main(args) == 0  # space again: it continues
    assert "resuming at batch 1 of 4" in capsys.readouterr().err


def test_disk_full_while_writing_results_is_one_line(template, tmp_path, capsys, monkeypatch):
    from latent_replay import atomic

    out = copy_run(template, tmp_path / "out")
    before = (out / "results.json").read_bytes()

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", disk_full)
    assert main(CWR + ["--out", str(out)]) == 2
    line = error_line(capsys.readouterr().err, "run")
    assert "results.json: No space left on device; the previous file is kept" in line
    assert (out / "results.json").read_bytes() == before


# -- modes follow the umask ------------------------------------------------------------------------
def test_written_files_follow_the_umask(template, tmp_path):
    file_mode, dir_mode = 0o666 & ~TEMPLATE_UMASK, 0o777 & ~TEMPLATE_UMASK
    for name in ("results.json", "accuracy.png", "artifacts/manifest.json", "artifacts/front.onnx"):
        assert (template / name).stat().st_mode & 0o777 == file_mode, name
    assert (template / "artifacts").stat().st_mode & 0o777 == dir_mode
    old = os.umask(0o022)
    try:
        model = tmp_path / "learned.onnx"
        assert main(["export-model", "--artifacts", str(template / "artifacts"), "--state",
                     str(template / "run0" / "state"), "--out", str(model)]) == 0
    finally:
        os.umask(old)
    assert model.stat().st_mode & 0o777 == 0o644
