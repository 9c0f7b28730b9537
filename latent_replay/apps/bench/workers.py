"""The benchmark's measurements, each run in a fresh interpreter (a *worker*) so that peak RSS figures
do not mix: `python -m latent_replay.apps.bench.workers --worker SPEC.json RESULT.json`.

- gemm:        the machine's dense float32 GEMM rate through numpy (the physical limit);
- ours_front:  front latency at batch 1 (p50/p90/p99) and throughput at batch 32/128, CPU provider,
               CUDA and TensorRT providers when present (TensorRT engine build timed separately);
- ours_batch:  one train step on a new+replayed minibatch and one whole NICv2-391 incremental
               batch (front once over the new frames, then the epochs with the replay memory) through
               `Learner`, per latent layer, pool storage and engine (the step graph, or
               onnxruntime-training when run by an interpreter that has it), with the engine's share;
- export:      the artifacts written by this interpreter's onnxruntime (for the ORT-training engine);
- torch_front, torch_batch: the same in eager PyTorch (`torch_baseline.py`; the batch in one of
               its variants).

Every side trains on the same data (`data.py`), so their results are compared, not only their times.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ...models import mobilenet_v1 as net
from . import data, probes as core
from .data import CLASSES, SEED

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


def _frames(n: int, seed: int = 1) -> np.ndarray:
    from ...models.random_init import calibration_frames

    return calibration_frames(np.random.default_rng(seed), n, net.DEFAULT_INPUT_SIZE)


def bench_weights(width: float = 1.0):
    """The benchmark's network: seeded random weights at `width` (speed does not depend on the values)."""
    from ...models.random_init import random_weights

    return random_weights(SEED, classes=CLASSES, arch=net.Architecture(width))


def _weights(spec: Dict[str, Any]):
    return bench_weights(spec.get("width", 1.0))


def worker_gemm(spec: Dict[str, Any]) -> Dict[str, Any]:
    return core.gemm_rate(sizes=(1024, 2048), repeats=spec["repeats"])


def worker_ours_front(spec: Dict[str, Any]) -> Dict[str, Any]:
    import onnxruntime as ort

    from ...runtime.engine import Front

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

    from ...export.manifest import Manifest
    from ...runtime.engine.session import session_options, tensorrt_providers

    directory = Path(spec["artifacts"])
    path = str(Manifest.load(directory).path(directory, "front"))
    try:
        if provider == "TensorrtExecutionProvider":
            cache = directory / "trt_cache"
            cache.mkdir(exist_ok=True)
            providers: List[Any] = tensorrt_providers(cache)
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


def _open_learner(spec: Dict[str, Any]):
    """Front, back (the spec's engine), a pool filled as after batch 0, and the learner on them."""
    from ...export.manifest import Manifest
    from ...runtime.engine import Back, Front
    from ...runtime.learn import Learner, LearnerConfig
    from ...runtime.replay import make_pool

    directory = Path(spec["artifacts"])
    manifest = Manifest.load(directory)
    options = {"device": spec["device"], "threads": spec["threads"], "spin": spec["spin"]}
    front = Front(directory, manifest, **options)
    back = Back(directory, manifest, engine=spec.get("engine", "step"), **options)
    config = LearnerConfig.preset("pytorch", method=method_for(spec["layer"]), replay_memory=spec["memory"],
                                  storage=spec["storage"], epochs=spec["epochs"], seed=SEED)
    pool = make_pool(spec["device"], spec["memory"], tuple(manifest.latent_shape), spec["storage"], SEED)
    data.fill_pool(pool, manifest.latent_shape, spec["memory"])
    return front, back, Learner(back, config, pool), pool


