"""Engines that run the exported artifacts with ONNX Runtime: the frozen front and the trainable back.

`Back(...)` opens the back with the engine asked for: `step` (default; the exported standard-opset
step graph on any onnxruntime) or `ort-training` (ORT's training artifacts; needs
onnxruntime-training). Both offer `BackEngine`'s interface, so learners do not depend on the choice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from ...export.manifest import ENGINES, Manifest
from .base import BackEngine
from .session import Front, available_device, providers_for, session_options


DEFAULT_ENGINE = "step"

__all__ = ["Back", "BackEngine", "ENGINES", "DEFAULT_ENGINE", "Front", "available_device", "providers_for",
           "session_options"]


def Back(directory: Union[str, Path], manifest: Optional[Manifest] = None, device: str = "auto", threads: int = 0,
         spin: bool = True, engine: str = DEFAULT_ENGINE, cuda_graph: Optional[bool] = None) -> BackEngine:
    """The trainable back of the artifacts in `directory`, run by `engine`. `cuda_graph`: the step
    engine's CUDA-graph replay (None: its default; see `StepBack`)."""
    if engine == "step":
        from .step import StepBack

        return StepBack(directory, manifest, device, threads, spin, cuda_graph)
    if engine == "ort-training":
        from .ort_training import OrtTrainingBack

        return OrtTrainingBack(directory, manifest, device, threads, spin)
    raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
