"""Output folders: which ones a command may write or replace, and one writer per folder.

Every command that writes a folder (`export --out`, `run --out`, `stream --state`) asks here
first. A folder that does not exist, is empty, or holds what the command itself writes (recognised
by its marker files) may be written; anything else -- a folder with the user's own files, a file --
is refused before anything is touched. `FolderLock` keeps a second process out of a folder that one
process is writing (an advisory lock on a file inside it, released on exit). A process killed while
exporting into its folder leaves the exporter's temporary sibling (`.artifacts.partial-XXXX`): such
leftovers of ours are not the user's files (they do not make a folder "not ours") and are removed by
the next process that locks the folder.
"""
from __future__ import annotations

import fnmatch
import os
import shutil
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".latent-replay.lock"
LOCK_ATTEMPTS = 100  # lock files removed under a waiting opener in a row before giving up (see FolderLock)
# Temporary siblings the exporter writes and swaps when `run`/`stream` export into their folder's
# `artifacts/` (export/exporter.py: `.artifacts.partial-XXXX` from mkdtemp, `.artifacts.old-PID`
# while replacing), left behind when the process is killed in between; they hold nothing but the
# export's own files (FRONT_FILE, BACK_DIR, MANIFEST_NAME there).
LEFTOVERS = (".artifacts.partial-*", ".artifacts.old-[0-9]*")
EXPORT_ENTRIES = {"front.onnx", "back", "manifest.json"}


def is_leftover(folder: Path, name: str) -> bool:
    """Whether `folder/name` is a temporary export of ours that a killed writer left behind: the
    name and the content must both fit (a user's folder of that name with anything else is not)."""
    if not any(fnmatch.fnmatchcase(name, pattern) for pattern in LEFTOVERS):
        return False
    path = folder / name
    try:
        return path.is_dir() and not path.is_symlink() and set(os.listdir(path)) <= EXPORT_ENTRIES
    except OSError:
        return False


class FolderError(ValueError):
    """An output folder that must not be written (not ours, or in use): one line for the user."""


def absolute(path: Union[str, "os.PathLike[str]"], option: str) -> Path:
    """`path` made absolute with '.', '..' and links resolved (so that `inner/..` has a name)."""
    try:
        return Path(os.path.expanduser(str(path))).resolve()
    except (OSError, RuntimeError) as e:
        raise FolderError(f"{option} {path}: {getattr(e, 'strerror', None) or e}") from None


def check_output_file(path: Union[str, "os.PathLike[str]"], option: str, shown: Optional[str] = None) -> None:
    """Refuse (FolderError), before anything is written, an output file that could not be written at the
    end: a folder, a file without write permission, or a place whose nearest existing folder cannot be
    written (a read-only file system, no permission) or is a file. `shown`: what the user typed, when
    `path` is a file inside it. Creates nothing."""
    given = shown or Path(path)
    target = absolute(path, option)
    if target.is_dir():
        raise FolderError(f"{option} {given} is a folder; give the file to write, e.g. {option} {target / 'out'}")
    if target.exists() and not os.access(target, os.W_OK):
        raise FolderError(f"{option} {given} exists and cannot be written (no permission); choose another {option}")
    folder = target.parent
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise FolderError(f"{option} {given}: {folder} is not a folder; choose another {option}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FolderError(f"{option} {given}: cannot write in {folder} (read-only or no permission); "
                          f"choose another {option}")


def refuse_current_folder(path: Path, option: str, shown: str, example: str) -> None:
    """A folder that is replaced as a whole must not be the working folder or one above it."""
    cwd = Path.cwd().resolve()
    if path == cwd or path in cwd.parents or not path.name:
        where = "the current folder" if path == cwd else "a folder above the current one"
        raise FolderError(f"{option} {shown} is {where}, which would be replaced as a whole; "
                          f"name a new folder, e.g. {option} {example}")


def _matches(path: Path, names: Sequence[str], markers: Sequence[str]) -> Optional[str]:
    """The first marker found: a name pattern ('run[0-9]') or a relative path ('artifacts/manifest.json')."""
    for marker in markers:
        if "/" in marker:
            if (path / marker).exists():
                return marker
            continue
        hit = next((n for n in names if fnmatch.fnmatchcase(n, marker)), None)
        if hit is not None:
            return hit
    return None