def _warm_steps(learner: Any, front: Any, frames: np.ndarray, labels: np.ndarray, repeats: int) -> List[float]:
    """One warm-up step on a new + replayed minibatch (sessions created, first-run allocations
    made), then `repeats` timed ones; the back is put back to its exported state afterwards."""
    from ...runtime.learn.replay import plan_minibatches

    back, pool, config = learner.back, learner.pool, learner.config
    plan = plan_minibatches(len(frames), len(pool), config.minibatch)
    k, r = plan.new_per_mb, plan.replay_per_mb
    replayed, replayed_labels = pool.gather(np.arange(r))
    x, y = np.concatenate([front(frames[:k]), replayed]), np.concatenate([labels[:k], replayed_labels])
    saved = back.parameters()
    active = learner.active_parameters(1)
    back.configure(active, {n: config.lr(1) for n in active}, config.momentum, config.weight_decay,
                   config.brn_momentum_later)
    times: List[float] = []
    for i in range(1 + repeats):
        t0 = time.perf_counter()
        back.step(x, y, config.brn_r_max, config.brn_d_max)
        if i:
            times.append(time.perf_counter() - t0)
    back.load_parameters(saved)  # the batch starts from the exported parameters
    back.zero_momentum()
    return times


def _pool_figures(pool: Any, layer: str, storage: str, width: float) -> Dict[str, Any]:
    scale = pool.scale
    return {"patterns": pool.capacity, "filled": len(pool), "bytes_per_pattern": pool.bytes_per_pattern,
            "labels_bytes": pool.capacity * np.dtype(np.int64).itemsize,
            "scale_bytes": 0 if scale is None else int(scale.nbytes), "total_bytes": int(pool.nbytes),
            "analytic_bytes_per_pattern": net.split_cost(layer, arch=net.Architecture(width)).bytes_per_pattern(storage),
            "clipped": int(getattr(pool, "clipped", 0))}


def worker_ours_batch(spec: Dict[str, Any]) -> Dict[str, Any]:
    """One step, then one whole incremental batch (index 1: a later batch) through `Learner`, with
    the spec's engine ("step", or "ort-training" in an interpreter with onnxruntime-training)."""
    import onnxruntime as ort

    from ...runtime.learn.hooks import StepTimer

    os.environ.update(spec.get("env", {}))  # engine switches (CUDA variants), read when sessions open
    rss0 = core.rss_mb()
    front, back, learner, pool = _open_learner(spec)
    frames, labels = data.new_frames(spec["n_new"])
    rss_setup = core.rss_mb()
    one_step = _warm_steps(learner, front, frames, labels, spec["step_repeats"])
    timer = StepTimer()  # where the time of a batch goes: engine steps vs the rest
    learner.hooks.append(timer)

    # -- the incremental batch: front once over the new frames, then the epochs ---------------
    t0 = time.perf_counter()
    latents = np.concatenate([front(frames[j:j + 32]) for j in range(0, len(frames), 32)])
    front_s = time.perf_counter() - t0
    stats = learner.train_batch(latents, labels, 1)
    batch_s = time.perf_counter() - t0
    train_s = batch_s - front_s
    steps = timer.times
    return {
        "layer": spec["layer"], "method": learner.config.method, "storage": spec["storage"],
        "device": spec["device"], "engine": back.name, "versions": {"onnxruntime": ort.__version__},
        "cuda_graph": bool(getattr(back, "cuda_graph", False)),
        "tf32": spec["device"] == "cuda" and os.environ.get("LATENT_REPLAY_CUDA_TF32", "1") != "0",
        "n_new": spec["n_new"], "memory": spec["memory"], "epochs": spec["epochs"], "front_frames": spec["n_new"],
        "iterations": stats["iterations"], "new_per_mb": stats["new_per_mb"], "replay_per_mb": stats["replay_per_mb"],
        "step_s": core.percentiles(one_step or steps),
        "step_s_source": "separate minibatch after warm-up" if one_step else "the batch's own steps",
        "batch_step_s": core.percentiles(steps),
        "front_s": front_s, "train_s": train_s, "batch_s": batch_s,
        "breakdown": {"engine_steps_s": sum(steps),
                      "other_s": train_s - sum(steps)},  # minibatch assembly, CWR*, memory update
        "loss": stats["loss"],
        "head_fingerprint": data.fingerprint(back.get(learner.head)),
        "trained_parameters": int(sum(np.prod(back.shape(n)) for n in learner.active_parameters(1))),
        "pool": _pool_figures(pool, spec["layer"], spec["storage"], spec.get("width", 1.0)),
        "rss_after_imports_mb": rss0, "rss_after_setup_mb": rss_setup, "peak_rss_mb": core.peak_rss_mb(),
        "ort_arena": core.ort_arena_info(back._options),
        "gpu_memory": core.gpu_memory() if spec["device"] == "cuda" else {"skipped": "--device cpu"},
    }


