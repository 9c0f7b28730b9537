"""Crash safety end to end, in real processes: `latent-replay run` and `stream` killed with SIGKILL
at seeded random moments (while exporting, training, collecting, saving -- inside `save_state` at
every step of the swap), a disk that fills up, two processes on one folder, and a state with
flipped bytes. After every kill the learner state on disk must load, and the next start must resume
from it; the crashed run's final curve must equal the uninterrupted one batch by batch.

Kills inside `save_state` and the disk-full injection come from tests/crash_wrapper.py, which runs
the real CLI with module attributes patched (the package has no test-only hooks); timed kills use
its event log to aim. Slow: `python -m pytest -q -m slow tests/test_crash.py tests/test_soak.py`.
"""
from __future__ import annotations

import fnmatch
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest

from crash_harness import RUN_ARGS, RUN_BATCHES, Proc, curve, env, landed, run_records
from crash_wrapper import SAVE_POINTS
from latent_replay.runtime.state import StateError, load_state

pytestmark = pytest.mark.slow
KILLED = -9


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Dict[str, object]:
    """The uninterrupted run: its records and its final learner state."""
    work = tmp_path_factory.mktemp("reference")
    out = work / "out"
    p = Proc(RUN_ARGS + ["--out", str(out)], work, "reference", wrapper=False)
    assert p.wait() == 0, p.stderr()
    records = run_records(out)
    assert len(records) == RUN_BATCHES and len({r["accuracy"] for r in records}) > 2  # a curve that moves
    return {"records": records, "state": load_state(out / "run0" / "state"), "out": out}


def same_records(got: List[dict], ref: List[dict]) -> None:
    """Batch by batch: the same accuracy and the same loss, exactly."""
    assert curve(got) == curve(ref[:len(got)])
    assert [r["loss"] for r in got] == [r["loss"] for r in ref[:len(got)]]  # one thread: bit for bit


def saved_records(state_dir: Path) -> List[dict]:
    """The records of the state a restart would load; [] when none was saved. A state that cannot
    be loaded fails the test."""
    try:
        return list(load_state(state_dir)["meta"]["records"])
    except FileNotFoundError:
        return []
    except StateError as e:  # pragma: no cover - the failure this test exists to catch
        raise AssertionError(f"unreadable state after a kill: {e}") from None


def assert_same_array(got: np.ndarray, ref: np.ndarray, name: str) -> None:
    np.testing.assert_array_equal(got, ref, err_msg=name)  # one thread: bit for bit


def check_leftovers(folder: Path, allowed: set, patterns: Tuple[str, ...] = ()) -> None:
    """`folder` holds nothing but `allowed` names and temporary files matching `patterns`."""
    names = {p.name for p in folder.iterdir()}
    other = {n for n in names - allowed if not any(fnmatch.fnmatchcase(n, pat) for pat in patterns)}
    assert not other, names


