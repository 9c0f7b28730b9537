"""Memory probes of this process (peak and current RSS), shared by the runner and the benchmark."""
from __future__ import annotations

import resource
import sys
from typing import Dict


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB): VmHWM, or getrusage's ru_maxrss."""
    status = _proc_status()
    if "VmHWM" in status:
        return status["VmHWM"] / 1024.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def rss_mb() -> float:
    """Current resident set size of this process (MiB), 0 where it cannot be read."""
    status = _proc_status()
    if "VmRSS" in status:
        return status["VmRSS"] / 1024.0
    try:
        import psutil  # type: ignore

        return psutil.Process().memory_info().rss / 2 ** 20
    except Exception:
        return 0.0


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0: write 5 to /proc/self/clear_refs); True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _proc_status() -> Dict[str, int]:
    out: Dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB":
                    out[key] = int(parts[0])
    except OSError:
        pass
    return out
