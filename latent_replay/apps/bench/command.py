"""`latent-replay bench`: latency and memory of this runtime side by side with the PyTorch way.

Every configuration is measured in a fresh subprocess (a *worker*) so that peak RSS figures do not
mix; the parent exports the artifacts once (random weights: no download), starts the workers one at
a time (the machine's cores are the resource measured), and collects their JSON:

- gemm:        the machine's dense float32 GEMM rate through numpy (the physical limit);
- ours_front:  front latency at batch 1 (p50/p90/p99) and throughput at batch 32/128, CPU provider,
               CUDA and TensorRT providers when present (TensorRT engine build timed separately);
- ours_batch:  one train step on a new+replayed minibatch and one whole NICv2-391 incremental
               batch (front once over the new frames, then the epochs with the replay memory) through
               `Learner`, per latent layer and pool storage, with the time split into ORT train
               steps, the numpy update, the pool gather and the rest;
- torch_front, torch_batch: the same in eager PyTorch, the official port's way
               (`torch_baseline.py`).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ...models import mobilenet_v1 as net
from ..common import UserError
from . import probes as core
from .report import derive, table
from .workers import BACK_TRAIN_FACTOR, CLASSES, FULL, QUICK, SEED, run_worker


class BenchArgumentError(UserError, SystemExit):
    """A bad bench argument: the CLI's user error (one line, exit code 2). Also a SystemExit, so
    that a script calling `benchmark()` directly stops with the message (exit status 1), as it did
    before."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = f"latent-replay bench: error: {message}"  # SystemExit prints it if it escapes


def _argument_error(message: str) -> BenchArgumentError:
    return BenchArgumentError(message)


def _parse_list(text: str, valid: List[str], what: str, option: str) -> List[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in valid]
    if bad or not items:
        raise _argument_error(f"{option} {text!r}: unknown {what} {', '.join(bad) if bad else '(empty list)'}; "
                              f"choose from {', '.join(valid)}")
    return items


def check_arguments(args: argparse.Namespace) -> None:
    """Every argument checked before anything runs: a mistake is one line and exit code 2."""
    args.layer_list = _parse_list(args.layers, [l for l in net.LATENT_LAYERS if l != net.DATA], "latent layer",
                                  "--layers")
    args.storage_list = _parse_list(args.storage, ["fp32", "fp16", "uint8"], "storage", "--storage")
    if args.threads is not None and args.threads < 0:
        raise _argument_error(f"--threads must be >= 0, got {args.threads}")
    if args.device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise _argument_error("--device cuda needs the CUDA build of onnxruntime-training (pip install .[gpu]); "
                                  "use --device cpu")


