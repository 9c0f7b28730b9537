"""A process killed while exporting into its folder (`run --out`, `stream --state`) leaves the
exporter's temporary sibling `.artifacts.partial-XXXX`. Found by the crash tests (tests/test_crash.py):
the same command then refused its own folder ("already holds other files (.artifacts.partial-...)
and is not a run folder"). Such leftovers are ours: they do not make a folder foreign, and the next
process that locks the folder removes them. Anything else stays refused and untouched."""
from __future__ import annotations

import pytest

from latent_replay.cli import main
from latent_replay.folders import LOCK_NAME, FolderError, FolderLock, check_folder, is_leftover
from safety_helpers import CWR, error_line


def partial_export(folder):
    leftover = folder / ".artifacts.partial-k2v9x_1a"
    (leftover / "back").mkdir(parents=True)
    (leftover / "back" / "step.onnx").write_bytes(b"half an export")
    (leftover / "front.onnx").write_bytes(b"half an export")
    (folder / LOCK_NAME).write_text("12345")  # the killed process's pid, its lock long released
    return leftover


def test_what_counts_as_a_leftover(tmp_path):
    from latent_replay.export.exporter import BACK_DIR, FRONT_FILE
    from latent_replay.export.manifest import MANIFEST_NAME

    from latent_replay import folders

    assert folders.EXPORT_ENTRIES == {FRONT_FILE, BACK_DIR, MANIFEST_NAME}
    partial_export(tmp_path)
    (tmp_path / ".artifacts.old-4242").mkdir()
    (tmp_path / ".artifacts.old-4242" / MANIFEST_NAME).write_text("{}")
    assert is_leftover(tmp_path, ".artifacts.partial-k2v9x_1a") and is_leftover(tmp_path, ".artifacts.old-4242")
    # other names, files, and folders of that name holding anything else are the user's
    for name in ("artifacts", ".artifacts", ".state.partial-1", ".artifacts.older", ".artifacts.partial-mine"):
        (tmp_path / name).mkdir()
    (tmp_path / ".artifacts.partial-mine" / "photo.jpg").write_bytes(b"mine")
    (tmp_path / ".artifacts.partial-file").write_text("")
    for name in ("artifacts", ".artifacts", ".state.partial-1", ".artifacts.older", ".artifacts.partial-file",
                 ".artifacts.partial-mine", LOCK_NAME, "missing"):
        assert not is_leftover(tmp_path, name), name


def test_a_folder_with_only_a_partial_export_is_ours(tmp_path):
    partial_export(tmp_path)
    check_folder(tmp_path, ["results.json"], "--out", "a run folder")  # accepted as empty
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FolderError, match="notes.txt"):
        check_folder(tmp_path, ["results.json"], "--out", "a run folder")


def test_the_lock_removes_leftover_folders_only(tmp_path):
    leftover = partial_export(tmp_path)
    (tmp_path / ".artifacts.partial-file").write_text("a file of that name is not ours")
    (tmp_path / ".artifacts.old-77").mkdir()
    (tmp_path / ".artifacts.old-77" / "notes.txt").write_text("not an export's file: not ours")
    (tmp_path / ".hidden").mkdir()
    with FolderLock(tmp_path, "--out"):
        assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".artifacts.old-77", ".artifacts.partial-file", ".hidden"]
    assert (tmp_path / ".artifacts.old-77" / "notes.txt").read_text() == "not an export's file: not ours"


def test_run_continues_in_a_folder_whose_first_export_was_killed(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    leftover = partial_export(out)
    assert main(CWR + ["--out", str(out)]) == 0, capsys.readouterr().err
    assert not leftover.exists() and (out / "artifacts" / "manifest.json").is_file()
    # a user file beside the leftover is still refused, untouched
    other = tmp_path / "other"
    other.mkdir()
    partial_export(other)
    (other / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(CWR + ["--out", str(other)]) == 2
    assert "notes.txt" in error_line(capsys.readouterr().err, "run")
    assert (other / ".artifacts.partial-k2v9x_1a" / "front.onnx").is_file()
