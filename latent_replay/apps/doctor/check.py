"""The doctor's checks, per latent layer: a small export of seeded random weights, the front on seeded
frames, a few training steps of the step engine on one fixed minibatch, the evaluation; what every
session really runs on (its own `get_providers()`), and the arrays a comparison needs."""
from __future__ import annotations

import math
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
# One SGD setting for every layer: the step graph's whole update (momentum, weight decay, BRN's
# running statistics and clips) is exercised, and a fixed minibatch's loss falls within 3 steps.
LR, MOMENTUM, WEIGHT_DECAY, BRN_MOMENTUM, R_MAX, D_MAX = 0.01, 0.9, 5e-4, 0.01, 1.25, 0.5
TENSORRT_RTOL = 1e-2  # TensorRT's fp32 engines may use TF32 matrix products


@dataclass(frozen=True)
class Settings:
    """What the checks export and train; a comparison needs the same settings on both sides."""

    layers: Tuple[str, ...] = ("pool6", "conv6/dw")
    steps: int = 3
    batch: int = 16
    classes: int = 10
    input_size: int = 64
    seed: int = 0

    def to_json(self) -> Dict[str, Any]:
        return dict(asdict(self), layers=list(self.layers))


def versions() -> Dict[str, str]:
    """Interpreter, numpy, onnxruntime, this package and the machine."""
    import onnxruntime as ort

    from ... import __version__

    return {"latent_replay": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "onnxruntime": ort.__version__, "machine": platform.machine(), "platform": platform.platform()}


def run_checks(settings: Settings, device: str, threads: int, tensorrt: bool,
               log: Any = print) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """Every layer's checks: (the report, the arrays keyed 'LAYER|NAME'). `report['problems']` lists
    what failed (empty: all passed)."""
    import onnxruntime as ort

    report: Dict[str, Any] = {"versions": versions(), "device": device, "threads": threads,
                              "available_providers": ort.get_available_providers(),
                              "settings": settings.to_json(), "layers": {}, "problems": []}
    arrays: Dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="lr-doctor-") as tmp:
        for layer in settings.layers:
            entry, layer_arrays, problems = check_layer(layer, settings, device, threads, Path(tmp), tensorrt)
            report["layers"][layer] = entry
            report["problems"] += [f"{layer}: {p}" for p in problems]
            arrays.update({f"{layer}|{k}": v for k, v in layer_arrays.items()})
            log(describe_layer(layer, entry))
    return report, arrays


def check_layer(layer: str, settings: Settings, device: str, threads: int, tmp: Path,
                tensorrt: bool) -> Tuple[Dict[str, Any], Dict[str, np.ndarray], List[str]]:
    """One layer: export, front, `settings.steps` training steps, evaluation (see the module docstring)."""
    from ...export.exporter import export
    from ...models.random_init import random_weights
    from ...runtime.engine import Back, Front

    rng = np.random.default_rng(settings.seed)
    frames = rng.integers(0, 256, (settings.batch, settings.input_size, settings.input_size, 3), dtype=np.uint8)
    labels = np.arange(settings.batch) % settings.classes
    directory = tmp / layer.replace("/", "_")
    t0 = time.perf_counter()
    weights = random_weights(seed=settings.seed, input_size=settings.input_size)
    export(weights, layer, settings.classes, directory, input_size=settings.input_size)
    entry: Dict[str, Any] = {"export_s": time.perf_counter() - t0}
    front = Front(directory, device=device, threads=threads)
    latents = front(frames)
    back = Back(directory, device=device, threads=threads)
    back.configure(back.trainable, {name: LR for name in back.trainable}, MOMENTUM, WEIGHT_DECAY,
                   BRN_MOMENTUM if back.has_brn else 0.0)
    losses, step_s = [], []
    for _ in range(settings.steps):
        t0 = time.perf_counter()
        losses.append(back.step(latents, labels, R_MAX, D_MAX))
        step_s.append(time.perf_counter() - t0)
    logits = back.logits(latents)
    entry.update(latent_shape=list(latents.shape[1:]), losses=losses, step_ms_median=1e3 * float(np.median(step_s)),
                 providers={"front": front.session.get_providers(), **back.providers()})
    arrays = {"latents": latents, "losses": np.asarray(losses, np.float64), "logits": logits,
              **back.parameters()}
    problems = learning_problems(losses)
    if device == "cuda":
        problems += provider_problems(entry["providers"], CUDA)
    if tensorrt:
        entry["tensorrt"] = tensorrt_front(directory, frames, latents, threads)
        problems += [entry["tensorrt"]["problem"]] if "problem" in entry["tensorrt"] else []
    return entry, arrays, problems