# -- run --------------------------------------------------------------------------------------------
def test_run_killed_at_random_moments_resumes_to_the_same_curve(reference, tmp_path):
    rng = random.Random(20240801)
    ref = reference["records"]
    out = tmp_path / "out"
    args = RUN_ARGS + ["--out", str(out)]
    state = out / "run0" / "state"
    points = list(SAVE_POINTS) + [rng.choice(SAVE_POINTS) for _ in range(3)]  # every step of the swap
    rng.shuffle(points)
    plan = ["train"] * 10 + ["save"] * len(points) + ["any"] * 5
    rng.shuffle(plan)
    plan = ["export"] + plan  # the first start exports the artifacts: die just before they are in place
    kills: List[Dict[str, object]] = []
    startups: List[float] = []  # seconds from a start to its first training: how long "anywhere" lasts
    committed = 0
    for i, kind in enumerate(plan):
        # The kills move through the batches: kill i aims at batch `target` (the batch being trained or
        # saved when it lands), so that no start can run to the end before its kill (the last batches
        # are left to the final, uninterrupted start).
        target = max(committed, i * (RUN_BATCHES - 2) // len(plan))
        nth = target - committed + 1  # the save of batch `target` is this start's nth
        crash: Dict[str, str] = {}
        if kind == "export":
            crash["CRASH_EXPORT"] = "1"
        elif kind == "save":
            crash["CRASH_SAVE"] = f"{nth}:{points.pop()}:{rng.uniform(0.05, 0.95):.2f}"
        p = Proc(args, tmp_path, f"start{i:02d}", PYTHONUNBUFFERED="1", **crash)
        if kind == "train":
            if p.wait_event("train_begin", str(target)):
                startups.append(time.monotonic() - p.started - sum(r["train_s"] for r in ref[committed:target]))
                time.sleep(rng.uniform(0.0, ref[target]["train_s"]))
            p.kill()
        elif kind == "any":  # anywhere from the start to the end of batch `target`'s save
            horizon = (float(np.median(startups)) if startups else 3.0) + sum(
                r["train_s"] + 0.2 for r in ref[committed:target + 1])
            p.kill_at(p.started + rng.uniform(0.0, horizon), unless=("save_end", str(nth)))
        rc = p.wait()
        events = p.events()
        if rc != KILLED:  # the run ended before the kill: only possible once it is complete
            assert rc == 0, p.stderr()
            assert len(saved_records(state)) == RUN_BATCHES
            break
        # every restart resumes from the complete state on disk
        trained = [int(a) for k, a in events if k == "train_begin"]
        if trained:
            assert trained[0] == committed, (trained, committed)
            if committed:
                assert f"run 0: resuming at batch {committed} of {RUN_BATCHES}" in p.stderr()
        records = saved_records(state)
        assert len(records) >= committed  # nothing saved is ever lost
        same_records(records, ref)
        kills.append({"kind": kind, "crash": crash.get("CRASH_SAVE", ""), "landed": landed(events),
                      "before": committed, "after": len(records)})
        committed = len(records)
        check_leftovers(out, {"run0", "artifacts", "results.json", "accuracy.png", ".latent-replay.lock"},
                        (".artifacts.partial-*", ".results.json.*", ".accuracy.png.*"))  # temporaries of atomic writes
        if (out / "run0").exists():
            check_leftovers(out / "run0", {"state", ".state.saving", ".state.previous"})
    final = Proc(args, tmp_path, "final", wrapper=False)
    assert final.wait() == 0, final.stderr()
    report = "\n".join(f"{k['kind']:>6} {k['crash']:<32} {k['landed']:<48} state: {k['before']} -> {k['after']} "
                       f"batches" for k in kills)
    print(f"\n{len(kills)} SIGKILLs of `run`:\n{report}")
    assert len(kills) >= 20, report
    assert sum(k["landed"].startswith("training batch") for k in kills) >= 5, report
    assert sum(k["landed"].startswith("inside save_state") for k in kills) >= len(SAVE_POINTS), report
    assert {k["crash"].split(":")[1] for k in kills if k["crash"]} == set(SAVE_POINTS), report
    # the crashed run's final curve is the uninterrupted one, and so is the learner it ends with
    records = run_records(out)
    assert json.loads((out / "results.json").read_text())["complete"]
    assert curve(records) == curve(ref)
    same_records(records, ref)
    final_state, ref_state = load_state(state), reference["state"]
    assert sorted(final_state["arrays"]) == sorted(ref_state["arrays"])
    for name, value in ref_state["arrays"].items():
        assert_same_array(final_state["arrays"][name], value, name)
    # the leftovers of the killed export and saves are gone once a run completed
    assert sorted(p.name for p in (out / "run0").iterdir()) == ["state"]
    assert not list(out.glob(".artifacts.*"))


# -- stream -----------------------------------------------------------------------------------------
STREAM_TEACH = [(5, 24, "a"), (40, 59, "b"), (75, 94, "c")]
STREAM_FRAMES = 110


def stream_args(work: Path, state: Path) -> List[str]:
    """A scripted headless session: three objects taught in turn, AR1*-free at conv6/dw trained in
    the background (a batch takes long enough to be killed in the middle of it)."""
    schedule = work / "schedule.json"
    schedule.write_text(json.dumps({"teach": [{"frames": [a, b], "label": n} for a, b, n in STREAM_TEACH]}))
    return ["stream", "--source", "synthetic", "--headless", "--schedule", str(schedule), "--max-frames",
            str(STREAM_FRAMES), "--weights", "random", "--method", "ar1free", "--latent-layer", "conv6/dw",
            "--classes", "10", "--replay-memory", "60", "--epochs", "4", "--threads", "1", "--state", str(state)]


def saved_stream(learner: Path) -> Dict[str, object]:
    """(batches trained, class names, trained classes) of the learner a restart would load."""
    try:
        meta = load_state(learner)["meta"]
    except FileNotFoundError:
        return {"batches": 0, "names": [], "trained": []}
    except StateError as e:  # pragma: no cover - the failure this test exists to catch
        raise AssertionError(f"unreadable stream state after a kill: {e}") from None
    book = meta["stream"]
    return {"batches": int(meta["batches_trained"]), "names": book["class_names"], "trained": book["trained"]}


def test_stream_killed_at_random_moments_resumes_from_its_saved_state(tmp_path):
    rng = random.Random(20240802)
    state = tmp_path / "state"
    args = stream_args(tmp_path, state)
    learner = state / "learner"
    # the first start dies just before its export is in place; the second runs through and tells
    # how long a frame and a training take here
    p = Proc(args, tmp_path, "export-kill", CRASH_EXPORT="1")
    assert p.wait() == KILLED and (state / "artifacts").exists() is False
    p = Proc(args + ["--log", str(tmp_path / "calibration.jsonl")], tmp_path, "calibration", PYTHONUNBUFFERED="1")
    assert p.wait() == 0, p.stderr()
    log = [json.loads(line) for line in (tmp_path / "calibration.jsonl").read_text().splitlines()]
    frame_s = float(np.median([r["latency_ms"] for r in log if r["type"] == "frame"])) / 1e3
    train_s = float(np.median([r["duration_s"] for r in log if r["type"] == "training"]))
    committed = saved_stream(learner)
    assert committed["batches"] == 3 and committed["names"] == ["a", "b", "c"]

    points = list(SAVE_POINTS) + [rng.choice(SAVE_POINTS)]
    rng.shuffle(points)
    plan = ["collect"] * 7 + ["train"] * 7 + ["save"] * len(points)
    rng.shuffle(plan)
    kills: List[Dict[str, object]] = []
    for i, kind in enumerate(plan):
        crash: Dict[str, str] = {}
        if kind == "save":  # saves 1-3 follow the three batches, save 4 is the one on exit
            crash["CRASH_SAVE"] = f"{rng.randint(1, 4)}:{points.pop()}:{rng.uniform(0.05, 0.95):.2f}"
        p = Proc(args, tmp_path, f"start{i:02d}", PYTHONUNBUFFERED="1", **crash)
        if kind == "collect":
            first, last, name = rng.choice(STREAM_TEACH)
            if p.wait_event("collect_begin", name):
                time.sleep(rng.uniform(0.0, (last - first) * frame_s))
            p.kill()
        elif kind == "train":
            if p.wait_event("train_begin", str(committed["batches"] + rng.randint(0, 2))):
                time.sleep(rng.uniform(0.0, train_s))
            p.kill()
        assert p.wait() == KILLED, p.stderr()
        events = p.events()
        # the restart resumed from the complete state the previous kill left
        trained = [int(a) for k, a in events if k == "train_begin"]
        if trained:
            assert trained[0] == committed["batches"], (trained, committed)
        if any(k == "collect_begin" for k, _ in events):
            assert f"{len(committed['trained'])} known classes" in p.stderr(), p.stderr()
        now = saved_stream(learner)
        assert now["batches"] >= committed["batches"]  # nothing saved is ever lost
        assert now["names"][:3] == ["a", "b", "c"] and set(now["trained"]) == {0, 1, 2}
        kills.append({"kind": kind, "crash": crash.get("CRASH_SAVE", ""), "landed": landed(events),
                      "before": committed["batches"], "after": now["batches"]})
        committed = now
        check_leftovers(state, {"artifacts", "learner", ".learner.saving", ".learner.previous", ".latent-replay.lock"})
    final = Proc(args, tmp_path, "final", PYTHONUNBUFFERED="1")
    assert final.wait() == 0, final.stderr()
    assert [int(a) for k, a in final.events() if k == "train_begin"][0] == committed["batches"]
    assert saved_stream(learner)["batches"] == committed["batches"] + 3
    report = "\n".join(f"{k['kind']:>7} {k['crash']:<32} {k['landed']:<48} state: {k['before']} -> {k['after']} "
                       f"batches" for k in kills)
    print(f"\n{len(kills)} SIGKILLs of `stream`:\n{report}")
    assert len(kills) >= 20, report
    assert sum("collecting" in k["landed"] for k in kills) >= 3, report
    assert sum("training batch" in k["landed"] for k in kills) >= 3, report
    assert {k["crash"].split(":")[1] for k in kills if k["crash"]} == set(SAVE_POINTS), report
    assert sorted(p.name for p in state.iterdir()) == ["artifacts", "learner"]


# -- shared starting points -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_at_2(tmp_path_factory) -> Path:
    """A run folder stopped after 2 of the 8 batches (copied per test)."""
    work = tmp_path_factory.mktemp("run-at-2")
    out = work / "out"
    p = Proc(RUN_ARGS + ["--out", str(out), "--max-batches", "2"], work, "run", wrapper=False)
    assert p.wait() == 0, p.stderr()
    return out


@pytest.fixture(scope="module")
def stream_at_3(tmp_path_factory) -> Path:
    """A stream --state after one session (3 batches: a, b, c; copied per test)."""
    work = tmp_path_factory.mktemp("stream-at-3")
    state = work / "state"
    p = Proc(stream_args(work, state), work, "stream")
    assert p.wait() == 0, p.stderr()
    assert saved_stream(state / "learner")["batches"] == 3
    return state


def one_error_line(err: str, command: str) -> str:
    """The failure is one `latent-replay COMMAND: error:` line, no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"latent-replay {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def tree(folder: Path) -> Dict[str, bytes]:
    """Every file under `folder` (the lock file aside) -> its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".latent-replay.lock"}


