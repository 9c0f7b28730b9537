#!/usr/bin/env python
"""The real `latent-replay` command line, run in this process with crash points that only the crash
tests know about: `python tests/crash_wrapper.py run ...` behaves exactly like `python -m
latent_replay.cli run ...` unless the environment asks for a crash. The package has no test-only
hooks; this script patches module attributes before the command starts.

Environment (all optional):

- CRASH_EVENTS=PATH: append one line per event to PATH ("start", "train_begin B", "train_end B",
  "save_begin N", "save_end N", "collect_begin NAME", "submit NAME", "export_begin", "export_end";
  written with os.write on an O_APPEND descriptor, so a line is on disk even if a SIGKILL follows
  it). The harness uses it to aim timed kills (e.g. a random moment after "train_begin 3") and to say
  where each kill landed.
- CRASH_SAVE=N:POINT[:FRACTION]: SIGKILL this process inside its N-th call of
  `latent_replay.runtime.state.save_state` (1-based) at POINT, one of SAVE_POINTS (FRACTION: how
  much of the file a "-partial" point writes first, default 0.5).
- CRASH_EXPORT=1: SIGKILL just before the exporter moves its finished temporary folder into place.
- CRASH_ENOSPC=N[:FRACTION]: from the N-th save on, writing state.npz fails with ENOSPC after
  FRACTION of it was written (a disk that fills up and stays full, where no small tmpfs can be
  mounted).
- CRASH_WAIT_FILE=PATH: the first save waits until PATH exists (a process held in the middle of
  its work, its folder locked, while the test starts a second one on the same folder).
"""
import errno
import io
import os
import signal
import sys
import threading
import time

# The moments inside save_state a crash can land on (see latent_replay/runtime/state.py), in order.
SAVE_POINTS = (
    "arrays-partial",         # state.npz of the new state half written
    "arrays-written",         # state.npz complete and synced, state.json not yet
    "meta-partial",           # state.json half written
    "synced",                 # the new state complete in .NAME.saving, nothing swapped yet
    "old-moved",              # the current state moved to .NAME.previous, the new one not yet in place
    "new-moved",              # the new state in place, .NAME.previous still there
    "previous-half-removed",  # removing .NAME.previous, one of its files gone
)

_lock = threading.Lock()
_events_fd = None


def event(*words):
    if _events_fd is not None:
        os.write(_events_fd, (" ".join(str(w) for w in words) + "\n").encode("utf-8"))


def die(where):
    event("killed", where)
    os.kill(os.getpid(), signal.SIGKILL)


class _Proxy:
    """A module stand-in: `overrides` first, everything else from the real module."""

    def __init__(self, module, **overrides):
        self.__dict__.update(overrides)
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, name)


def _write_part(path, write, fraction):
    """What `write_synced(path, write)` would write, cut to `fraction` of its bytes, on disk."""
    buf = io.BytesIO()
    write(buf)
    data = buf.getvalue()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * fraction)])
        f.flush()
        os.fsync(f.fileno())


