"""Learner state on disk: one folder (arrays + metadata) replaced atomically.

A crash at any point leaves either the new state or the previous one loadable: the new state is
written into a sibling temporary folder, synced, and swapped in with `os.replace`; the metadata file
is written last, so a folder without it is incomplete. Only a folder of ours is ever replaced (a
state, a leftover of an interrupted save, or an empty folder); a damaged state (flipped bytes: the
zip CRC of the arrays, or unreadable metadata) is reported, never deleted or silently skipped.
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from ..atomic import WriteError, fsync_dir, why, write_synced

STATE_ARRAYS = "state.npz"
STATE_META = "state.json"


class StateError(ValueError):
    """A learner state folder that cannot be used: damaged, or a folder that is not a state."""

    def __init__(self, message: str, previous: Optional[Path] = None) -> None:
        super().__init__(message)
        self.previous = previous  # an intact previous state the user may continue from, if any


def _siblings(directory: Path) -> Tuple[Path, Path]:
    """(temporary directory being written, previous state kept during the swap)."""
    return (directory.with_name(f".{directory.name}.saving"), directory.with_name(f".{directory.name}.previous"))


def check_replaceable(directory: Path) -> None:
    """Refuse (StateError) to replace anything but a state, a leftover of one, or an empty folder;
    callers run it before their first write, `save_state` again at every save."""
    if not os.path.lexists(directory):
        return
    if not directory.is_dir():
        raise StateError(f"{directory} exists and is not a folder: refusing to replace it with a learner state")
    names = sorted(os.listdir(directory))
    if _complete(directory) or set(names) <= {STATE_ARRAYS, STATE_META}:
        return
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    raise StateError(f"{directory} holds other files ({shown}) and is not a learner state (no {STATE_META}): "
                     f"refusing to replace it; move it away or save the state elsewhere")


def save_state(state: Mapping[str, Any], directory: Path) -> None:
    """Write into a sibling temporary directory, fsync, then swap it in with os.replace. The
    metadata file is written last, so a directory without it is incomplete. A write that fails
    (disk full) raises WriteError and leaves the previous state as it was."""
    directory = Path(directory)
    tmp, previous = _siblings(directory)
    check_replaceable(directory)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise WriteError(f"cannot save the learner state in {directory}: {why(e)}", e.errno) from None
    try:
        write_synced(tmp / STATE_ARRAYS, lambda f: np.savez(f, **state["arrays"]))
        meta = json.dumps(state["meta"], sort_keys=True).encode("utf-8")
        write_synced(tmp / STATE_META, lambda f: f.write(meta))
        fsync_dir(tmp)
        if _complete(directory):
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(directory, previous)
        elif directory.exists():
            shutil.rmtree(directory)  # empty, or an incomplete state of ours (checked above)
        os.replace(tmp, directory)
        fsync_dir(directory.parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            kept = "; the previously saved state is kept" if _complete(directory) or _complete(previous) else ""
            raise WriteError(f"cannot save the learner state in {directory}: {why(e)}{kept}", e.errno) from None
        raise
    shutil.rmtree(previous, ignore_errors=True)


def _complete(directory: Path) -> bool:
    return (directory / STATE_META).is_file() and (directory / STATE_ARRAYS).is_file()


def has_state(directory: Path) -> bool:
    """Whether `directory` holds a learner state (or an interrupted save left the previous one)."""
    directory = Path(directory)
    return _complete(directory) or _complete(_siblings(directory)[1])


def state_dir(directory: Path) -> Path:
    """`directory` if it holds a complete state, else the previous state left by an interrupted swap."""
    if _complete(directory):
        return directory
    previous = _siblings(directory)[1]
    if _complete(previous):
        return previous
    raise FileNotFoundError(f"no learner state in {directory} (save one with Learner.save)")


def _read(path: Path) -> Dict[str, Any]:
    meta = json.loads((path / STATE_META).read_text(encoding="utf-8"))
    with np.load(path / STATE_ARRAYS, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}  # reading each member checks its zip CRC
    return {"arrays": arrays, "meta": meta}


_DAMAGE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


def load_state(directory: Path) -> Dict[str, Any]:
    """The state in `directory` (or the previous one an interrupted save left). A damaged state
    raises StateError naming it and, when an intact previous state exists, how to continue from it."""
    directory = Path(directory)
    path = state_dir(directory)
    try:
        return _read(path)
    except _DAMAGE as e:
        problem = e.args[0] if isinstance(e, KeyError) and e.args else getattr(e, "strerror", None) or e
        message = f"the learner state in {path} is damaged or unreadable ({problem})"
        previous = _siblings(directory)[1]
        if path == directory and _complete(previous):
            try:
                _read(previous)
            except _DAMAGE:
                pass
            else:
                raise StateError(f"{message}; the previous state {previous} is intact: move the damaged one "
                                 f"aside (mv {directory} {directory}.damaged) and run again to continue from it",
                                 previous) from None
        raise StateError(message) from None
