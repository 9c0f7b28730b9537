"""Measurement helpers of the benchmark: timing with warm-up and percentiles, the machine's GEMM
peak, memory probes (RSS, ORT arena settings, GPU memory, tegrastats) and the machine description.

Nothing here imports onnxruntime or torch: the helpers are shared by the runtime side, the PyTorch
side and the parent process that only collects results.
"""
from __future__ import annotations

import os
import platform
import queue
import shutil
import subprocess
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Sequence

import numpy as np

from ...runtime.memory import peak_rss_mb, reset_peak_rss, rss_mb  # noqa: F401  (re-exported)


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
def percentiles(samples: Sequence[float]) -> Dict[str, float]:
    """p50/p90/p99 (numpy's linear interpolation, so p50 <= p90 <= p99), mean, min, max, count."""
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no samples")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(a.mean()),
            "min": float(a.min()), "max": float(a.max()), "count": int(a.size)}


def time_calls(fn: Callable[[], Any], iters: int, warmup: int = 3) -> List[float]:
    """Seconds per call of `fn` for `iters` calls after `warmup` untimed calls."""
    for _ in range(max(0, warmup)):
        fn()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def latency(fn: Callable[[], Any], iters: int, warmup: int = 3) -> Dict[str, float]:
    """Percentiles (seconds) of `fn` over `iters` timed calls after warm-up."""
    return percentiles(time_calls(fn, iters, warmup))


def throughput(fn: Callable[[], Any], batch: int, repeats: int, warmup: int = 1) -> Dict[str, float]:
    """Frames per second of `fn` processing `batch` frames: the median over `repeats` runs."""
    times = time_calls(fn, repeats, warmup)
    med = float(np.median(times))
    return {"batch": int(batch), "seconds_median": med, "seconds_min": float(min(times)),
            "fps": batch / med, "repeats": int(repeats)}


# ---------------------------------------------------------------------------------------------
# The physical limit: dense float32 GEMM
# ---------------------------------------------------------------------------------------------
def gemm_rate(sizes: Iterable[int] = (1024, 2048), repeats: int = 5) -> Dict[str, Any]:
    """Best dense float32 square-matmul rate through numpy's BLAS, in multiply-adds per second.

    The thread count is whatever the BLAS was started with (the benchmark runs this in a worker
    whose OMP/OPENBLAS/MKL_NUM_THREADS are set to --threads)."""
    rng = np.random.default_rng(0)
    per_size = {}
    best = 0.0
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        c = np.empty((n, n), np.float32)
        np.matmul(a, b, out=c)  # warm-up (thread pool start, page faults)
        times = time_calls(lambda: np.matmul(a, b, out=c), repeats, warmup=0)
        rate = n ** 3 / min(times)
        per_size[str(n)] = {"best_s": float(min(times)), "median_s": float(np.median(times)),
                            "macs_per_s": float(rate)}
        best = max(best, rate)
    return {"macs_per_s": float(best), "gflops": float(2 * best / 1e9), "sizes": per_size,
            "repeats": int(repeats), "blas": _blas_name()}


def _blas_name() -> str:
    try:
        cfg = np.show_config(mode="dicts")  # numpy >= 1.25
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # pragma: no cover - older numpy
        return "unknown"


def mac_fraction(macs: float, seconds: float, gemm_macs_per_s: float) -> Dict[str, float]:
    """Achieved multiply-add rate of `macs` done in `seconds`, and its fraction of the GEMM rate."""
    rate = macs / seconds
    return {"macs": float(macs), "seconds": float(seconds), "macs_per_s": float(rate),
            "fraction_of_gemm": float(rate / gemm_macs_per_s)}


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------
def ort_arena_info(session_options: Any = None) -> Dict[str, Any]:
    """What ONNX Runtime says about its memory arena. The Python API exposes the arena settings,
    not its statistics (OrtAllocator::GetStats is C API only): report the settings and say so."""
    info: Dict[str, Any] = {"stats_available": False,
                            "reason": "arena statistics (OrtAllocator GetStats) are not exposed by the "
                                      "onnxruntime Python API; the RSS figures include the arena"}
    if session_options is not None:
        for key in ("enable_cpu_mem_arena", "enable_mem_pattern", "enable_mem_reuse",
                    "intra_op_num_threads", "inter_op_num_threads"):
            if hasattr(session_options, key):
                info[key] = getattr(session_options, key)
        try:
            info["graph_optimization_level"] = str(session_options.graph_optimization_level)
        except Exception:
            pass
    return info


def gpu_memory() -> Dict[str, Any]:
    """Used/total memory of every NVIDIA GPU via NVML (nvidia-ml-py), else nvidia-smi; the reason
    when neither is available."""
    try:
        import pynvml  # type: ignore

        pynvml.nvmlInit()
        try:
            gpus = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                m = pynvml.nvmlDeviceGetMemoryInfo(h)
                name = pynvml.nvmlDeviceGetName(h)
                gpus.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                             "used_mb": m.used / 2 ** 20, "total_mb": m.total / 2 ** 20})
            return {"available": True, "source": "nvml", "gpus": gpus}
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:  # no pynvml, no driver
        nvml_error = f"{type(e).__name__}: {e}"
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=index,name,memory.used,memory.total",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout
            gpus = []
            for line in out.strip().splitlines():
                idx, name, used, total = [s.strip() for s in line.split(",")]
                gpus.append({"index": int(idx), "name": name, "used_mb": float(used), "total_mb": float(total)})
            return {"available": True, "source": "nvidia-smi", "gpus": gpus}
        except Exception as e:
            return {"available": False, "reason": f"nvidia-smi failed: {e}"}
    return {"available": False, "reason": f"no NVML ({nvml_error}) and no nvidia-smi on PATH"}


def tegrastats_sample(interval_ms: int = 200, timeout_s: float = 3.0) -> Dict[str, Any]:
    """One line of `tegrastats` on a Jetson (RAM, GPU load, power); the reason when not a Jetson.

    The line is read on a helper thread, so a tegrastats that stays silent (or buffers its output)
    costs at most `timeout_s`, not a blocked read."""
    exe = shutil.which("tegrastats")
    if exe is None:
        return {"available": False, "reason": "tegrastats not found (not an NVIDIA Jetson)"}
    try:
        proc = subprocess.Popen([exe, "--interval", str(interval_ms)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        lines: "queue.Queue[str]" = queue.Queue()

        def first_line() -> None:
            for raw in proc.stdout or ():
                if raw.strip():
                    lines.put(raw.strip())
                    return
            lines.put("")  # end of output without a line

        threading.Thread(target=first_line, name="tegrastats", daemon=True).start()
        try:
            line = lines.get(timeout=timeout_s)
        except queue.Empty:
            line = ""
        finally:
            proc.terminate()
            proc.wait(timeout=5)
        if not line:
            return {"available": False, "reason": "tegrastats printed nothing"}
        return {"available": True, "line": line}
    except Exception as e:
        return {"available": False, "reason": f"tegrastats failed: {e}"}


# ---------------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------------
def cpu_count() -> int:
    """Cores this process may run on (affinity), the default thread count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def machine_info() -> Dict[str, Any]:
    cpu = platform.processor() or ""
    flags: List[str] = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    have = set(line.split(":", 1)[1].split())
                    flags = [f for f in ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni",
                                          "amx_tile", "amx_bf16") if f in have]
    except OSError:
        pass
    mem_total = 0.0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    mem_total = int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return {"cpu": cpu or platform.machine(), "cores_usable": cpu_count(), "cores_total": os.cpu_count(),
            "simd": flags, "memory_gib": round(mem_total, 1), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