def benchmark(args: argparse.Namespace, log=print) -> Dict[str, Any]:
    from ...export.exporter import export
    from ...models.random_init import random_weights
    from . import torch_baseline as tb

    check_arguments(args)
    layers, storages = args.layer_list, args.storage_list
    threads = args.threads if args.threads and args.threads > 0 else core.cpu_count()
    params = dict(QUICK if args.quick else FULL)
    device = args.device
    has_torch, torch_info = tb.available()
    if not has_torch:
        log(f"note: {torch_info}")
    t_start = time.perf_counter()
    results: Dict[str, Any] = {
        "machine": core.machine_info(), "threads": threads, "device": device, "quick": bool(args.quick),
        "ort_spinning": bool(args.spin),
        "params": params, "layers": layers, "storages": storages,
        "back_train_mac_factor": BACK_TRAIN_FACTOR,
        "torch": {"available": has_torch, "info": torch_info},
        "tegrastats": core.tegrastats_sample(),
        "gpu_memory_idle": core.gpu_memory() if device == "cuda" else {"skipped": "--device cpu"},
    }
    try:
        import onnxruntime as ort

        results["versions"] = {"onnxruntime": ort.__version__, "torch": torch_info if has_torch else None}
    except Exception:
        pass
    with tempfile.TemporaryDirectory(prefix="lr-bench-") as tmp:
        tmp_path = Path(tmp)
        weights = random_weights(SEED, classes=CLASSES)
        artifacts = {}
        for layer in layers:
            out = tmp_path / ("art-" + layer.replace("/", "_"))
            export(weights, layer, CLASSES, out)
            artifacts[layer] = str(out)
        base = {"threads": threads, "device": device, "spin": bool(args.spin), **params}
        log(f"benchmark: {len(layers)} layer(s) x {len(storages)} storage(s), {threads} thread(s), "
            f"{'quick' if args.quick else 'full'} mode")
        log("  gemm ...")
        results["gemm"] = run_worker({**base, "kind": "gemm"}, tmp_path)
        results["front"], results["batch"] = {}, {}
        for layer in layers:
            log(f"  front {layer} ...")
            entry = {"ours": run_worker({**base, "kind": "ours_front", "layer": layer, "artifacts": artifacts[layer]},
                                        tmp_path)}
            if has_torch:
                entry["torch"] = run_worker({**base, "kind": "torch_front", "layer": layer}, tmp_path)
            else:
                entry["torch"] = {"skipped": torch_info}
            results["front"][layer] = entry
            b: Dict[str, Any] = {}
            for storage in storages:
                log(f"  incremental batch {layer} {storage} ...")
                b[storage] = run_worker({**base, "kind": "ours_batch", "layer": layer, "storage": storage,
                                         "artifacts": artifacts[layer]}, tmp_path)
            if has_torch:
                log(f"  incremental batch {layer} PyTorch ...")
                b["torch"] = run_worker({**base, "kind": "torch_batch", "layer": layer}, tmp_path)
            else:
                b["torch"] = {"skipped": torch_info}
            results["batch"][layer] = b
    derive(results)
    results["wall_s"] = time.perf_counter() - t_start
    return results


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="a short run (< 1 minute on 2 cores): fewer frames, 42 new + 300 memory, 1 epoch")
    p.add_argument("--json", metavar="PATH", help="write the results here (default OUT/bench_latency_memory.json)")
    p.add_argument("--layers", default=f"{net.DEFAULT_LATENT_LAYER},{net.POOL}",
                   help="latent layers, comma-separated (default conv5_4/dw,pool6; AR1*-free, CWR* at pool6)")
    p.add_argument("--storage", default="fp32,uint8", help="replay pool dtypes, comma-separated (default fp32,uint8)")
    p.add_argument("--threads", type=int, default=0,
                   help="threads for ONNX Runtime, PyTorch and the GEMM probe (default 0: all usable cores)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the back trains and the pool lives (default cpu); the front is also measured "
                        "on CUDA/TensorRT whenever those providers are present")
    p.add_argument("--out", default="bench_results", help="output folder (default bench_results)")
    p.add_argument("--no-spin", dest="spin", action="store_false",
                   help="ORT threads sleep instead of busy-waiting between operators (faster on a busy CPU)")


def add_bench_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency and memory benchmark, side by side with PyTorch",
                       description="Measure front latency/throughput, the back's train step and one whole "
                                   "NICv2-391 incremental batch (AR1*-free at conv5_4/dw, CWR* at pool6; fp32 and "
                                   "uint8 replay pools), peak memory of each configuration in a fresh process, and "
                                   "the same in eager PyTorch (when installed), against the machine's GEMM rate. "
                                   "Random weights: nothing is downloaded.")
    add_arguments(p)
    p.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    from ...atomic import write_json_atomic

    check_arguments(args)
    results = benchmark(args, log=lambda msg: print(msg, file=sys.stderr))
    print(table(results))
    path = Path(args.json) if args.json else Path(args.out) / "bench_latency_memory.json"
    write_json_atomic(path, results)
    print(f"\nwrote {path} ({results['wall_s']:.0f} s)")
    return 1 if results["derived"]["errors"] else 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="latent-replay bench", description="latency and memory benchmark")
    add_arguments(p)
    try:
        return command(p.parse_args(argv))
    except UserError as e:
        print(f"latent-replay bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
