"""The aarch64 smoke test (slow: ~6 minutes fresh on 2 cores, ~2 with the cached root): the committed
tree installed in a Debian arm64 root under qemu-user, `latent-replay doctor` there at pool6 and
conv6/dw, and natively with the same versions; every latent, loss, logit and trained array within
1e-4 of its largest value (scripts/aarch64/smoke.sh). Needs root, Debian's archive and PyPI."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "aarch64" / "smoke.sh"


@pytest.mark.slow
def test_aarch64_under_emulation_matches_x86_64():
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, chroot, mounts)")
    if not (shutil.which("apt-get") or shutil.which("debootstrap")):
        pytest.skip("needs Debian's apt-get or debootstrap")
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("needs a git checkout (the script installs the committed tree)")
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "aarch64 matches x86_64 within rtol 1e-4" in r.stdout
    assert "largest difference" in r.stdout and "on aarch64" in r.stdout
