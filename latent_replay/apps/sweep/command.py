"""`latent-replay sweep` (a grid of `run`s, on Ray or one after another here) and `latent-replay report`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List

from ..common import UserError

NOT_PASSED = ("out", "fresh", "quiet", "set", "runs", "method", "scenario", "replay", "core50", "latent_layer",
              "replay_memory", "method_pos", "scenario_pos", "replay_pos", "core50_pos", "help")
LISTS = ("method", "scenario", "replay", "latent_layer", "replay_memory")


SWEEP_HELP = "a grid of runs (methods x scenarios x layers x memory x runs) on Ray or here, with its summary"
SWEEP_DESCRIPTION = ("Run's arguments, where METHOD, SCENARIO, REPLAY, --latent-layer, --replay-memory and "
                     "--set KEY=V1,V2 may be comma lists or `all`, and --runs a range (0-4): every combination is "
                     "one `latent-replay run` of one run in its own folder under --out. Stopped, the same command "
                     "continues cell by cell (and each cell from its last saved batch); finished cells are never "
                     "recomputed. Ends with OUT/summary.csv, summary.md and the figures (latent-replay report).")
SWEEP_EPILOG = ("e.g. latent-replay sweep AR1F,CWR,naive 391 latent /data/core50 --latent-layer all "
                "--replay-memory 500,1500 --runs 0-4 --out runs/grid")


def add_sweep_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help=SWEEP_HELP, description=SWEEP_DESCRIPTION, epilog=SWEEP_EPILOG)
    add_sweep_arguments(p)
    p.set_defaults(handler=sweep_command)


def sweep_parser() -> argparse.ArgumentParser:
    """A parser of `sweep`'s arguments alone (what a grid file is read with)."""
    p = argparse.ArgumentParser(prog="latent-replay sweep", description=SWEEP_DESCRIPTION, epilog=SWEEP_EPILOG)
    add_sweep_arguments(p)
    return p


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """run's arguments (some as lists) and the sweep's own."""
    from ..run.command import add_run_arguments

    add_run_arguments(p)
    for action in p._actions:  # the list-valued options take text ("500,1500", "all"); grid.py checks them
        if action.dest in LISTS:
            action.type, action.choices = None, None
        if action.dest == "out":
            action.default, action.help = "runs/sweep", "folder of the cells and the summary (default runs/sweep)"
        if action.dest == "fresh":
            action.help = argparse.SUPPRESS
    g = p.add_argument_group("sweep")
    g.add_argument("--grid", help="YAML or JSON file {option: value or list} (the command line overrides it)")
    g.add_argument("--local", action="store_true", help="run the cells one after another in this process (no Ray)")
    g.add_argument("--ray-address", help="an existing Ray cluster (auto, or HOST:PORT); default: Ray on this machine")
    g.add_argument("--cpus-per-run", type=float, default=1.0,
                   help="CPUs Ray gives each cell (its ONNX Runtime threads; default 1)")
    g.add_argument("--gpus-per-run", type=float, default=None,
                   help="GPUs Ray gives each cell (default 1 with --device cuda, else 0)")
    g.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all cores)")
    g.add_argument("--dry-run", action="store_true", help="list the cells and their state, run nothing")


def add_report_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="summary table and figures of a sweep's (or any runs') folder",
                       description="Collect every DIR/*/results.json into DIR/summary.csv and DIR/summary.md "
                                   "(one row per grid point: mean and spread over runs) and draw the figures.")
    p.add_argument("folder", metavar="DIR", help="a sweep's --out (or any folder of run folders)")
    p.set_defaults(handler=report_command)


def write_report(out: Path) -> List[Path]:
    """summary.csv, summary.md and the figures of everything under `out`; the files written."""
    from .figures import draw_all
    from .report import cell_rows, grid_rows, markdown, write_csv

    rows = cell_rows(out)
    if not rows:
        raise UserError(f"{out} holds no results yet (no */results.json with a finished batch)")
    grid = grid_rows(rows)
    written = [out / "summary.csv", out / "summary.md"]
    write_csv(written[0], rows, grid)
    written[1].write_text(markdown(grid), encoding="utf-8")
    return written + draw_all(out, grid)


