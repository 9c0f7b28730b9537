"""Running a sweep's cells: one after another in this process (`--local`), or as Ray tasks.

Ray schedules, this module only submits and watches: every cell is one task that asks for
`--cpus-per-run` CPUs (and `--gpus-per-run` GPUs) and runs `run_cell`; a task's failure is its
cell's failure and the others go on. The driver watches the cells' folders for their progress.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Dict, List, Optional

from ..common import UserError
from .cells import run_cell
from .grid import Cell

Report = Callable[[Cell, str, Optional[str]], None]  # (cell, "running" | "done" | "failed", detail)
OBJECT_STORE_BYTES = 100 * 1024 * 1024  # cells pass command lines and small dicts only
WORKER_NICENESS = "RAY_worker_niceness"  # read by the Ray instance ray.init starts


def run_local(cells: List[Cell], report: Report, threads: Optional[int] = None) -> None:
    """Each cell in turn, in this process (no second scheduler): Ctrl-C stops the sweep."""
    for cell in cells:
        report(cell, "running", None)
        outcome = run_cell(cell.argv, cell.log, threads)
        if outcome["code"] == 130:
            raise KeyboardInterrupt(f"stopped in cell {cell.name}; the same command continues from there")
        _report_outcome(cell, outcome, report)


def _report_outcome(cell: Cell, outcome: Dict[str, object], report: Report) -> None:
    if outcome["code"] == 0:
        report(cell, "done", None)
    else:
        report(cell, "failed", str(outcome["error"]))


@contextlib.contextmanager
def ray_started(address: Optional[str], cpus: Optional[int], cpus_per_run: float, gpus_per_run: float):
    """Ray, connected to the cluster at `address` or to a local instance of `cpus` CPUs, checked to have
    room for one cell at least; shut down at the end."""
    try:
        import ray
    except ImportError:
        raise UserError("running cells on Ray needs Ray: pip install \"latent-replay[sweep]\" (or run them one "
                        "after another in this process with --local)") from None
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR")
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Ray starts its workers at niceness 15: on a machine that does anything else (the camera loop
        # of a board, another job) the cells then starve -- measured 25x slower train steps here.
        os.environ.setdefault(WORKER_NICENESS, "0")
        ray.init(num_cpus=cpus, object_store_memory=OBJECT_STORE_BYTES, **kwargs)
    try:
        _check_resources(ray.cluster_resources(), cpus_per_run, gpus_per_run, address)
        yield ray
    finally:
        ray.shutdown()


def run_ray(ray, cells: List[Cell], report: Report, cpus_per_run: float, gpus_per_run: float) -> None:
    """The cells as Ray tasks of `cpus_per_run` CPUs and `gpus_per_run` GPUs each (Ray from `ray_started`)."""
    try:
        # max_calls=1: every cell in a fresh worker process, so that its peak RSS is its own and no state of
        # one cell (sessions, caches) lives on into the next
        task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0, max_calls=1)(run_cell)
        threads = max(1, int(cpus_per_run))
        pending = {task.remote(cell.argv, cell.log, threads): cell for cell in cells}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                cell = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as e:  # the task's worker died (out of memory, killed): that cell failed
                    outcome = {"code": 1, "error": f"the Ray task failed: {type(e).__name__}: "
                                                   f"{str(e).splitlines()[0] if str(e) else ''}"}
                _report_outcome(cell, outcome, report)
    except KeyboardInterrupt:
        raise KeyboardInterrupt("the running cells were stopped; the same command continues from their last saved "
                                "batch") from None


def _check_resources(available: Dict[str, float], cpus: float, gpus: float, address: Optional[str]) -> None:
    """Refuse a cell that no node can ever hold (Ray would wait for it forever)."""
    where = f"the Ray cluster at {address}" if address else "this machine's Ray instance"
    for name, wanted, option in (("CPU", cpus, "--cpus-per-run"), ("GPU", gpus, "--gpus-per-run")):
        have = float(available.get(name, 0.0))
        if wanted > have:
            raise UserError(f"{option} {wanted:g}: {where} has {have:g} {name}s in all, so no cell could start"
                            + (" (no GPU: drop --device cuda or give --gpus-per-run 0)" if name == "GPU" else ""))
