"""The mutation spot-check (benchmarks/mutations.py): every planted bug is caught by the default suite,
except the ones the script lists as accepted with a reason. Slow: a baseline run of the suite, then
one run per bug that stops at its first failure (~8 min on an idle 2-core machine)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "mutations.py"


@pytest.mark.slow
def test_every_planted_bug_is_caught():
    proc = subprocess.run([sys.executable, str(SCRIPT)], cwd=REPO, capture_output=True, text=True, timeout=4 * 3600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-5000:]}"
    assert "missed and not accepted" in proc.stdout and "; 0 missed" in proc.stdout, proc.stdout
