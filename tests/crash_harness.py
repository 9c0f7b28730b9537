"""Shared pieces of the crash tests (tests/test_crash.py): real `latent-replay` processes (the plain
CLI, or tests/crash_wrapper.py for events and crash points) that the tests kill with SIGKILL at
seeded random moments, and where each one was when it died."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
WRAPPER = Path(__file__).resolve().with_name("crash_wrapper.py")

# The small synthetic stream of the crash tests: 8 batches of 20 frames at 64 px, AR1*-free with
# latent replay at conv6/dw; 8 epochs make the accuracy move from batch to batch (with the default 4
# it stays at 10%, and a curve of equal values would prove little). One thread: a run is then the
# same computation in every process, whatever the machine runs beside it.
RUN_BATCHES = 8
RUN_ARGS = ["run", "--synthetic-size", "64", "--synthetic-batches", str(RUN_BATCHES), "--synthetic-frames", "20",
            "--latent-layer", "conv6/dw", "--replay-memory", "40", "--set", "epochs_first=8", "--set", "epochs=8",
            "--weights", "random", "--threads", "1", "--quiet"]


def env(**extra: str) -> Dict[str, str]:
    """This environment with the checkout importable, no crash point inherited, plus `extra`."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("CRASH_")}
    e["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    e.update(extra)
    return e


class Proc:
    """One `latent-replay` process: stdout and stderr to files, events (wrapper only) to a file."""

    def __init__(self, args: Sequence[str], workdir: Path, name: str, wrapper: bool = True, **crash: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.events_path = workdir / f"{name}.events"
        self.err_path, self.out_path = workdir / f"{name}.err", workdir / f"{name}.out"
        command = [sys.executable, str(WRAPPER)] if wrapper else [sys.executable, "-m", "latent_replay.cli"]
        extra = dict(crash, CRASH_EVENTS=str(self.events_path)) if wrapper else dict(crash)
        self.started = time.monotonic()
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(command + list(args), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                          env=env(**extra), cwd=str(workdir))
        self.pid = self.popen.pid

    def events(self) -> List[Tuple[str, str]]:
        if not self.events_path.exists():
            return []
        lines = self.events_path.read_text(encoding="utf-8").splitlines()
        return [tuple((line.split(" ", 1) + [""])[:2]) for line in lines if line]  # type: ignore[misc]

    def wait_event(self, kind: str, arg: Optional[str] = None, timeout: float = 120.0) -> bool:
        """Wait until the process logs `kind` (with `arg`); False if it ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(k == kind and (arg is None or a == arg) for k, a in self.events()):
                return True
            if self.popen.poll() is not None:
                return any(k == kind and (arg is None or a == arg) for k, a in self.events())
            time.sleep(0.002)
        raise AssertionError(f"no event {kind} {arg or ''} within {timeout} s; stderr: {self.stderr()}")

    def kill_at(self, when: float, unless: Tuple[str, str]) -> bool:
        """SIGKILL at time.monotonic() `when`, or as soon as the event `unless` (kind, arg) is logged
        if that comes first; False if the process had ended."""
        while time.monotonic() < when and self.popen.poll() is None:
            if unless in self.events():
                break
            time.sleep(0.002)
        return self.kill()

    def kill(self) -> bool:
        """SIGKILL now; False if it had already ended."""
        if self.popen.poll() is not None:
            return False
        os.kill(self.pid, signal.SIGKILL)
        self.popen.wait()
        return self.popen.returncode == -signal.SIGKILL

    def wait(self, timeout: float = 300.0) -> int:
        return self.popen.wait(timeout)

    def stderr(self) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace") if self.err_path.exists() else ""

    def stdout(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace") if self.out_path.exists() else ""


def landed(events: List[Tuple[str, str]]) -> str:
    """Where a process was when it died, from its events: what was under way (the stream trains on
    a worker thread while the loop collects, so several things can be), else the last thing done."""
    active: Dict[str, str] = {}
    last = "start-up"
    for kind, arg in events:
        if kind == "killed":
            return f"inside save_state ({arg})" if arg.startswith("save") else f"{arg} (self-kill)"
        begin, _, _ = kind.partition("_")
        if kind == "export_begin":
            active["export"] = "exporting"
        elif kind == "train_begin":
            active["train"] = f"training batch {arg}"
        elif kind == "save_begin":
            active["save"] = f"saving (save {arg})"
        elif kind == "collect_begin":
            active["collect"] = f"collecting {arg}"
        elif kind in ("export_end", "train_end", "save_end", "submit"):
            key = {"submit": "collect"}.get(kind, begin)
            active.pop(key, None)
            last = {"export_end": "after the export", "train_end": f"after training batch {arg} (evaluating)",
                    "save_end": f"after save {arg}", "submit": f"predicting ({arg} submitted)"}[kind]
    order = ("train", "save", "collect", "export")
    return ", ".join(active[k] for k in order if k in active) or last


def run_records(out: Path) -> List[dict]:
    """The per-batch records of run 0 in `out`'s results.json."""
    return json.loads((out / "results.json").read_text())["runs"][0]["batches"]


def curve(records: List[dict]) -> List[Tuple[int, float]]:
    return [(r["batch"], r["accuracy"]) for r in records]
