"""Shared pieces of the data-safety and CLI-error tests: one small finished run (exported once per
session and copied per test), folder snapshots, and the one-line-error check."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from latent_replay.cli import main

# 4 synthetic batches of 12 frames at 64 px, CWR* at pool6: a whole run in a couple of seconds.
SMALL = ["--synthetic-batches", "4", "--synthetic-frames", "12", "--synthetic-size", "64", "--quiet",
         "--replay-memory", "20"]
CWR = ["run", "CWR"] + SMALL
TEMPLATE_UMASK = 0o027  # the template run is written under this umask (tests check the modes)

_template: Dict[str, Path] = {}


def template_run(tmp_path_factory) -> Path:
    """A finished `run CWR` folder (artifacts, results, plot, run0/state), made once per session."""
    if "run" not in _template:
        out = tmp_path_factory.mktemp("template") / "run"
        old = os.umask(TEMPLATE_UMASK)
        try:
            assert main(CWR + ["--out", str(out)]) == 0
        finally:
            os.umask(old)
        _template["run"] = out
    return _template["run"]


def copy_run(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest)
    return dest


def snapshot(folder: Path) -> Dict[str, Tuple[str, int]]:
    """Every path under `folder` (itself included) -> (content hash or 'dir', mtime in ns)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files + ([""] if root == str(folder) else []):
            p = Path(root) / name
            st = p.stat()
            digest = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(folder))] = (digest, st.st_mtime_ns)
    return out


def error_line(err: str, command: str) -> str:
    """The one error line of a failed command: no traceback, exactly one `error:` line."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith(f"latent-replay {command}: ")]
    assert len(errors) == 1, err
    return errors[0]


def only_line(err: str, command: str) -> str:
    """The error must be all that was printed (the command failed before doing anything)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return error_line(err, command)


def in_read_only_folder(folder: Path, argv: List[str]) -> subprocess.CompletedProcess:
    """`latent-replay ARGV` in a fresh process while the empty `folder` is read-only: a read-only tmpfs
    mounted on it in a private mount namespace (`unshare -rm`), else -- for a user other than root, whom
    permissions bind -- its write permission taken away. Skips where neither makes it read-only."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "latent_replay.cli"] + argv
    repo = Path(__file__).resolve().parents[1]
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o ro tmpfs "$1"', "sh", str(folder)],
                           capture_output=True) if shutil.which("unshare") else None
    if probe is not None and probe.returncode == 0:
        return subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o ro tmpfs "$1" && shift && exec "$@"',
                               "sh", str(folder)] + command, cwd=repo, capture_output=True, text=True, timeout=300)
    if os.geteuid() == 0:
        pytest.skip("no read-only folder here: no unshare -rm, and root ignores permissions")
    folder.chmod(0o555)
    try:
        return subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=300)
    finally:
        folder.chmod(0o755)
