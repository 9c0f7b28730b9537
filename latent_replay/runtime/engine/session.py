"""ONNX Runtime sessions shared by every engine: device choice, session options, the frozen front."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import onnxruntime as ort

from ...export.manifest import Manifest

ort.set_default_logger_severity(3)


def available_device(requested: str = "auto") -> str:
    """'cuda' when asked for (or 'auto') and the CUDA execution provider is present, else 'cpu'."""
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if requested == "cuda" and not has_cuda:
        raise RuntimeError("--device cuda: this onnxruntime has no CUDA execution provider; install onnxruntime-gpu "
                           "in its place (pip install \".[gpu]\", see the README's GPU notes) or use --device cpu")
    if requested == "auto":
        return "cuda" if has_cuda else "cpu"
    if requested not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {requested!r}; choose auto, cpu or cuda")
    return requested


def session_options(threads: int = 0, spin: bool = True) -> ort.SessionOptions:
    """Session options shared by front and back: full graph optimization, fixed thread count.

    `spin=False` stops ORT's worker threads from busy-waiting between operators: on a CPU shared with
    other work (the decoding threads, a camera loop, other processes) spinning threads steal the
    cores the next operator needs."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.set_denormal_as_zero", "1")  # no slow denormal arithmetic
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


CUDA_GRAPH_MIN_ORT = (1, 18)  # run option gpu_graph_id: one captured graph per annotation


def ort_version() -> Tuple[int, int]:
    """(major, minor) of the installed onnxruntime."""
    parts = ort.__version__.split(".")
    return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)


def cuda_graphs_wanted(device: str) -> bool:
    """Whether training steps on `device` are captured as CUDA graphs: on CUDA with onnxruntime >= 1.18
    (older ones capture one graph per session and cannot skip it for another batch size), unless
    LATENT_REPLAY_CUDA_GRAPH=0."""
    return (device == "cuda" and os.environ.get("LATENT_REPLAY_CUDA_GRAPH", "1") != "0"
            and ort_version() >= CUDA_GRAPH_MIN_ORT)


def providers_for(device: str, cuda_graph: bool = False) -> List[Any]:
    """Execution providers for `device`. On CUDA, matrix products use TF32 (the provider's default);
    LATENT_REPLAY_CUDA_TF32=0 asks for exact fp32 (provider option `use_tf32`, onnxruntime >= 1.17).
    `cuda_graph` turns on the provider's graph capture (`enable_cuda_graph`)."""
    if device != "cuda":
        return ["CPUExecutionProvider"]
    options: Dict[str, str] = {}
    if os.environ.get("LATENT_REPLAY_CUDA_TF32", "1") == "0":
        options["use_tf32"] = "0"
    if cuda_graph:
        options["enable_cuda_graph"] = "1"
    return [("CUDAExecutionProvider", options) if options else "CUDAExecutionProvider", "CPUExecutionProvider"]


def tensorrt_providers(cache_dir: Path) -> List[Any]:
    """TensorRT first, its engines cached in `cache_dir` (a second session reuses them instead of
    building them again), then CUDA and the CPU for whatever TensorRT leaves."""
    return [("TensorrtExecutionProvider", {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir)}),
            "CUDAExecutionProvider", "CPUExecutionProvider"]


class Front:
    """The frozen front as an InferenceSession: uint8 NHWC frames -> latents."""

    def __init__(self, directory: Path, manifest: Optional[Manifest] = None, device: str = "auto",
                 threads: int = 0, spin: bool = True) -> None:
        self.manifest = manifest or Manifest.load(directory)
        self.device = available_device(device)
        self.session = ort.InferenceSession(str(self.manifest.path(directory, "front")),
                                            session_options(threads, spin), providers=providers_for(self.device))
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        size = self.manifest.input["size"]
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (size, size, 3):
            raise ValueError(f"the front takes uint8 frames of shape (N, {size}, {size}, 3), got "
                             f"{frames.dtype} {frames.shape}")
        return self.session.run([self.output_name], {self.input_name: frames})[0]
