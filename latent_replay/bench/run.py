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
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..cli import CliError
from ..models import mobilenet_v1 as net
from . import core

CLASSES = 50
SEED = 0
LAYER_METHOD = {net.POOL: "cwr"}  # CWR* at pool6, AR1*-free elsewhere
FULL = {"iters": 200, "warmup": 10, "batches": [32, 128], "repeats": 5,
        "n_new": 300, "memory": 1500, "epochs": 4, "step_repeats": 3}
QUICK = {"iters": 30, "warmup": 5, "batches": [32], "repeats": 3,
         # 42 new + 300 stored keeps the NICv2-391 minibatch composition: 2 iterations of 21 + 107
         "n_new": 42, "memory": 300, "epochs": 1,
         "step_repeats": 0}  # 0: one warm-up step, the step figure is the median of the batch's steps
BACK_TRAIN_FACTOR = 3  # forward + backward ~ 3x the forward multiply-adds (dX and dW each ~ forward)
WORKER_TIMEOUT_S = 900


def method_for(layer: str) -> str:
    return LAYER_METHOD.get(layer, "ar1free")


# =============================================================================================
# Workers (run in a fresh process each)
# =============================================================================================
def _frames(n: int, seed: int = 1) -> np.ndarray:
    from ..models.random_init import calibration_frames

    return calibration_frames(np.random.default_rng(seed), n, net.DEFAULT_INPUT_SIZE)


def _weights():
    from ..models.random_init import random_weights

    return random_weights(SEED, classes=CLASSES)


def worker_gemm(spec: Dict[str, Any]) -> Dict[str, Any]:
    return core.gemm_rate(sizes=(1024, 2048), repeats=spec["repeats"])


def worker_ours_front(spec: Dict[str, Any]) -> Dict[str, Any]:
    import onnxruntime as ort

    from ..runtime.engine import Front

    rss0 = core.rss_mb()
    frames = _frames(max(spec["batches"] + [1]))
    front = Front(Path(spec["artifacts"]), device="cpu", threads=spec["threads"], spin=spec["spin"])
    out: Dict[str, Any] = {"rss_after_imports_mb": rss0}
    out["cpu"] = _front_figures(lambda x: front(x), frames, spec)
    out["cpu"]["providers"] = front.session.get_providers()
    out["ort_arena"] = core.ort_arena_info(front.session.get_session_options())
    available = ort.get_available_providers()
    out["cuda"] = _gpu_front(spec, frames, "CUDAExecutionProvider", available)
    out["tensorrt"] = _gpu_front(spec, frames, "TensorrtExecutionProvider", available)
    out["peak_rss_mb"] = core.peak_rss_mb()
    return out


def _front_figures(run, frames: np.ndarray, spec: Dict[str, Any]) -> Dict[str, Any]:
    one = np.ascontiguousarray(frames[:1])
    res: Dict[str, Any] = {"latency_b1_s": core.latency(lambda: run(one), spec["iters"], spec["warmup"])}
    res["throughput"] = {str(b): core.throughput(lambda: run(frames[:b]), b, spec["repeats"])
                         for b in spec["batches"]}
    return res