def install_save_crash(state_module):
    """Patch the learner-state module: count saves, and crash or fail where the environment says."""
    crash = os.environ.get("CRASH_SAVE", "")
    enospc = os.environ.get("CRASH_ENOSPC", "")
    crash_n, point, fraction = None, None, 0.5
    if crash:
        parts = crash.split(":")
        crash_n, point = int(parts[0]), parts[1]
        fraction = float(parts[2]) if len(parts) > 2 else 0.5
        if point not in SAVE_POINTS:
            raise SystemExit(f"CRASH_SAVE: unknown point {point!r} (one of {', '.join(SAVE_POINTS)})")
    full_n, full_fraction = None, 0.5
    if enospc:
        parts = enospc.split(":")
        full_n = int(parts[0])
        full_fraction = float(parts[1]) if len(parts) > 1 else 0.5

    real_save, real_write, real_fsync_dir = state_module.save_state, state_module.write_synced, state_module.fsync_dir
    real_os, real_shutil = state_module.os, state_module.shutil
    current = {"n": 0, "moved": 0}

    def here(p):
        return crash_n == current["n"] and point == p

    wait_file = os.environ.get("CRASH_WAIT_FILE")

    def save_state(state, directory):
        with _lock:
            current["n"] += 1
            current["moved"] = 0
            n = current["n"]
        event("save_begin", n)
        if wait_file and n == 1:
            event("waiting", n)
            while not os.path.exists(wait_file):
                time.sleep(0.01)
        real_save(state, directory)
        event("save_end", n)

    def write_synced(path, write):
        name = os.path.basename(str(path))
        kind = "arrays" if name.endswith(".npz") else "meta"
        if here(f"{kind}-partial"):
            _write_part(path, write, fraction)
            die(f"save {current['n']} {kind}-partial")
        if kind == "arrays" and full_n is not None and current["n"] >= full_n:
            _write_part(path, write, full_fraction)
            event("enospc", current["n"])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(path, write)
        if here(f"{kind}-written"):
            die(f"save {current['n']} {kind}-written")

    def fsync_dir(path):
        real_fsync_dir(path)
        if str(path).endswith(".saving") and here("synced"):
            die(f"save {current['n']} synced")

    def replace(src, dst):
        real_os.replace(src, dst)
        if str(dst).endswith(".previous"):
            current["moved"] = 1
            if here("old-moved"):
                die(f"save {current['n']} old-moved")
        elif str(src).endswith(".saving"):
            current["moved"] = 2
            if here("new-moved"):
                die(f"save {current['n']} new-moved")

    def rmtree(path, *args, **kwargs):
        if current["moved"] == 2 and str(path).endswith(".previous") and here("previous-half-removed") \
                and os.path.isdir(path):
            files = sorted(os.listdir(path))
            if files:
                os.unlink(os.path.join(path, files[-1]))  # state.npz or state.json: half removed
            die(f"save {current['n']} previous-half-removed")
        return real_shutil.rmtree(path, *args, **kwargs)

    state_module.save_state = save_state
    state_module.write_synced = write_synced
    state_module.fsync_dir = fsync_dir
    state_module.os = _Proxy(real_os, replace=replace)
    state_module.shutil = _Proxy(real_shutil, rmtree=rmtree)


def install_events():
    """Events from the learner (both commands), the stream's teaching, and the exporter."""
    from latent_replay.apps.stream import app as app_module
    from latent_replay.apps.stream import teacher as teacher_module
    from latent_replay.export import exporter
    from latent_replay.runtime.learn import learner as learner_module

    real_train = learner_module.Learner.train_batch

    def train_batch(self, latents, labels, batch_index):
        event("train_begin", self.batches_trained)
        out = real_train(self, latents, labels, batch_index)
        event("train_end", self.batches_trained - 1)
        return out

    learner_module.Learner.train_batch = train_batch

    real_start = app_module.StreamApp.start_teaching

    def start_teaching(self, name, wanted):
        event("collect_begin", name.strip().replace(" ", "_"))
        return real_start(self, name, wanted)

    app_module.StreamApp.start_teaching = start_teaching

    real_submit = teacher_module.Teacher.submit

    def submit(self, job):
        event("submit", job.name.replace(" ", "_"))
        return real_submit(self, job)

    teacher_module.Teacher.submit = submit

    real_export, real_replace_dir = exporter.export, exporter._replace_dir

    def export(*args, **kwargs):
        event("export_begin")
        out = real_export(*args, **kwargs)
        event("export_end")
        return out

    def replace_dir(tmp, out):
        if os.environ.get("CRASH_EXPORT"):
            die("export")
        return real_replace_dir(tmp, out)

    exporter.export = export
    exporter._replace_dir = replace_dir


def main():
    global _events_fd
    path = os.environ.get("CRASH_EVENTS")
    if path:
        _events_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    event("start", os.getpid())
    from latent_replay.runtime import state as state_module

    install_save_crash(state_module)
    install_events()
    from latent_replay.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
