"""`latent-replay bench`: latency and memory of this runtime side by side with onnxruntime-training and
the PyTorch way, in one run on the same threads.

Every configuration is measured in a fresh subprocess (a *worker*, `workers.py`) so that peak RSS
figures do not mix; the parent exports the artifacts once (random weights: no download), starts the
workers one at a time (the machine's cores are the resource measured), and collects their JSON:

- at the first thread count of `--threads`: the GEMM rate, the front's latency and throughput (ours
  and PyTorch's), and one NICv2-391 incremental batch per latent layer and pool storage (ours);
- at every thread count: the comparison of one incremental batch (front once per frame on every
  side) trained by the step-graph engine, by onnxruntime-training (a worker run by
  `--training-python`: the two onnxruntime distributions cannot be installed together) and by
  PyTorch (fp32 with nn.BatchNorm2d, bf16 autocast + channels_last, the port's elementwise BRN, and
  the port as written, front re-run every epoch), in `--rounds` interleaved rounds, the fastest
  round of each row counting.

`report.py` derives the ratios and targets and prints the table.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ...folders import FolderError, check_output_file
from ...models import mobilenet_v1 as net
from ..common import UserError, add_width_argument, check_device, parse_list
from . import probes as core
from .report import COMPARE_ROWS, derive, table
from .workers import BACK_TRAIN_FACTOR, CLASSES, FULL, QUICK, SEED, package_env, run_worker

Log = Callable[[str], None]
NO_TRAINING = ("not measured: onnxruntime-training cannot be installed beside onnxruntime; pass --training-python "
               "PATH (a Python with onnxruntime-training 1.19.2 and this package importable)")


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
    try:
        return parse_list(text, valid, what, option)
    except UserError as e:
        raise _argument_error(str(e)) from None


def parse_threads(text: Any) -> List[int]:
    """`--threads 2,0` -> [2, all usable cores], duplicates dropped (in order)."""
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    try:
        counts = [int(s) for s in items]
    except ValueError:
        counts = []
    if not counts or any(c < 0 for c in counts):
        raise _argument_error(f"--threads {text!r}: give thread counts >= 0, comma-separated (0: all usable cores)")
    out: List[int] = []
    for c in counts:
        c = c or core.cpu_count()
        if c not in out:
            out.append(c)
    return out


PROBE = ("import sys, onnxruntime; from latent_replay.runtime.engine.ort_training import training_bindings; "
         "training_bindings(); print(onnxruntime.__version__, sys.version.split()[0])")


def training_python(path: Optional[str]) -> Dict[str, Any]:
    """The interpreter that runs the onnxruntime-training worker: `path` (checked: it must run the
    ORT-training engine, else an argument error), this one when its onnxruntime has training, or
    {"skipped": why}."""
    if path is None:
        try:
            from ...runtime.engine.ort_training import training_bindings

            training_bindings()
        except Exception:
            return {"skipped": NO_TRAINING}
        path = sys.executable
    elif not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise _argument_error(f"--training-python {path}: not an executable file")
    try:
        proc = subprocess.run([path, "-c", PROBE], capture_output=True, text=True, timeout=120,
                              env=package_env())
    except (OSError, subprocess.TimeoutExpired) as e:
        raise _argument_error(f"--training-python {path}: cannot run it ({e})") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise _argument_error(f"--training-python {path} cannot run the ORT-training engine: {last}")
    ort_version, py_version = proc.stdout.split()[-2:]
    return {"python": path, "onnxruntime": ort_version, "python_version": py_version}


def results_path(args: argparse.Namespace) -> Path:
    """Where the results JSON goes: --json, else OUT/bench_latency_memory.json."""
    return Path(args.json) if args.json else Path(args.out) / "bench_latency_memory.json"


def check_arguments(args: argparse.Namespace) -> None:
    """Every argument checked before anything runs: a mistake is one line and exit code 2."""
    if getattr(args, "checked", False):
        return
    args.layer_list = _parse_list(args.layers, [l for l in net.LATENT_LAYERS if l != net.DATA], "latent layer",
                                  "--layers")
    args.storage_list = _parse_list(args.storage, ["fp32", "fp16", "uint8"], "storage", "--storage")
    args.thread_counts = parse_threads(args.threads)
    if args.rounds is not None and args.rounds < 1:
        raise _argument_error(f"--rounds must be >= 1, got {args.rounds}")
    try:  # the results are written at the end of a run of minutes: a place they cannot go is refused now
        check_output_file(results_path(args), "--json" if args.json else "--out", args.json or args.out)
    except FolderError as e:
        raise _argument_error(str(e)) from None
    try:
        check_device(args.device)
    except UserError as e:
        raise _argument_error(str(e)) from None
    args.training = training_python(getattr(args, "training_python", None))
    args.checked = True


def _export_step(layers: List[str], tmp: Path, width: float) -> Dict[str, str]:
    from ...export.exporter import export
    from .workers import bench_weights

    weights = bench_weights(width)
    artifacts = {}
    for layer in layers:
        out = tmp / ("art-" + layer.replace("/", "_"))
        export(weights, layer, CLASSES, out)
        artifacts[layer] = str(out)
    return artifacts


def _export_training(training: Dict[str, Any], layers: List[str], tmp: Path, width: float,
                     log: Log) -> Dict[str, Any]:
    """The ORT training artifacts, written by the training interpreter; `training` with their folders."""
    if "skipped" in training:
        return training
    log("  export for onnxruntime-training ...")
    out = tmp / "ort-training"
    out.mkdir()
    res = run_worker({"kind": "export", "threads": 1, "layers": layers, "engines": ["step", "ort-training"],
                      "width": width,
                      "out": str(out)}, tmp, training["python"])
    if "error" in res:
        return {**training, "error": res["error"]}
    return {**training, "artifacts": res["artifacts"]}


def _measure_figures(results: Dict[str, Any], base: Dict[str, Any], artifacts: Dict[str, str],
                     has_torch: bool, torch_info: str, log: Log) -> None:
    """GEMM, front and per-storage incremental batches at the first thread count."""
    log("  gemm ...")
    results["gemm"] = run_worker({**base, "kind": "gemm"}, Path(base["workdir"]))
    results["front"], results["batch"] = {}, {}
    for layer in results["layers"]:
        log(f"  front {layer} ...")
        entry = {"ours": run_worker({**base, "kind": "ours_front", "layer": layer, "artifacts": artifacts[layer]},
                                    Path(base["workdir"]))}
        entry["torch"] = (run_worker({**base, "kind": "torch_front", "layer": layer}, Path(base["workdir"]))
                          if has_torch else {"skipped": torch_info})
        results["front"][layer] = entry
        results["batch"][layer] = {}
        for storage in results["storages"]:
            log(f"  incremental batch {layer} {storage} ...")
            results["batch"][layer][storage] = run_worker(
                {**base, "kind": "ours_batch", "layer": layer, "storage": storage, "artifacts": artifacts[layer]},
                Path(base["workdir"]))
    if base["device"] == "cuda":
        results["cuda_variants"] = {layer: _cuda_variants(base, layer, artifacts[layer], results["batch"][layer], log)
                                    for layer in results["layers"]}


CUDA_VARIANTS = {  # the step engine on CUDA: TF32 (the provider's default) or exact fp32, captured or not
    "tf32-graphs": {}, "fp32-graphs": {"LATENT_REPLAY_CUDA_TF32": "0"},
    "tf32-no-graphs": {"LATENT_REPLAY_CUDA_GRAPH": "0"},
    "fp32-no-graphs": {"LATENT_REPLAY_CUDA_TF32": "0", "LATENT_REPLAY_CUDA_GRAPH": "0"}}


def _cuda_variants(base: Dict[str, Any], layer: str, artifacts: str, batches: Dict[str, Any],
                   log: Log) -> Dict[str, Any]:
    """The fp32-pool incremental batch in each CUDA variant (the default one is already measured)."""
    out: Dict[str, Any] = {}
    for name, env in CUDA_VARIANTS.items():
        if not env and "fp32" in batches:
            out[name] = batches["fp32"]
            continue
        log(f"  incremental batch {layer} on CUDA, {name} ...")
        out[name] = run_worker({**base, "kind": "ours_batch", "layer": layer, "storage": "fp32", "artifacts": artifacts,
                                "variant": name, "env": env}, Path(base["workdir"]))
    return out


def _compare_row(row: str, layer: str, base: Dict[str, Any], artifacts: Dict[str, str],
                 training: Dict[str, Any], torch_info: Optional[str]) -> Dict[str, Any]:
    work = Path(base["workdir"])
    spec = {**base, "layer": layer, "storage": "fp32"}
    if row == "step":
        return run_worker({**spec, "kind": "ours_batch", "artifacts": artifacts[layer], "engine": "step"}, work)
    if row == "ort_training":
        if "artifacts" not in training:
            return {"skipped": training["skipped"]} if "skipped" in training else {"error": training["error"]}
        return run_worker({**spec, "kind": "ours_batch", "artifacts": training["artifacts"][layer],
                           "engine": "ort-training"}, work, training["python"])
    if torch_info is not None:
        return {"skipped": torch_info}
    return run_worker({**spec, "kind": "torch_batch", "variant": row}, work)


def skipped_row(row: str, layer: str, quick: bool) -> Optional[str]:
    """Why a comparison row is not run, or None: the port as written is a full-mode extra; above
    pool6 the back has no normalization layer, so the port-style BRN row would repeat bn_fp32."""
    if row == "port" and quick:
        return "--quick: the port as written (front re-run every epoch) is measured in full mode only"
    if row == "brn" and layer == net.POOL:
        return "same computation as PyTorch fp32 here: the back above pool6 has no normalization layer"
    return None


def _measure_compare(results: Dict[str, Any], base: Dict[str, Any], artifacts: Dict[str, str],
                     training: Dict[str, Any], torch_info: Optional[str], log: Log) -> Dict[str, Any]:
    """Every comparison row of every layer at `base["threads"]`, in `results["rounds"]` rounds (each
    round runs every row once, every other round in reverse order) so that other work on a shared
    machine does not decide a ratio; the step engine's first round is the fp32 batch already
    measured at these threads."""
    threads = base["threads"]
    out: Dict[str, Any] = {"gemm": results["gemm"] if threads == results["threads"]
                           else run_worker({**base, "kind": "gemm"}, Path(base["workdir"])), "layers": {}}
    for layer in results["layers"]:
        rows: Dict[str, Any] = {}
        for row in COMPARE_ROWS:
            why = skipped_row(row, layer, results["quick"])
            rows[row] = {"skipped": why} if why else []
        runnable = [row for row in COMPARE_ROWS if isinstance(rows[row], list)]
        measured = results["batch"][layer].get("fp32") if threads == results["threads"] else None
        for r in range(results["rounds"]):
            for row in (runnable if r % 2 == 0 else runnable[::-1]):
                if row == "step" and r == 0 and measured is not None:
                    rows[row].append(measured)
                    continue
                log(f"  compare {layer} {row}, {threads} thread(s), round {r + 1} of {results['rounds']} ...")
                rows[row].append(_compare_row(row, layer, base, artifacts, training, torch_info))
        out["layers"][layer] = {row: best_round(v) if isinstance(v, list) else v for row, v in rows.items()}
    return out


def best_round(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The round with the shortest incremental batch (other work only ever adds time), with every
    round's batch time beside it; a failed or skipped round is the row's result."""
    bad = [r for r in records if "error" in r or "skipped" in r]
    if bad:
        return bad[0]
    best = min(records, key=lambda r: r["batch_s"])
    return dict(best, rounds_batch_s=[r["batch_s"] for r in records])