def _gpu_front(spec: Dict[str, Any], frames: np.ndarray, provider: str, available: List[str]) -> Dict[str, Any]:
    """The front on the CUDA or TensorRT execution provider, when this onnxruntime has it.

    A provider this onnxruntime does not list is "skipped". One it lists but that cannot run the
    front (no driver, no libcudnn/libnvinfer, a session that silently fell back to the CPU, a failing
    run) is an "error": the benchmark then reports it and exits non-zero."""
    if provider not in available:
        return {"skipped": f"{provider} not available in this onnxruntime build ({', '.join(available)})"}
    import onnxruntime as ort

    from ..export.manifest import Manifest
    from ..runtime.engine import session_options

    directory = Path(spec["artifacts"])
    path = str(Manifest.load(directory).path(directory, "front"))
    try:
        if provider == "TensorrtExecutionProvider":
            cache = directory / "trt_cache"
            cache.mkdir(exist_ok=True)
            providers: List[Any] = [(provider, {"trt_engine_cache_enable": True,
                                                "trt_engine_cache_path": str(cache)}),
                                    "CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = [provider, "CPUExecutionProvider"]
        t0 = time.perf_counter()
        session = ort.InferenceSession(path, session_options(spec["threads"], spec["spin"]), providers=providers)
        if provider not in session.get_providers():  # ORT falls back to the next provider with a warning
            return {"error": f"{provider} is listed by this onnxruntime but the session runs on "
                             f"{', '.join(session.get_providers())} (the provider failed to load)"}
        name_in, name_out = session.get_inputs()[0].name, session.get_outputs()[0].name
        one = np.ascontiguousarray(frames[:1])
        session.run([name_out], {name_in: one})
        first = time.perf_counter() - t0  # session + first run: the engine build for TensorRT
        for b in spec["batches"]:  # build the engines of every batch shape before timing
            session.run([name_out], {name_in: frames[:b]})
        build = time.perf_counter() - t0
        res = _front_figures(lambda x: session.run([name_out], {name_in: x}), frames, spec)
        res.update({"providers": session.get_providers(), "first_run_s": first,
                    "build_all_shapes_s": build, "gpu_memory": core.gpu_memory()})
        if provider == "TensorrtExecutionProvider":
            res["engine_cache"] = str(cache)
            res["note"] = "first_run_s includes the TensorRT engine build; a second process reuses the cache"
        return res
    except Exception as e:  # a provider that is listed but cannot start (no driver, no libnvinfer)
        return {"error": f"{provider} is listed by this onnxruntime but failed: {type(e).__name__}: {e}"}


def worker_ours_batch(spec: Dict[str, Any]) -> Dict[str, Any]:
    """One step, then one whole incremental batch (index 1: a later batch) through `Learner`."""
    from ..export.manifest import Manifest
    from ..runtime.learn import LearnerConfig
    from ..runtime.engine import Back, Front
    from ..runtime.learn import Learner
    from ..runtime.learn.hooks import StepTimer
    from ..runtime.learn.replay import plan_minibatches
    from ..runtime.pool import make_pool

    rss0 = core.rss_mb()
    directory = Path(spec["artifacts"])
    manifest = Manifest.load(directory)
    layer, storage, memory = spec["layer"], spec["storage"], spec["memory"]
    device = spec["device"]
    front = Front(directory, manifest, device=device, threads=spec["threads"], spin=spec["spin"])
    back = Back(directory, manifest, device=device, threads=spec["threads"], spin=spec["spin"])
    config = LearnerConfig.preset("pytorch", method=method_for(layer), replay_memory=memory, storage=storage,
                                  epochs=spec["epochs"], seed=SEED)
    shape = tuple(manifest.latent_shape)
    pool = make_pool(device, memory, shape, storage, SEED)
    learner = Learner(back, config, pool)
    rng = np.random.default_rng(SEED)
    for i in range(0, memory, 100):  # the memory as after batch 0: post-ReLU-like patterns, in chunks
        n = min(100, memory - i)
        pool.insert_batch(np.maximum(rng.standard_normal((n,) + shape, dtype=np.float32), 0),
                          rng.integers(0, CLASSES, n), 0)
    frames = _frames(spec["n_new"], seed=2)
    labels = rng.integers(0, CLASSES, spec["n_new"]).astype(np.int64)
    rss_setup = core.rss_mb()

    # -- instrumentation: where the time of a batch goes (engine steps vs the rest) ------------
    timer = StepTimer()
    learner.hooks.append(timer)

    # -- one train step on a new + replayed minibatch (after one warm-up step) ----------------
    plan = plan_minibatches(spec["n_new"], memory, config.minibatch)
    k, r = plan.new_per_mb, plan.replay_per_mb
    x = np.concatenate([front(frames[:k]), pool.gather(np.arange(r))[0]])
    y = np.concatenate([labels[:k], pool.gather(np.arange(r))[1]])
    saved = back.parameters()
    active = learner.active_parameters(1)
    back.configure(active, {n: config.lr(1) for n in active}, config.momentum, config.weight_decay,
                   config.brn_momentum_later)
    one_step: List[float] = []
    for i in range(1 + spec["step_repeats"]):
        t0 = time.perf_counter()
        back.step(x, y, config.brn_r_max, config.brn_d_max)
        if i:
            one_step.append(time.perf_counter() - t0)
    back.load_parameters(saved)  # start the batch from the exported parameters
    back.zero_momentum()
    del x, y

    # -- the incremental batch: front once over the new frames, then the epochs ---------------
    t0 = time.perf_counter()
    latents = np.concatenate([front(frames[j:j + 32]) for j in range(0, len(frames), 32)])
    front_s = time.perf_counter() - t0
    stats = learner.train_batch(latents, labels, 1)
    batch_s = time.perf_counter() - t0
    train_s = batch_s - front_s
    step_times = timer.times
    labels_bytes = pool.capacity * np.dtype(np.int64).itemsize
    scale = pool.scale
    scale_bytes = 0 if scale is None else int(scale.nbytes)
    breakdown = {
        "engine_steps_s": sum(step_times),
        "other_s": train_s - sum(step_times),  # minibatch assembly, CWR*, memory update
    }
    return {
        "layer": layer, "method": config.method, "storage": storage, "device": device,
        "n_new": spec["n_new"], "memory": memory, "epochs": spec["epochs"],
        "iterations": stats["iterations"], "new_per_mb": stats["new_per_mb"], "replay_per_mb": stats["replay_per_mb"],
        "step_s": core.percentiles(one_step or step_times),
        "step_s_source": "separate minibatch after warm-up" if one_step else "the batch's own steps",
        "batch_step_s": core.percentiles(step_times),
        "front_s": front_s, "train_s": train_s, "batch_s": batch_s,
        "breakdown": breakdown,
        "loss": stats["loss"],
        "pool": {"patterns": pool.capacity, "filled": len(pool), "bytes_per_pattern": pool.bytes_per_pattern,
                 "labels_bytes": labels_bytes, "scale_bytes": scale_bytes, "total_bytes": int(pool.nbytes),
                 "analytic_bytes_per_pattern": net.split_cost(layer).bytes_per_pattern(storage),
                 "clipped": int(getattr(pool, "clipped", 0))},
        "rss_after_imports_mb": rss0, "rss_after_setup_mb": rss_setup, "peak_rss_mb": core.peak_rss_mb(),
        "engine": back.name,
        "ort_arena": core.ort_arena_info(back._options),
        "gpu_memory": core.gpu_memory() if device == "cuda" else {"skipped": "--device cpu"},
    }


def worker_torch_front(spec: Dict[str, Any]) -> Dict[str, Any]:
    from . import torch_baseline as tb

    tb.set_threads(spec["threads"])
    res = tb.front_latency(_weights(), spec["layer"], _frames(max(spec["batches"])), spec["iters"], spec["warmup"],
                           spec["batches"], spec["repeats"])
    res["peak_rss_mb"] = core.peak_rss_mb()
    return res


def worker_torch_batch(spec: Dict[str, Any]) -> Dict[str, Any]:
    from . import torch_baseline as tb

    rss0 = core.rss_mb()
    tb.set_threads(spec["threads"])
    rng = np.random.default_rng(SEED)
    frames = _frames(spec["n_new"], seed=2)
    labels = rng.integers(0, CLASSES, spec["n_new"]).astype(np.int64)
    res = tb.incremental_batch(_weights(), spec["layer"], CLASSES, frames, labels, spec["memory"], spec["epochs"],
                               spec["step_repeats"], method=method_for(spec["layer"]), seed=SEED)
    res["rss_after_imports_mb"] = rss0
    return res


WORKERS = {"gemm": worker_gemm, "ours_front": worker_ours_front, "ours_batch": worker_ours_batch,
           "torch_front": worker_torch_front, "torch_batch": worker_torch_batch}


def _worker_entry(spec_path: str, result_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    result = WORKERS[spec["kind"]](spec)
    Path(result_path).write_text(json.dumps(result))
    return 0


def _thread_env(threads: int) -> Dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[key] = str(threads)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_worker(spec: Dict[str, Any], workdir: Path) -> Dict[str, Any]:
    """Run one worker in a fresh interpreter; its result, or {'error': ...}."""
    name = f"{spec['kind']}-{spec.get('layer', '').replace('/', '_')}-{spec.get('storage', '')}"
    spec_path, result_path = workdir / f"{name}.spec.json", workdir / f"{name}.result.json"
    spec_path.write_text(json.dumps(spec))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "latent_replay.bench.run", "--worker", str(spec_path),
                               str(result_path)], env=_thread_env(spec["threads"]), capture_output=True,
                              text=True, timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"worker {name} timed out after {WORKER_TIMEOUT_S} s"}
    if proc.returncode != 0 or not result_path.is_file():
        return {"error": f"worker {name} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"}
    result = json.loads(result_path.read_text())
    result["worker_wall_s"] = time.perf_counter() - t0
    return result


