"""Learner state on disk: one folder (arrays + metadata) replaced atomically.

A crash at any point leaves either the new state or the previous one loadable: the new state is
written into a sibling temporary folder, synced, and swapped in with `os.replace`; the metadata file
is written last, so a folder without it is incomplete.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from ..atomic import fsync_dir, write_synced

STATE_ARRAYS = "state.npz"
STATE_META = "state.json"


def _siblings(directory: Path) -> Tuple[Path, Path]:
    """(temporary directory being written, previous state kept during the swap)."""
    return (directory.with_name(f".{directory.name}.saving"), directory.with_name(f".{directory.name}.previous"))


def save_state(state: Mapping[str, Any], directory: Path) -> None:
    """Write into a sibling temporary directory, fsync, then swap it in with os.replace. The
    metadata file is written last, so a directory without it is incomplete."""
    directory = Path(directory)
    tmp, previous = _siblings(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_synced(tmp / STATE_ARRAYS, lambda f: np.savez(f, **state["arrays"]))
        meta = json.dumps(state["meta"], sort_keys=True).encode("utf-8")
        write_synced(tmp / STATE_META, lambda f: f.write(meta))
        fsync_dir(tmp)
        if _complete(directory):
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(directory, previous)
        elif directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
        fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def _complete(directory: Path) -> bool:
    return (directory / STATE_META).is_file() and (directory / STATE_ARRAYS).is_file()


def state_dir(directory: Path) -> Path:
    """`directory` if it holds a complete state, else the previous state left by an interrupted swap."""
    if _complete(directory):
        return directory
    previous = _siblings(directory)[1]
    if _complete(previous):
        return previous
    raise FileNotFoundError(f"no learner state in {directory} (save one with Learner.save)")


def load_state(directory: Path) -> Dict[str, Any]:
    path = state_dir(Path(directory))
    meta = json.loads((path / STATE_META).read_text(encoding="utf-8"))
    with np.load(path / STATE_ARRAYS, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return {"arrays": arrays, "meta": meta}