def benchmark(args: argparse.Namespace, log: Log = print) -> Dict[str, Any]:
    from . import torch_baseline as tb

    check_arguments(args)
    counts = args.thread_counts
    params = dict(QUICK if args.quick else FULL)
    has_torch, torch_info = tb.available()
    if not has_torch:
        log(f"note: {torch_info}")
    t_start = time.perf_counter()
    results: Dict[str, Any] = {
        "machine": core.machine_info(), "threads": counts[0], "thread_counts": counts, "device": args.device,
        "quick": bool(args.quick), "ort_spinning": bool(args.spin), "params": params, "width": args.width,
        "rounds": args.rounds or (1 if args.quick else 2),
        "layers": args.layer_list, "storages": args.storage_list, "back_train_mac_factor": BACK_TRAIN_FACTOR,
        "torch": {"available": has_torch, "info": torch_info},
        "tegrastats": core.tegrastats_sample(),
        "gpu_memory_idle": core.gpu_memory() if args.device == "cuda" else {"skipped": "--device cpu"},
    }
    import onnxruntime as ort

    from ... import __version__

    results["versions"] = {"latent_replay": __version__, "onnxruntime": ort.__version__,
                           "torch": torch_info if has_torch else None}
    with tempfile.TemporaryDirectory(prefix="lr-bench-") as tmp:
        tmp_path = Path(tmp)
        artifacts = _export_step(args.layer_list, tmp_path, args.width)
        training = _export_training(args.training, args.layer_list, tmp_path, args.width, log)
        results["training"] = {k: v for k, v in training.items() if k != "artifacts"}
        log(f"benchmark: {len(args.layer_list)} layer(s) x {len(args.storage_list)} storage(s), "
            f"threads {', '.join(map(str, counts))}, {'quick' if args.quick else 'full'} mode")
        base = {"device": args.device, "spin": bool(args.spin), "workdir": tmp, "width": args.width, **params}
        _measure_figures(results, {**base, "threads": counts[0]}, artifacts, has_torch, torch_info, log)
        results["compare"] = {str(t): _measure_compare(results, {**base, "threads": t}, artifacts, training,
                                                       None if has_torch else torch_info, log) for t in counts}
    derive(results)
    results["wall_s"] = time.perf_counter() - t_start
    return results


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="a short run (about a minute on 2 cores): fewer frames, 42 new + 300 memory, 1 epoch")
    p.add_argument("--json", metavar="PATH", help="write the results here (default OUT/bench_latency_memory.json)")
    p.add_argument("--layers", default=f"{net.DEFAULT_LATENT_LAYER},{net.POOL}",
                   help="latent layers, comma-separated (default conv5_4/dw,pool6; AR1*-free, CWR* at pool6)")
    p.add_argument("--storage", default="fp32,uint8", help="replay pool dtypes, comma-separated (default fp32,uint8)")
    add_width_argument(p, "of the benchmarked network (random weights; default 1.0)", 1.0)
    p.add_argument("--threads", default="2,0",
                   help="thread counts for ONNX Runtime, PyTorch and the GEMM probe, comma-separated; 0: all "
                        "usable cores (default 2,0: how each side scales). The front, pool and memory figures "
                        "are measured at the first; the engine/PyTorch comparison at each")
    p.add_argument("--training-python", metavar="PATH",
                   help="a Python interpreter with onnxruntime-training 1.19.2 and this package importable "
                        "(e.g. another virtual environment's bin/python): it runs the onnxruntime-training "
                        "worker of the comparison; without it that row is reported as not measured")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds of the engine/PyTorch comparison: each runs every row once, the fastest round of "
                        "each row counts (default 2, 1 with --quick)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the back trains and the pool lives (default cpu); the front is also measured "
                        "on CUDA/TensorRT whenever those providers are present")
    p.add_argument("--out", default="bench_results", help="output folder (default bench_results)")
    p.add_argument("--no-spin", dest="spin", action="store_false",
                   help="ORT threads sleep instead of busy-waiting between operators (faster on a busy CPU)")


def add_bench_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency and memory benchmark, side by side with onnxruntime-training "
                                     "and PyTorch",
                       description="Measure front latency/throughput, one NICv2-391 incremental batch (AR1*-free at "
                                   "conv5_4/dw, CWR* at pool6; fp32 and uint8 replay pools) and peak memory, each "
                                   "in a fresh process, and compare the step-graph engine with onnxruntime-training "
                                   "and eager PyTorch (fp32 nn.BatchNorm2d, bf16 autocast + channels_last, the "
                                   "port's BRN) per step and per incremental batch, at each --threads count, "
                                   "against the machine's GEMM rate. Random weights: nothing is downloaded.")
    add_arguments(p)
    p.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    from ...atomic import write_json_atomic

    check_arguments(args)
    results = benchmark(args, log=lambda msg: print(msg, file=sys.stderr))
    print(table(results))
    path = results_path(args)
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