def learning_problems(losses: List[float]) -> List[str]:
    """The steps must give finite losses that fall on their fixed minibatch."""
    if not all(math.isfinite(x) for x in losses):
        return [f"the training steps gave a non-finite loss ({', '.join(f'{x:.4g}' for x in losses)})"]
    if len(losses) > 1 and not losses[-1] < losses[0]:
        return [f"the loss did not fall over {len(losses)} steps on one fixed minibatch "
                f"({losses[0]:.6g} -> {losses[-1]:.6g})"]
    return []


def provider_problems(providers: Dict[str, List[str]], wanted: str) -> List[str]:
    """Sessions that do not run on `wanted` although it was asked for (ONNX Runtime falls back to the
    CPU with only a warning when a provider fails to load: a missing or mismatched cuDNN, say)."""
    return [f"the {role} session runs on {', '.join(found)}, not {wanted} (the provider failed to load: "
            f"check the CUDA/cuDNN libraries this onnxruntime build needs)"
            for role, found in providers.items() if wanted not in found]


def tensorrt_front(directory: Path, frames: np.ndarray, reference: np.ndarray, threads: int) -> Dict[str, Any]:
    """The front on TensorRT (engines cached next to the export): its providers, build time, and its
    latents against the other front's; 'problem' when TensorRT is not really used or disagrees."""
    import onnxruntime as ort

    from ...export.manifest import Manifest
    from ...runtime.engine.session import session_options, tensorrt_providers

    if TENSORRT not in ort.get_available_providers():
        return {"problem": f"--tensorrt: this onnxruntime has no {TENSORRT} "
                           f"({', '.join(ort.get_available_providers())})"}
    cache = directory / "trt_cache"
    cache.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    try:
        session = ort.InferenceSession(str(Manifest.load(directory).path(directory, "front")),
                                       session_options(threads), providers=tensorrt_providers(cache))
        out = session.run(None, {session.get_inputs()[0].name: frames})[0]
    except Exception as e:  # listed but cannot start: no libnvinfer, a version mismatch
        return {"problem": f"the TensorRT front failed: {type(e).__name__}: {e}"}
    result: Dict[str, Any] = {"providers": session.get_providers(), "first_run_s": time.perf_counter() - t0,
                              "max_rel_diff": relative_difference(out, reference)}
    if TENSORRT not in result["providers"]:
        result["problem"] = f"the TensorRT front session runs on {', '.join(result['providers'])}, not {TENSORRT}"
    elif not result["max_rel_diff"] <= TENSORRT_RTOL:
        result["problem"] = (f"the TensorRT front's latents differ from the {reference_device(result)} front's by "
                             f"{result['max_rel_diff']:.2e} of their largest value (tolerance {TENSORRT_RTOL:g})")
    return result


def reference_device(result: Dict[str, Any]) -> str:
    return "CUDA" if CUDA in result["providers"] else "CPU"


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| over the largest |b| (0 for two zero arrays): how far apart, relative to the values' scale."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    return diff / scale if scale > 0 else diff


def describe_layer(layer: str, entry: Dict[str, Any]) -> str:
    """One line per layer: where each session runs, the loss over the steps, the step time."""
    where = "; ".join(f"{role} on {', '.join(p.replace('ExecutionProvider', '') for p in found)}"
                      for role, found in entry["providers"].items())
    losses = entry["losses"]
    line = (f"{layer:<10} export {entry['export_s']:.1f} s; {where}; loss {losses[0]:.4f} -> {losses[-1]:.4f} "
            f"over {len(losses)} steps ({entry['step_ms_median']:.1f} ms a step)")
    trt: Optional[Dict[str, Any]] = entry.get("tensorrt")
    if trt and "providers" in trt:
        line += (f"; TensorRT front on {', '.join(trt['providers'])}, first run {trt['first_run_s']:.1f} s, "
                 f"latents within {trt['max_rel_diff']:.1e}")
    return line