# =============================================================================================
# The parent: plan, collect, derive, print
# =============================================================================================
class BenchArgumentError(CliError, SystemExit):
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
    from ..export.exporter import export
    from ..models.random_init import random_weights
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


def _ok(d: Any) -> bool:
    return isinstance(d, dict) and "error" not in d and "skipped" not in d


def derive(results: Dict[str, Any]) -> None:
    """Ratios ours/PyTorch, achieved MAC rates as fractions of the GEMM rate, pool checks, targets."""
    gemm = results["gemm"].get("macs_per_s") if _ok(results["gemm"]) else None
    derived: Dict[str, Any] = {"front": {}, "batch": {}}
    errors = [f"{k}: {v['error']}" for k, v in _walk(results) if isinstance(v, dict) and "error" in v]
    for layer, entry in results["front"].items():
        cost = net.split_cost(layer)
        d: Dict[str, Any] = {"front_macs_per_frame": cost.front_macs}
        ours, theirs = entry["ours"], entry["torch"]
        if _ok(ours):
            cpu = ours["cpu"]
            if gemm:
                d["mac_rate"] = {b: core.mac_fraction(cost.front_macs * t["batch"], t["seconds_median"], gemm)
                                 for b, t in cpu["throughput"].items()}
            if _ok(theirs):
                d["latency_b1_p50_ratio"] = cpu["latency_b1_s"]["p50"] / theirs["latency_b1_s"]["p50"]
                d["throughput_ratio"] = {b: cpu["throughput"][b]["fps"] / theirs["throughput"][b]["fps"]
                                         for b in cpu["throughput"] if b in theirs["throughput"]}
                d["peak_rss_ratio"] = ours["peak_rss_mb"] / theirs["peak_rss_mb"]
        derived["front"][layer] = d
    for layer, entry in results["batch"].items():
        cost = net.split_cost(layer)
        dl: Dict[str, Any] = {}
        theirs = entry.get("torch")
        for storage, ours in entry.items():
            if storage == "torch" or not _ok(ours):
                continue
            d = {}
            p = ours["pool"]
            d["pool_bytes_consistent"] = p["total_bytes"] == p["patterns"] * p["bytes_per_pattern"] + \
                p["labels_bytes"] + p["scale_bytes"]
            steps = ours["iterations"]
            train_macs = steps * (ours["new_per_mb"] + ours["replay_per_mb"]) * BACK_TRAIN_FACTOR * cost.back_macs
            if gemm:
                d["mac_rate_batch"] = core.mac_fraction(ours["n_new"] * cost.front_macs + train_macs,
                                                        ours["batch_s"], gemm)
                d["mac_rate_step"] = core.mac_fraction(
                    (ours["new_per_mb"] + ours["replay_per_mb"]) * BACK_TRAIN_FACTOR * cost.back_macs,
                    ours["step_s"]["p50"], gemm)
            if _ok(theirs):
                d["batch_time_ratio"] = ours["batch_s"] / theirs["batch_s"]
                d["step_time_ratio"] = ours["step_s"]["p50"] / theirs["step_s"]["p50"]
                d["peak_rss_ratio"] = ours["peak_rss_mb"] / theirs["peak_rss_mb"]
            dl[storage] = d
        if _ok(theirs) and gemm:
            torch_macs = theirs["front_frames"] * cost.front_macs + theirs["iterations"] * \
                (theirs["new_per_mb"] + theirs["replay_per_mb"]) * BACK_TRAIN_FACTOR * cost.back_macs
            dl["torch"] = {"mac_rate_batch": core.mac_fraction(torch_macs, theirs["batch_s"], gemm)}
        if _ok(entry.get("fp32")) and _ok(entry.get("uint8")):
            f, u = entry["fp32"], entry["uint8"]
            dl["uint8_vs_fp32"] = {"pool_bytes_ratio": f["pool"]["total_bytes"] / u["pool"]["total_bytes"],
                                   "pattern_bytes_ratio": f["pool"]["bytes_per_pattern"] / u["pool"]["bytes_per_pattern"],
                                   "batch_time_ratio": u["batch_s"] / f["batch_s"],
                                   "peak_rss_ratio": u["peak_rss_mb"] / f["peak_rss_mb"]}
        derived["batch"][layer] = dl
    derived["targets"] = targets(results, derived)
    derived["errors"] = errors
    results["derived"] = derived