def check_folder(path: Path, markers: Sequence[str], option: str, what: str,
                 others: Sequence[Tuple[Sequence[str], str]] = ()) -> None:
    """Refuse (FolderError) unless `path` is missing, empty, or holds one of `markers` (file or
    folder names, shell patterns allowed; or relative paths) -- i.e. is a `what` written by this
    package. `others`: (markers, description) of our other kinds of folders, refused as such (a run
    folder given as a stream state must not have its artifacts replaced)."""
    if not os.path.lexists(path):
        return
    if not path.is_dir():
        raise FolderError(f"{option} {path} exists and is not a folder; choose another {option}")
    try:
        names = sorted(n for n in os.listdir(path) if n != LOCK_NAME and not is_leftover(path, n))
    except OSError as e:
        raise FolderError(f"cannot read {option} {path}: {e.strerror or e}") from None
    for other, description in others:
        if _matches(path, names, other) is not None:
            raise FolderError(f"{option} {path} is {description}, not {what.split(' (')[0]}; choose another {option}")
    if not names or _matches(path, names, markers) is not None:
        return
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    raise FolderError(f"{option} {path} already holds other files ({shown}) and is not {what}; refusing to "
                      f"write there so that nothing of yours is replaced: choose a new or empty folder")


class FolderLock:
    """Create `folder` if needed and hold an exclusive advisory lock (flock) on its LOCK_NAME file, so
    that a second process writing the same folder refuses instead of interleaving saves. On release
    the lock file is removed (a finished folder holds only what the command wrote), and so is a
    folder this lock created that holds nothing else (a failed start leaves no empty folder behind).
    A killed process leaves its lock file, whose lock the kernel released: the next one takes it.

    Removing the file is safe for mutual exclusion because of the order and one check: the holder
    removes the file *while still holding* the lock, then unlocks; a process that opened the file
    before it was removed may get the lock of that removed file afterwards, so after every lock taken
    the file locked must still be the one at LOCK_NAME (same inode), else it is closed and the current
    one is locked instead. Without fcntl (Windows) the folder is created but not locked."""

    def __init__(self, folder: Path, option: str) -> None:
        self.folder, self.option = Path(folder), option
        self._file = None
        self._created: List[Path] = []

    def __enter__(self) -> "FolderLock":
        missing, p = [], self.folder
        while not os.path.lexists(p) and p != p.parent:
            missing.append(p)
            p = p.parent
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._created = missing
        except OSError as e:
            self._cleanup()
            raise FolderError(f"cannot write to {self.option} {self.folder}: {e.strerror or e}") from None
        for _ in range(LOCK_ATTEMPTS):
            self._open()
            if fcntl is None or self._lock():
                break
        else:
            self._cleanup()
            raise FolderError(f"cannot lock {self.option} {self.folder}: its lock file {LOCK_NAME} keeps being "
                              f"replaced; try again")
        if fcntl is not None:
            self._file.seek(0)
            self._file.truncate()
            self._file.write(str(os.getpid()))
            self._file.flush()
            self._remove_leftovers()
        return self

    def _open(self) -> None:
        try:
            self._file = open(self.folder / LOCK_NAME, "a+", encoding="utf-8")
        except OSError as e:
            self._cleanup()
            raise FolderError(f"cannot write to {self.option} {self.folder}: {e.strerror or e}") from None

    def _lock(self) -> bool:
        """Lock the open file: True when it is held and still the folder's lock file; False (closed) when
        its holder removed it meanwhile (lock the current one then); FolderError while another holds it."""
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip()
            self._file.close()
            self._file = None
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise FolderError(f"{self.option} {self.folder} is in use by another latent-replay process{who}; "
                              f"wait for it to finish or choose another {self.option}") from None
        try:
            current = os.path.samestat(os.fstat(self._file.fileno()), os.stat(self.folder / LOCK_NAME))
        except OSError:
            current = False
        if not current:
            self._file.close()
            self._file = None
        return current

    def _remove_leftovers(self) -> None:
        """Temporary folders a killed holder of this lock left (a partial export): nobody else can
        be writing them now that we hold the lock."""
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        for name in names:
            if is_leftover(self.folder, name):
                shutil.rmtree(self.folder / name, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Remove the lock file, then unlock (closing it releases the lock; the order is what keeps
        removal safe, see the class), and remove a folder we created and left empty."""
        if self._file is not None:
            try:
                os.unlink(self.folder / LOCK_NAME)
            except OSError:
                pass
            self._file.close()
            self._file = None
        self._cleanup()

    def _cleanup(self) -> None:
        """Remove the folders this lock created, innermost first, as long as they are empty. Never the
        lock file: only its holder removes it (`release`), or mutual exclusion would break."""
        for folder in self._created:
            try:
                os.rmdir(folder)
            except OSError:
                break
        self._created = []
