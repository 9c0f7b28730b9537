"""Atomic files and folders: a reader, or a crash, never sees anything half-written.

The one place the package writes files atomically; the exporter, the learner state, results and
plots all go through it. Kept at the package root so that `export` and `runtime` can both use it
without importing each other.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO, Optional


class WriteError(OSError):
    """Writing failed (disk full, no permission): one line for the user, whatever was there before
    is kept. An OSError, so code that catches OSError keeps working."""

    def __init__(self, message: str, errno: Optional[int] = None) -> None:
        super().__init__(errno, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def why(error: OSError) -> str:
    """The reason of an OSError in words ('No space left on device'), without the errno prefix."""
    return str(error.strerror or error)


def umask() -> int:
    """The process umask, read without changing it where the platform tells it (Linux >= 4.7)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (briefly process-wide)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode a plain open()/mkdir() would give: 0666 / 0777 minus the umask. tempfile's
    mkstemp/mkdtemp create 0600/0700, which must not leak into the files we keep."""
    return (0o777 if directory else 0o666) & ~umask()


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (after a rename) where the platform allows it."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_synced(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Create `path`, let `write` fill it, and fsync it before returning."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file so that a reader (or a crash) never sees it half-written. The file gets the
    mode any new file gets (umask); a failure (e.g. disk full) raises WriteError and keeps the
    previous file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {why(e)}", e.errno) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            kept = "; the previous file is kept" if path.exists() else ""
            raise WriteError(f"cannot write {path}: {why(e)}{kept}", e.errno) from None
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))