# -- disk full --------------------------------------------------------------------------------------
def _tmpfs_works(probe: Path) -> bool:
    """Whether an unprivileged user+mount namespace can mount a tmpfs here (`unshare -rm`)."""
    if not shutil.which("unshare") or not sys.platform.startswith("linux"):
        return False
    probe.mkdir(exist_ok=True)
    r = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$1"', "sh", str(probe)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return r.returncode == 0


def pages(folder: Path) -> int:
    """Bytes `folder` takes on a tmpfs (whole 4 KiB pages per file)."""
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in folder.rglob("*") if p.is_file())


def on_full_tmpfs(folder: Path, spare: int, command: List[str], work: Path) -> subprocess.CompletedProcess:
    """Copy `folder` onto a fresh tmpfs with `spare` bytes left, run `command` (FOLDER stands for the
    copy) in a private mount namespace, and copy what it left back to work/after."""
    mnt, after = work / "mnt", work / "after"
    mnt.mkdir()
    size_kib = (pages(folder) + spare) // 1024 + 64  # + the folders' own pages
    inner = " ".join("\"$2/x\"" if a == "FOLDER" else _quote(a) for a in command)
    script = (f'mount -t tmpfs -o size={size_kib}k tmpfs "$2" && cp -a "$1" "$2/x" && df -k "$2" >&2; '
              f'{inner}; rc=$?; cp -a "$2/x" "$3"; exit $rc')
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(folder), str(mnt), str(after)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), text=True, timeout=300)


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