def _walk(d: Dict[str, Any], prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield prefix + k, v
            if "error" not in v:
                yield from _walk(v, prefix + k + ".")


def targets(results: Dict[str, Any], derived: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The issue's targets, each with the figure it is judged on and whether it is met."""
    out: List[Dict[str, Any]] = []
    layer = net.DEFAULT_LATENT_LAYER

    def add(name: str, value: Optional[float], goal: str, met: Optional[bool], why: str = "") -> None:
        out.append({"target": name, "value": value, "goal": goal, "met": met,
                    **({"not_measured": why} if met is None else {})})

    db = derived["batch"].get(layer, {}).get("fp32", {})
    fb = derived["front"].get(layer, {})
    if "batch_time_ratio" in db:
        speedup = 1 / db["batch_time_ratio"]
        add("AR1*-free incremental batch at conv5_4/dw: speed-up over PyTorch", speedup, ">= 2x", speedup >= 2)
        add("AR1*-free incremental batch at conv5_4/dw: peak RSS ours/PyTorch", db["peak_rss_ratio"], "< 1",
            db["peak_rss_ratio"] < 1)
    else:
        add("AR1*-free incremental batch at conv5_4/dw vs PyTorch", None, ">= 2x, lower peak RSS", None,
            "conv5_4/dw or PyTorch not measured")
    if "latency_b1_p50_ratio" in fb:
        speedup = 1 / fb["latency_b1_p50_ratio"]
        add("front conv5_4/dw batch 1 p50: speed-up over PyTorch eager", speedup, ">= 2x", speedup >= 2)
    else:
        add("front conv5_4/dw batch 1 vs PyTorch eager", None, ">= 2x", None, "not measured")
    frac = fb.get("mac_rate", {}).get("32", {}).get("fraction_of_gemm")
    add("front conv5_4/dw batch 32: fraction of the GEMM MAC rate", frac, ">= 0.30",
        None if frac is None else frac >= 0.30, "" if frac is not None else "not measured")
    u = derived["batch"].get(layer, {}).get("uint8_vs_fp32")
    if u:
        add("uint8 pool at conv5_4/dw: pool memory fp32/uint8", u["pool_bytes_ratio"], ">= 4x (patterns; labels "
            "and scales add a little)", u["pattern_bytes_ratio"] >= 4 and u["pool_bytes_ratio"] > 3.5)
        extra = u["batch_time_ratio"] - 1
        add("uint8 pool at conv5_4/dw: extra batch time", extra, "< 5%", extra < 0.05)
    else:
        add("uint8 pool vs fp32", None, "4x less memory, < 5% extra time", None, "fp32 and uint8 not both measured")
    return out


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------
def _f(v: Optional[float], fmt: str = ".2f", scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, fmt)


def table(results: Dict[str, Any]) -> str:
    m = results["machine"]
    g = results["gemm"]
    lines = [f"machine: {m['cpu']}, {m['cores_usable']} usable core(s) of {m['cores_total']}, "
             f"{m['memory_gib']} GiB, SIMD {'/'.join(m['simd']) or '?'}; load avg {m.get('load_average')}",
             f"threads: {results['threads']} (ORT intra-op and torch.set_num_threads); device {results['device']}; "
             f"{'QUICK' if results['quick'] else 'FULL'} mode; medians of repeated runs on a shared machine",
             f"GEMM fp32 (numpy, best of {g.get('repeats', '?')}): "
             + (f"{g['macs_per_s'] / 1e9:.1f} GMAC/s ({g['gflops']:.1f} GFLOP/s)" if _ok(g) else str(g)), ""]
    lines.append("FRONT (CPU provider)      ours p50/p90/p99 ms     torch p50 ms  speed-up  "
                 "ours fps b32  torch fps b32  fps b128  MAC%GEMM b32  peak RSS MiB ours/torch")
    for layer, e in results["front"].items():
        o, t, d = e["ours"], e["torch"], results["derived"]["front"][layer]
        if not _ok(o):
            lines.append(f"{layer:<12} {o}")
            continue
        lat = o["cpu"]["latency_b1_s"]
        tl = t["latency_b1_s"]["p50"] if _ok(t) else None
        sp = 1 / d["latency_b1_p50_ratio"] if "latency_b1_p50_ratio" in d else None
        fps = o["cpu"]["throughput"]
        tf = t["throughput"].get("32", {}).get("fps") if _ok(t) else None
        lines.append(f"{layer:<12} b1 {lat['p50'] * 1e3:>8.2f}/{lat['p90'] * 1e3:.2f}/{lat['p99'] * 1e3:.2f}"
                     f"   {_f(tl, '.2f', 1e3):>10}  {_f(sp, '.2f'):>7}x  {fps['32']['fps']:>12.1f}  {_f(tf, '.1f'):>13}"
                     f"  {_f(fps.get('128', {}).get('fps'), '.1f'):>8}  "
                     f"{_f(d.get('mac_rate', {}).get('32', {}).get('fraction_of_gemm'), '.1%'):>12}"
                     f"  {o['peak_rss_mb']:.0f}/{_f(t.get('peak_rss_mb') if _ok(t) else None, '.0f')}")
        for prov in ("cuda", "tensorrt"):
            if _ok(o.get(prov)):
                pl = o[prov]["latency_b1_s"]
                lines.append(f"{'':<12} {prov}: b1 p50 {pl['p50'] * 1e3:.2f} ms, b32 {o[prov]['throughput']['32']['fps']:.0f} fps,"
                             f" first run (build) {o[prov]['first_run_s']:.1f} s")
            else:
                info = o.get(prov, {})
                lines.append(f"{'':<12} {prov}: " + (f"ERROR: {info['error']}" if "error" in info
                                                      else info.get("skipped", "skipped")))
    lines.append("")
    lines.append("INCREMENTAL BATCH            new+mem x ep  its  front s  train s  batch s  step p50 s  "
                 "MAC%GEMM  pool MiB  B/pattern  peak RSS MiB  vs torch: time  RSS")
    for layer, e in results["batch"].items():
        dl = results["derived"]["batch"][layer]
        for storage, o in e.items():
            if storage == "torch":
                continue
            if not _ok(o):
                lines.append(f"{layer:<11} {storage:<5} {o}")
                continue
            d = dl.get(storage, {})
            lines.append(
                f"{layer:<11} {o['method']:<7} {storage:<5} {o['n_new']:>4}+{o['memory']:<4}x{o['epochs']}  {o['iterations']:>3}"
                f"  {o['front_s']:>7.2f}  {o['train_s']:>7.2f}  {o['batch_s']:>7.2f}  {o['step_s']['p50']:>10.3f}"
                f"  {_f(d.get('mac_rate_batch', {}).get('fraction_of_gemm'), '.1%'):>8}"
                f"  {o['pool']['total_bytes'] / 2 ** 20:>8.1f}  {o['pool']['bytes_per_pattern']:>9}"
                f"  {o['peak_rss_mb']:>12.0f}  {_f(d.get('batch_time_ratio'), '.2f'):>14}  {_f(d.get('peak_rss_ratio'), '.2f')}")
            b = o["breakdown"]
            lines.append(f"{'':<11}   time split: engine steps ({o['engine']}) {b['engine_steps_s']:.2f} s, minibatch "
                         f"assembly + CWR* + memory update {b['other_s']:.3f} s")
        t = e.get("torch")
        if _ok(t):
            frac = dl.get("torch", {}).get("mac_rate_batch", {}).get("fraction_of_gemm")
            lines.append(
                f"{layer:<11} {'PyTorch':<7} {'fp32':<5} {'':>4} {t['iterations']:>3} its"
                f"  {t['front_s']:>7.2f}  {t['batch_s'] - t['front_s']:>7.2f}  {t['batch_s']:>7.2f}"
                f"  {t['step_s']['p50']:>10.3f}  {_f(frac, '.1%'):>8}  {t['memory_bytes'] / 2 ** 20:>8.1f}"
                f"  {'':>9}  {t['peak_rss_mb']:>12.0f}   (front run on new frames every epoch)")
        elif t is not None:
            lines.append(f"{layer:<11} PyTorch: {t.get('skipped') or t.get('error')}")
        u = dl.get("uint8_vs_fp32")
        if u:
            lines.append(f"{'':<11}   uint8 vs fp32: pool {u['pool_bytes_ratio']:.2f}x smaller, batch time x"
                         f"{u['batch_time_ratio']:.3f}, peak RSS x{u['peak_rss_ratio']:.2f}")
    lines.append(f"\nMAC rates: front = front_macs per frame; back training = {BACK_TRAIN_FACTOR} x back_macs per "
                 f"pattern (forward + backward); ratios are ours/PyTorch (time < 1: we are faster).")
    lines.append("")
    lines.append("TARGETS")
    for t in results["derived"]["targets"]:
        status = "n/a" if t["met"] is None else ("MET" if t["met"] else "NOT MET")
        lines.append(f"  [{status:>7}] {t['target']}: {_f(t['value'], '.3f')} (goal {t['goal']})"
                     + (f" -- {t['not_measured']}" if t.get("not_measured") else ""))
    errs = results["derived"]["errors"]
    if errs:
        lines.append("\nERRORS")
        lines += [f"  {e[:500]}" for e in errs]
    lines.append(f"\ntegrastats: {results['tegrastats'].get('line') or results['tegrastats'].get('reason')}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
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
    from ..atomic import write_json_atomic

    check_arguments(args)
    results = benchmark(args, log=lambda msg: print(msg, file=sys.stderr))
    print(table(results))
    path = Path(args.json) if args.json else Path(args.out) / "bench_latency_memory.json"
    write_json_atomic(path, results)
    print(f"\nwrote {path} ({results['wall_s']:.0f} s)")
    return 1 if results["derived"]["errors"] else 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker_entry(argv[1], argv[2])
    p = argparse.ArgumentParser(prog="latent-replay bench", description="latency and memory benchmark")
    add_arguments(p)
    try:
        return command(p.parse_args(argv))
    except CliError as e:
        print(f"latent-replay bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
