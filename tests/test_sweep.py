"""`latent-replay sweep` and `report`: the grid's cells, Ray's execution against the in-process one,
a sweep killed with SIGKILL and restarted, failed cells, the summary and its figures.

The cells are tiny synthetic runs (32 px frames, a few batches of 20) so that a 2 x 2 x 2 grid runs
in seconds per cell on 2 cores. Ray runs as the local instance `ray.init()` starts, in a child
process of the test (the driver that the kill test kills); each test gives Ray a temporary folder
of its own and ends every process still running from it.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from latent_replay.apps.run.command import run_parser
from latent_replay.apps.sweep.command import passthrough
from latent_replay.apps.sweep.grid import SweepError, expand, grid_file_argv
from latent_replay.cli import build_parser, main

TINY = ["--synthetic-batches", "5", "--synthetic-frames", "20", "--synthetic-size", "32", "--threads", "1"]
GRID = ["AR1F,naive", "--latent-layer", "conv5_4/dw,conv6/dw", "--runs", "0-1"] + TINY  # 2 x 2 x 2 cells
METRICS = ("final", "average", "forgetting", "bwt")


def cells_of(argv, out="/tmp/sweep-out"):
    args = build_parser().parse_args(["sweep"] + argv)
    return expand(args, run_parser(), Path(out), passthrough(args))


# -- the grid -------------------------------------------------------------------------------------------

def test_the_grid_is_the_product_of_the_lists_and_each_cell_is_one_run():
    cells = cells_of(GRID)
    assert len(cells) == 8 and len({c.name for c in cells}) == 8
    assert {(c.point["method"], c.point["latent_layer"], c.run) for c in cells} == {
        (m, layer, r) for m in ("ar1free", "naive") for layer in ("conv5_4/dw", "conv6/dw") for r in (0, 1)}
    cell = next(c for c in cells if c.point["method"] == "naive" and c.point["latent_layer"] == "conv6/dw" and c.run)
    args = run_parser().parse_args(cell.argv)  # the cell's command line is run's own
    assert (args.method, args.latent_layer, args.runs, args.threads) == ("naive", "conv6/dw", "1", 1)
    assert args.out == str(Path("/tmp/sweep-out") / cell.name) and all(c.error is None for c in cells)


def test_all_and_the_layers_a_method_fixes():
    cells = cells_of(["--method", "all", "--latent-layer", "all"] + TINY)
    by_method = {}
    for c in cells:
        by_method.setdefault(c.point["method"], set()).add(c.point["latent_layer"])
    assert set(by_method) == {"ar1free", "ar1", "cwr", "naive", "cumulative"}
    assert by_method["cwr"] == {"pool6"}  # CWR* trains the head only: one cell, not 15 refused ones
    assert len(by_method["ar1free"]) == 15 and "data" in by_method["naive"]
    assert all(c.point["replay"] == "no" for c in cells if c.point["method"] == "cumulative")


def test_set_lists_are_axes_and_other_options_pass_through(tmp_path):
    weights = tmp_path / "w.npz"
    weights.write_bytes(b"")
    cells = cells_of(["AR1F", "--set", "lr_first=0.01,0.02", "--set", "epochs=2", "--weights", str(weights),
                      "--no-spin"] + TINY)
    assert len(cells) == 2 and {c.point["set:lr_first"] for c in cells} == {"0.01", "0.02"}
    for c in cells:
        args = run_parser().parse_args(c.argv)
        assert sorted(args.set) == sorted(["epochs=2", f"lr_first={c.point['set:lr_first']}"])
        assert args.weights == str(weights.resolve()) and args.spin is False
        assert f"lr_first={c.point['set:lr_first']}" in c.name


@pytest.mark.parametrize("argv, message", [
    (["all"], "write `all` as an option"),
    (["--replay-memory", "all"], "--replay-memory all: give the values"),
    (["--method", "AR1F,,CWR"], "an empty item"),
    (["--method", "AR1F,nope"], "unknown method 'nope'"),
])
def test_grids_that_cannot_be_expanded(argv, message):
    with pytest.raises(SweepError, match=message):
        cells_of(argv)


def test_a_cell_run_refuses_is_marked_with_runs_message():
    cells = cells_of(["AR1F", "--replay-memory", "50,0"] + TINY)
    refused = [c for c in cells if c.error]
    assert len(cells) == 2 and len(refused) == 1 and "--replay-memory must be > 0" in refused[0].error


def test_a_grid_file_is_the_same_grid_as_the_command_line(tmp_path, capsys):
    pytest.importorskip("yaml", reason="PyYAML (the [sweep] extra) reads YAML grid files")
    grid = tmp_path / "grid.yaml"
    grid.write_text("method: [AR1F, naive]\nlatent_layer: [conv5_4/dw, conv6/dw]\nruns: 0-1\nsynthetic_batches: 5\n"
                    "synthetic_frames: 20\nsynthetic_size: 32\nthreads: 1\n")
    as_json = tmp_path / "grid.json"
    as_json.write_text(json.dumps({"method": ["AR1F", "naive"], "latent_layer": ["conv5_4/dw", "conv6/dw"],
                                   "runs": "0-1", "synthetic_batches": 5, "synthetic_frames": 20,
                                   "synthetic_size": 32, "threads": 1}))
    listed = []
    for argv in (GRID, ["--grid", str(grid)], ["--grid", str(as_json)]):
        assert main(["sweep", *argv, "--out", str(tmp_path / "out"), "--dry-run"]) == 0
        listed.append(capsys.readouterr().out)
    assert listed[0] == listed[1] == listed[2] and listed[0].count("to run") == 8
    assert grid_file_argv(grid)[:2] == ["--method", "AR1F,naive"]
    # the command line wins over the file
    assert main(["sweep", "--grid", str(grid), "--method", "CWR", "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("to run") == 2


def test_bad_grid_files_and_options_are_one_line(tmp_path, capsys):
    bad = tmp_path / "grid.json"
    bad.write_text("[1, 2]")
    for argv, message in ((["--grid", str(bad)], "expected a mapping"), (["--grid", str(tmp_path / "no.json")],
                          "No such file"), (["--fresh"], "sweep has no --fresh"),
                          (["--cpus-per-run", "0"], "--cpus-per-run must be > 0")):
        assert main(["sweep", *argv, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


# -- running it --------------------------------------------------------------------------------------------

def table(out: Path):
    """summary.csv's rows without the timings (which differ between any two runs of anything)."""
    with open(out / "summary.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    keys = ("kind", "method", "latent_layer", "runs", "complete", "batches") + METRICS
    return sorted(tuple(r[k] for k in keys) for r in rows)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "sweep"
    assert main(["sweep", *GRID, "--out", str(out), "--local", "--quiet"]) == 0
    return out


def test_a_local_sweep_writes_every_cell_the_summary_and_the_figures(local_sweep, capsys):
    rows = table(local_sweep)
    cells = [r for r in rows if r[0] == "cell"]
    points = [r for r in rows if r[0] == "point"]
    assert len(cells) == 8 and len(points) == 4 and all(r[3] == "0 1" and r[4] == "True" for r in points)
    assert all(r[5] == "5" for r in cells)
    md = (local_sweep / "summary.md").read_text()
    assert md.count("\n| ar1free |") == 2 and md.count("\n| naive |") == 2
    for figure in ("accuracy_vs_batch.png", "latent_layer_tradeoff.png"):
        assert (local_sweep / figure).stat().st_size > 10_000
    assert not (local_sweep / "accuracy_vs_memory.png").exists()  # one memory size: nothing to draw
    # Again: every cell is finished, none runs (their results are not rewritten).
    stamps = {p: p.stat().st_mtime_ns for p in local_sweep.glob("*/results.json")}
    assert main(["sweep", *GRID, "--out", str(local_sweep), "--local", "--quiet"]) == 0
    assert "8 finished before, 0 to run" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in local_sweep.glob("*/results.json")} == stamps