@pytest.fixture(scope="module")
def tmpfs(tmp_path_factory) -> bool:
    return _tmpfs_works(tmp_path_factory.mktemp("tmpfs-probe") / "mnt")


@pytest.mark.parametrize("disk", ["tmpfs", "injected"])
def test_run_on_a_full_disk_stops_with_one_line_and_keeps_the_previous_state(reference, run_at_2, tmp_path, tmpfs,
                                                                             disk):
    """`tmpfs`: a real full file system (a tmpfs in a private mount namespace, room for half a state
    more); `injected`: ENOSPC raised halfway through state.npz (where no tmpfs can be mounted)."""
    if disk == "tmpfs" and not tmpfs:
        pytest.skip("no unprivileged tmpfs here (unshare -rm); the injected variant covers it")
    ref = reference["records"]
    base = run_at_2
    npz = (base / "run0" / "state" / "state.npz").stat().st_size
    if disk == "tmpfs":
        r = on_full_tmpfs(base, npz // 2, [sys.executable, "-m", "latent_replay.cli"] + RUN_ARGS + ["--out", "FOLDER"],
                          tmp_path)
        rc, err, after = r.returncode, r.stderr, tmp_path / "after"
    else:
        after = shutil.copytree(base, tmp_path / "after")
        p = Proc(RUN_ARGS + ["--out", str(after)], tmp_path, "full", CRASH_ENOSPC="1:0.5")
        rc, err = p.wait(), p.stderr()
    assert rc == 2, err
    line = one_error_line(err, "run")
    assert "No space left on device" in line and "previously saved state is kept" in line, line
    # the previous state is intact and nothing half-written is left
    assert sorted(p.name for p in (after / "run0").iterdir()) == ["state"]
    same_records(saved_records(after / "run0" / "state"), ref)
    assert len(saved_records(after / "run0" / "state")) == 2
    assert tree(after) == tree(base)
    # space again: the same command continues to the uninterrupted curve
    p = Proc(RUN_ARGS + ["--out", str(after)], tmp_path, "continued", wrapper=False)
    assert p.wait() == 0, p.stderr()
    assert "resuming at batch 2 of 8" in p.stderr()
    same_records(run_records(after), ref)
    assert len(run_records(after)) == RUN_BATCHES