def report_command(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder")
    for path in write_report(folder):
        print(path)
    return 0


def _with_grid_file(args: argparse.Namespace) -> argparse.Namespace:
    """The command line's options over the grid file's (the file fills what the command line left at its default)."""
    if not args.grid:
        return args
    from .grid import grid_file_argv

    parser = sweep_parser()
    defaults = parser.parse_args([])
    try:
        from_file = parser.parse_args(grid_file_argv(Path(args.grid)))
    except SystemExit:
        raise UserError(f"--grid {args.grid}: an option above is not one of sweep's") from None
    merged = argparse.Namespace(**vars(args))
    for key, value in vars(from_file).items():
        if key == "set":
            merged.set = list(from_file.set) + list(args.set)
        elif getattr(args, key) == getattr(defaults, key):
            setattr(merged, key, value)
    return merged


def passthrough(args: argparse.Namespace) -> List[str]:
    """The sweep's other `run` options as command-line arguments, the same in every cell."""
    from ..run.command import run_parser

    argv: List[str] = []
    for action in run_parser()._actions:
        if not action.option_strings or action.dest in NOT_PASSED:
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        flag = action.option_strings[0]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            argv.append(flag)
        else:
            argv += [flag, _absolute(action.dest, value)]
    return argv


def _absolute(dest: str, value) -> str:
    """Paths as absolute ones: Ray's workers do not start in this folder."""
    text = str(value)
    if dest in ("weights", "artifacts", "filelists") and Path(text).exists():
        return str(Path(text).resolve())
    return text


def _data_source(value):
    from ..run.options import FOLDER_PREFIX

    if value is None or "," in value:
        return value
    if value.startswith(FOLDER_PREFIX):
        return FOLDER_PREFIX + str(Path(value[len(FOLDER_PREFIX):]).resolve())
    return str(Path(value).resolve())


def sweep_command(args: argparse.Namespace) -> int:
    from ...folders import FolderLock
    from ..run.command import run_parser
    from .cells import finished
    from .grid import expand

    args = _with_grid_file(args)
    if args.fresh:
        raise UserError("sweep has no --fresh: a finished cell is never recomputed; remove its folder under --out "
                        "to run it again")
    if args.cpus_per_run <= 0 or (args.gpus_per_run is not None and args.gpus_per_run < 0):
        raise UserError("--cpus-per-run must be > 0 and --gpus-per-run >= 0")
    gpus = args.gpus_per_run if args.gpus_per_run is not None else (1.0 if args.device == "cuda" else 0.0)
    for name in ("core50", "core50_pos"):
        setattr(args, name, _data_source(getattr(args, name)))
    out = Path(args.out).resolve()
    cells = expand(args, run_parser(), out, passthrough(args))
    todo = [c for c in cells if c.error is None and not finished(c.out)]
    refused = [c for c in cells if c.error is not None]
    print(f"sweep: {len(cells)} cells in {out}: {len(cells) - len(todo) - len(refused)} finished before, "
          f"{len(todo)} to run, {len(refused)} refused by run", file=sys.stderr)
    if args.dry_run:
        for c in cells:
            state = "refused: " + c.error if c.error else ("finished" if finished(c.out) else "to run")
            print(f"{c.name}: {state}\n    latent-replay run {' '.join(c.argv)}")
        return 0
    with FolderLock(out, "--out"):
        if args.local or not todo:
            return _run_cells(args, out, cells, todo, gpus, None)
        from .execute import ray_started

        with ray_started(args.ray_address, args.cpus, args.cpus_per_run, gpus) as ray:
            return _run_cells(args, out, cells, todo, gpus, ray)


def _run_cells(args: argparse.Namespace, out: Path, cells, todo, gpus: float, ray) -> int:
    """Run the cells to do (on `ray`, or here when None) and write the summary."""
    from ...atomic import write_json_atomic
    from .cells import finished
    from .execute import run_local, run_ray
    from .monitor import Monitor

    write_json_atomic(out / "sweep.json", {"cells": [{"name": c.name, "point": c.point, "run": c.run,
                                                       "argv": c.argv} for c in cells]})
    monitor = Monitor(cells, bar=not args.quiet)
    for c in cells:
        if c.error is not None:
            monitor.report(c, "failed", c.error)
        elif finished(c.out):
            monitor.report(c, "finished before")
        else:
            monitor.report(c, "queued")
    try:
        if ray is None:
            monitor.start()
            run_local(todo, monitor.report, threads=args.threads or None)
        else:
            monitor.watch(todo)
            run_ray(ray, todo, monitor.report, args.cpus_per_run, gpus)
    finally:
        monitor.close()
    if any(finished(c.out) for c in cells):
        for path in write_report(out):
            print(path)
    if monitor.failed:
        names = ", ".join(sorted(monitor.failed))
        print(f"latent-replay sweep: {len(monitor.failed)} of {len(cells)} cells failed: {names} "
              f"(their errors above; {out / 'logs'} has each cell's output)", file=sys.stderr)
        return 1
    return 0