def test_report_of_a_folder_and_of_nothing(local_sweep, tmp_path, capsys):
    (local_sweep / "summary.md").unlink()
    assert main(["report", str(local_sweep)]) == 0
    assert (local_sweep / "summary.md").is_file() and "summary.csv" in capsys.readouterr().out
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no results yet" in capsys.readouterr().err


@pytest.fixture
def ray_env(tmp_path):
    """The environment of a child sweep on Ray: Ray's session folder under a short temporary folder (its
    socket paths must stay short) that the finalizer also uses to end whatever Ray left running."""
    pytest.importorskip("ray", reason="Ray (pip install \".[sweep]\") runs the cells")
    root = Path(tempfile.mkdtemp(prefix="lr-ray-"))
    env = dict(os.environ, RAY_TMPDIR=str(root), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    yield env
    _end_processes_of(root)
    shutil.rmtree(root, ignore_errors=True)


def _end_processes_of(root: Path) -> None:
    """SIGKILL every process whose command line names `root` (Ray's agents outlive a killed driver)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(root) in cmdline and int(pid) != os.getpid():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass


def sweep_child(out: Path, env, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "latent_replay.cli", "sweep", *GRID, "--out", str(out), "--quiet",
               "--cpus", "2", *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_ray_gives_the_table_of_the_local_sweep(local_sweep, tmp_path, ray_env):
    child = sweep_child(tmp_path / "ray", ray_env)
    output = child.communicate(timeout=600)[0]
    assert child.returncode == 0, output
    assert table(tmp_path / "ray") == table(local_sweep)
    assert output.count(": done") == 8 and "running batch" in output


def test_a_sweep_killed_with_sigkill_finishes_the_grid_when_restarted(local_sweep, tmp_path, ray_env):
    out = tmp_path / "killed"
    child = sweep_child(out, ray_env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill it inside a cell: some batches saved, the grid unfinished
        done = [json.loads(p.read_text())["batch"] for p in out.glob("*/progress.json")]
        if any(2 <= b < 5 for b in done):  # a cell with saved batches and more to do
            break
        time.sleep(0.2)
    else:
        pytest.fail("no cell reached batch 2 in 5 minutes")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    # cells stopped with saved batches (the one seen at batch 2 may have finished in between)
    partial = [p.parent.name for p in out.glob("*/progress.json") if 1 <= json.loads(p.read_text())["batch"] < 5]
    assert len(list(out.glob("*/results.json"))) < 8 and not (out / "summary.csv").exists()
    _end_processes_of(Path(ray_env["RAY_TMPDIR"]))  # what a reboot or the next login does with Ray's leftovers
    again = sweep_child(out, ray_env)
    output = again.communicate(timeout=600)[0]
    assert again.returncode == 0, output
    assert table(out) == table(local_sweep)
    for name in partial:  # each went on from its last saved batch (or found all saved, killed before its results)
        log = (out / "logs" / f"{name}.log").read_text()
        assert "resuming at batch" in log or "already complete" in log, name
    for cell in out.glob("*/results.json"):  # every cell's results, not only the summary
        ours, theirs = json.loads(cell.read_text()), json.loads((local_sweep / cell.parent.name / "results.json").read_text())
        assert [b["accuracy"] for b in ours["runs"][0]["batches"]] == [b["accuracy"] for b in theirs["runs"][0]["batches"]]
        assert ours["runs"][0]["metrics"] == theirs["runs"][0]["metrics"]


def test_failed_cells_are_reported_and_the_others_finish(tmp_path, capsys):
    out = tmp_path / "sweep"
    foreign = out / "ar1free-synthetic-latent-conv5_4_dw-m60-run0"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("not a run folder: run refuses to write here")
    code = main(["sweep", "AR1F", "--replay-memory", "60,0,40", *TINY, "--out", str(out), "--local", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    # a refused cell is named with what it gave (run's defaults are not known for options run refused)
    assert "2 of 3 cells failed: ar1free-default-default-default-m0-run0, " \
           "ar1free-synthetic-latent-conv5_4_dw-m60-run0" in err
    assert "--replay-memory must be > 0" in err and "already holds other files (notes.txt)" in err
    assert json.loads((out / "ar1free-synthetic-latent-conv5_4_dw-m40-run0" / "results.json").read_text())["complete"]
    assert (foreign / "notes.txt").read_text().startswith("not a run folder")  # untouched
    assert "already holds other files" in (out / "logs" / f"{foreign.name}.log").read_text()


def test_cells_no_node_can_hold_are_refused_not_waited_for(tmp_path, ray_env):
    child = subprocess.run([sys.executable, "-m", "latent_replay.cli", "sweep", "AR1F", *TINY, "--out",
                            str(tmp_path / "s"), "--cpus", "1", "--gpus-per-run", "1"], env=ray_env,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 2, child.stderr
    assert "--gpus-per-run 1: this machine's Ray instance has 0 GPUs in all, so no cell could start" in child.stderr
    assert not (tmp_path / "s").exists()  # refused before anything was written