@pytest.mark.parametrize("disk", ["tmpfs", "injected"])
def test_stream_on_a_full_disk_stops_with_one_line_and_keeps_the_previous_state(stream_at_3, tmp_path, tmpfs, disk):
    if disk == "tmpfs" and not tmpfs:
        pytest.skip("no unprivileged tmpfs here (unshare -rm); the injected variant covers it")
    base = stream_at_3
    args = stream_args(tmp_path, base)
    npz = (base / "learner" / "state.npz").stat().st_size
    if disk == "tmpfs":
        command = [sys.executable, "-m", "latent_replay.cli"] + args[:-1] + ["FOLDER"]
        r = on_full_tmpfs(base, npz // 2, command, tmp_path)
        rc, err, after = r.returncode, r.stderr, tmp_path / "after"
    else:
        after = shutil.copytree(base, tmp_path / "after")
        p = Proc(args[:-1] + [str(after)], tmp_path, "full", CRASH_ENOSPC="1:0.5")
        rc, err = p.wait(), p.stderr()
    assert rc == 2, err
    line = one_error_line(err, "stream")
    assert "No space left on device" in line and "previously saved state is kept" in line, line
    assert sorted(p.name for p in after.iterdir()) == ["artifacts", "learner"]
    assert tree(after) == tree(base)
    assert saved_stream(after / "learner")["batches"] == 3
    p = Proc(args[:-1] + [str(after)], tmp_path, "continued")
    assert p.wait() == 0, p.stderr()
    assert "3 known classes" in p.stderr()
    assert saved_stream(after / "learner")["batches"] == 6


# -- two processes on one folder --------------------------------------------------------------------
def test_a_second_run_on_the_same_out_refuses_while_the_first_completes(reference, run_at_2, tmp_path):
    out = shutil.copytree(run_at_2, tmp_path / "out")
    args = RUN_ARGS + ["--out", str(out)]
    go = tmp_path / "go"
    first = Proc(args, tmp_path, "first", CRASH_WAIT_FILE=str(go))  # held inside its first save
    assert first.wait_event("waiting")
    t0 = time.monotonic()
    second = Proc(args, tmp_path, "second", wrapper=False)
    assert second.wait(timeout=120) == 2
    refused_s = time.monotonic() - t0
    line = one_error_line(second.stderr(), "run")
    assert f"--out {out} is in use by another latent-replay process (pid {first.pid})" in line, line
    assert first.popen.poll() is None  # the first one was running (and locked) all along
    go.touch()
    assert first.wait() == 0, first.stderr()
    same_records(run_records(out), reference["records"])
    assert len(run_records(out)) == RUN_BATCHES
    # the lock went with the first process: a third one gets the folder (nothing left to train)
    third = Proc(args, tmp_path, "third", wrapper=False)
    assert third.wait() == 0, third.stderr()
    assert "already complete (8 of 8 batches" in third.stderr()
    print(f"\nsecond `run` refused after {refused_s:.1f} s (start-up included)")


def test_a_second_stream_on_the_same_state_refuses_while_the_first_completes(stream_at_3, tmp_path):
    state = shutil.copytree(stream_at_3, tmp_path / "state")
    args = stream_args(tmp_path, state)
    go = tmp_path / "go"
    first = Proc(args, tmp_path, "first", CRASH_WAIT_FILE=str(go))
    assert first.wait_event("waiting")
    second = Proc(args, tmp_path, "second", wrapper=False)
    assert second.wait(timeout=120) == 2
    line = one_error_line(second.stderr(), "stream")
    assert f"--state {state} is in use by another latent-replay process (pid {first.pid})" in line, line
    assert first.popen.poll() is None
    go.touch()
    assert first.wait() == 0, first.stderr()
    assert saved_stream(state / "learner")["batches"] == 6


# -- flipped bytes ----------------------------------------------------------------------------------
def flip(path: Path, where: float = 0.5, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    start = int(len(data) * where)
    for i in range(start, min(len(data), start + count)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damaged", ["state.npz", "state.json"])
def test_run_with_flipped_bytes_in_its_state(reference, run_at_2, tmp_path, damaged):
    """A kill right after a save's swap leaves the new state and the previous one; bytes flipped in
    the new one: detected with one line that says how to continue from the previous one (used
    when asked) or start over (--fresh); nothing is touched meanwhile."""
    ref = reference["records"]
    out = shutil.copytree(run_at_2, tmp_path / "out")
    args = RUN_ARGS + ["--out", str(out)]
    p = Proc(args, tmp_path, "killed", CRASH_SAVE="1:new-moved")
    assert p.wait() == KILLED
    state, previous = out / "run0" / "state", out / "run0" / ".state.previous"
    assert len(saved_records(state)) == 3 and len(saved_records(previous)) == 2
    flip(state / damaged, 0.5 if damaged == "state.npz" else 0.1)
    fresh_copy = shutil.copytree(out, tmp_path / "fresh")
    before = tree(out)
    p = Proc(args, tmp_path, "damaged", wrapper=False)
    assert p.wait() == 2
    line = one_error_line(p.stderr(), "run")
    assert "damaged or unreadable" in line and ("CRC" in line if damaged == "state.npz" else True), line
    assert f"the previous state {previous} is intact" in line and f"mv {state} {state}.damaged" in line, line
    assert "--fresh" in line
    assert tree(out) == before  # reported, not deleted or repaired
    if damaged == "state.json":
        return  # what follows does not depend on which file was damaged
    # asked to: continue from the previous state (batch 2) to the uninterrupted curve
    state.rename(state.with_name("state.damaged"))
    p = Proc(args, tmp_path, "from-previous", wrapper=False)
    assert p.wait() == 0, p.stderr()
    assert "resuming at batch 2 of 8" in p.stderr()
    same_records(run_records(out), ref)
    assert len(run_records(out)) == RUN_BATCHES
    # or start over
    p = Proc(args[:-1] + [str(fresh_copy), "--fresh"], tmp_path, "fresh", wrapper=False)
    assert p.wait() == 0, p.stderr()
    assert "resuming" not in p.stderr()
    same_records(run_records(fresh_copy), ref)


def test_stream_with_flipped_bytes_in_its_state(stream_at_3, tmp_path):
    state = shutil.copytree(stream_at_3, tmp_path / "state")
    args = stream_args(tmp_path, state)
    p = Proc(args, tmp_path, "killed", CRASH_SAVE="1:new-moved")
    assert p.wait() == KILLED
    learner, previous = state / "learner", state / ".learner.previous"
    assert saved_stream(learner)["batches"] == 4 and saved_stream(previous)["batches"] == 3
    flip(learner / "state.npz")
    fresh_copy = shutil.copytree(state, tmp_path / "fresh")
    before = tree(state)
    p = Proc(args, tmp_path, "damaged", wrapper=False)
    assert p.wait() == 2
    line = one_error_line(p.stderr(), "stream")
    assert "damaged or unreadable" in line and "CRC" in line and f"mv {learner} {learner}.damaged" in line, line
    assert "--fresh" in line
    assert tree(state) == before
    learner.rename(state / "learner.damaged")
    p = Proc(args, tmp_path, "from-previous")
    assert p.wait() == 0, p.stderr()
    assert [int(a) for k, a in p.events() if k == "train_begin"][0] == 3  # continued from the previous state
    assert saved_stream(learner)["batches"] == 6
    p = Proc(args[:-1] + [str(fresh_copy), "--fresh"], tmp_path, "fresh")
    assert p.wait() == 0, p.stderr()
    assert [int(a) for k, a in p.events() if k == "train_begin"][0] == 0
    assert saved_stream(fresh_copy / "learner")["batches"] == 3