def worker_export(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Export the artifacts of every layer for `spec["engines"]` with this interpreter's
    onnxruntime (the ORT training artifacts need onnxruntime-training)."""
    import onnxruntime as ort

    from ...export.exporter import export

    weights = _weights(spec)
    out = {}
    for layer in spec["layers"]:
        directory = Path(spec["out"]) / ("art-" + layer.replace("/", "_"))
        export(weights, layer, CLASSES, directory, engines=spec["engines"])
        out[layer] = str(directory)
    return {"artifacts": out, "versions": {"onnxruntime": ort.__version__, "python": sys.version.split()[0]}}


def worker_torch_front(spec: Dict[str, Any]) -> Dict[str, Any]:
    from . import torch_baseline as tb

    tb.set_threads(spec["threads"])
    res = tb.front_latency(_weights(spec), spec["layer"], _frames(max(spec["batches"])), spec["iters"], spec["warmup"],
                           spec["batches"], spec["repeats"])
    res["peak_rss_mb"] = core.peak_rss_mb()
    return res


def worker_torch_batch(spec: Dict[str, Any]) -> Dict[str, Any]:
    from . import torch_baseline as tb

    rss0 = core.rss_mb()
    tb.set_threads(spec["threads"])
    frames, labels = data.new_frames(spec["n_new"])
    res = tb.incremental_batch(_weights(spec), spec["layer"], CLASSES, frames, labels, spec["memory"], spec["epochs"],
                               spec["step_repeats"], variant=spec["variant"], method=method_for(spec["layer"]),
                               seed=SEED)
    res["rss_after_imports_mb"] = rss0
    return res


WORKERS = {"gemm": worker_gemm, "ours_front": worker_ours_front, "ours_batch": worker_ours_batch,
           "export": worker_export, "torch_front": worker_torch_front, "torch_batch": worker_torch_batch}


def _worker_entry(spec_path: str, result_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    result = WORKERS[spec["kind"]](spec)
    Path(result_path).write_text(json.dumps(result))
    return 0


def package_env() -> Dict[str, str]:
    """This environment with this package first on PYTHONPATH (for workers run by another interpreter)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _thread_env(threads: int) -> Dict[str, str]:
    env = package_env()
    for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[key] = str(threads)
    return env


def run_worker(spec: Dict[str, Any], workdir: Path, python: Optional[str] = None) -> Dict[str, Any]:
    """Run one worker in a fresh interpreter (`python`, default this one); its result, or {'error': ...}."""
    parts = [spec["kind"], spec.get("layer", "").replace("/", "_"), spec.get("storage", ""),
             spec.get("engine", ""), spec.get("variant", ""), f"t{spec['threads']}"]
    name = "-".join(p for p in parts if p)
    spec_path, result_path = workdir / f"{name}.spec.json", workdir / f"{name}.result.json"
    spec_path.write_text(json.dumps(spec))
    load = _load()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([python or sys.executable, "-m", "latent_replay.apps.bench.workers", "--worker",
                               str(spec_path), str(result_path)], env=_thread_env(spec["threads"]),
                              capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"worker {name} timed out after {WORKER_TIMEOUT_S} s"}
    if proc.returncode != 0 or not result_path.is_file():
        return {"error": f"worker {name} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"}
    result = json.loads(result_path.read_text())
    result["worker_wall_s"] = time.perf_counter() - t0
    result["load_average_1m"] = [load, _load()]  # before and after: other work on a shared machine shows here
    return result


def _load() -> Optional[float]:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["--worker"] or len(argv) != 3:
        print("usage: python -m latent_replay.apps.bench.workers --worker SPEC.json RESULT.json", file=sys.stderr)
        return 2
    return _worker_entry(argv[1], argv[2])


if __name__ == "__main__":
    sys.exit(main())
