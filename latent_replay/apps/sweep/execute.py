"""Running a sweep's cells: one after another in this process (`--local`), or as Ray tasks.

Ray schedules, this module only submits and watches: every cell is one task that asks for
`--cpus-per-run` CPUs (and `--gpus-per-run` GPUs) and runs `run_cell`; a task's failure is its
cell's failure and the others go on. The driver watches the cells' folders for their progress.
"""
from __future__ import annotations

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


def run_ray(cells: List[Cell], report: Report, address: Optional[str], cpus_per_run: float,
            gpus_per_run: float, cpus: Optional[int] = None) -> None:
    """The cells as Ray tasks: a local Ray instance (at most `cpus` CPUs) or the cluster at `address`."""
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
        task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(run_cell)
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
    finally:
        ray.shutdown()
