"""One cell of a sweep: what its folder says about it, and running it as `latent-replay run`.

The folder is the truth: a cell whose results.json says complete is done and never run again; any
other cell is (re)started with the same command line, and `run` resumes it from its last saved batch.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..run.experiment import PROGRESS_FILE

RESULTS = "results.json"


def finished(out: Path) -> bool:
    """Whether the cell folder holds the results of a complete run."""
    try:
        return bool(json.loads((Path(out) / RESULTS).read_text(encoding="utf-8")).get("complete"))
    except (OSError, ValueError, AttributeError):
        return False


def progress(out: Path) -> Optional[Tuple[int, int]]:
    """(batches done, batches) of a cell that has started, from its progress file."""
    try:
        p = json.loads((Path(out) / PROGRESS_FILE).read_text(encoding="utf-8"))
        return int(p["batch"]), int(p["batches"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_cell(argv: List[str], log: Path, threads: Optional[int] = None) -> Dict[str, object]:
    """Run one cell in this process: {'code': exit status, 'error': run's last error line or None}.

    What `run` prints goes into `log` (the sweep's logs/CELL.log, not the cell folder, which stays a
    pure run folder), so that parallel cells do not interleave their output; its last error line
    becomes the cell's error."""
    from ..common import run_handler
    from ..run.command import run_command, run_parser

    argv = list(argv) + (["--threads", str(threads)] if threads and "--threads" not in argv else [])
    captured = io.StringIO()
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(captured):
        try:
            code = run_handler("run", run_command, run_parser().parse_args(argv))
        except SystemExit as e:  # argparse's refusal (printed above it)
            code = e.code if isinstance(e.code, int) else 2
        except Exception as e:  # a bug in one cell must not end the others: reported as that cell's failure
            code = 1
            print(f"{type(e).__name__}: {e}", file=errors)
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    Path(log).write_text(captured.getvalue() + errors.getvalue(), encoding="utf-8")
    lines = [line for line in errors.getvalue().splitlines() if line.strip()]
    return {"code": int(code), "error": (lines[-1] if lines else f"exit code {code}") if code else None}
