"""The optional engine: ONNX Runtime's on-device training artifacts (onnxruntime-training 1.19.2).

Kept because the artifacts serve ORT's C/C++/mobile training APIs, and as an independent
cross-check of the step graph in tests: here ORT computes the loss, gradients and batch statistics
(`training_model.onnx` with its checkpoint) and the update is applied in numpy by the formulas
the step graph implements in ONNX (`export.step_graph`). The checkpoint is kept in sync with the
numpy state after every step, so ORT's eval model sees the current parameters.

`onnxruntime.training` imports torch when imported as a package; the training classes live in the
C bindings (`onnxruntime.capi._pybind_state`: CheckpointState, Module), which need no torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import onnxruntime as ort

from ...export.manifest import Manifest, ManifestError
from ...export.format import momentum_name, si_names
from ...models.graph import BRN_EPS
from .base import BackEngine

TRAINING_HINT = ("the ort-training engine needs onnxruntime-training 1.19.2 instead of onnxruntime "
                 "(a separate virtual environment: see the README's engines section)")


def training_bindings() -> Any:
    """`onnxruntime.capi._pybind_state` when this onnxruntime has the training API, else a clear error."""
    from onnxruntime.capi import _pybind_state as C

    if not hasattr(C, "Module"):
        raise RuntimeError(f"this onnxruntime {ort.__version__} has no training support: {TRAINING_HINT}")
    return C


class OrtTrainingBack(BackEngine):
    """Trains with ORT's training Module (gradients) and a numpy update (see the module docstring)."""

    name = "ort-training"

    def __init__(self, directory: Union[str, Path], manifest: Optional[Manifest] = None, device: str = "auto",
                 threads: int = 0, spin: bool = True) -> None:
        super().__init__(directory, manifest, device, threads, spin)
        if "ort-training" not in self.manifest.engines:
            raise ManifestError(f"{self.directory} has no ORT training artifacts; export with --engine ort-training")
        C = training_bindings()
        from onnxruntime.capi.onnxruntime_pybind11_state import OrtValueVector

        self._vector = OrtValueVector
        self.checkpoint = C.load_checkpoint(str(self.manifest.path(self.directory, "checkpoint")))
        device_type = C.OrtDevice.cuda() if self.device == "cuda" else C.OrtDevice.cpu()
        self.module = C.Module(str(self.manifest.path(self.directory, "training_model")), self.checkpoint,
                               str(self.manifest.path(self.directory, "eval_model")),
                               C.OrtDevice(device_type, C.OrtDevice.default_memory(), 0), self._options)
        self._ort_params = {n: self.checkpoint.get_parameter(n) for n in self.checkpoint.parameter_names()}
        self.state: Dict[str, np.ndarray] = {n: self._ort_params[n].data.numpy().copy()
                                             for n in self.trainable + self.carried}
        for p in self.trainable:
            self.state[momentum_name(p)] = np.zeros_like(self.state[p])
        self._inputs = list(self.module.input_names(True))
        self._outputs = list(self.module.output_names(True))
        self._last_stats: Dict[str, np.ndarray] = {}

    # -- state --------------------------------------------------------------------------------
    def shape(self, name: str) -> Tuple[int, ...]:
        try:
            return tuple(self.state[name].shape)
        except KeyError:
            raise KeyError(f"no state tensor {name!r} in this back") from None

    def get(self, name: str) -> np.ndarray:
        self.shape(name)  # a clear KeyError for an unknown name
        return self.state[name].copy()

    def set(self, name: str, value: np.ndarray) -> None:
        value = self._check_value(name, value)
        self.state[name][...] = value
        if name in self._ort_params:
            self._push(name)

    def _push(self, name: str) -> None:
        self.checkpoint.copy_parameter_from(name, ort.OrtValue.ortvalue_from_numpy(self.state[name])._ortvalue)

    def _add_si_state(self) -> None:
        for p in self.si_params:
            for key in ("F", "theta_star", "scale", "traj"):
                self.state[si_names(p)[key]] = np.zeros_like(self.state[p])

    # -- steps --------------------------------------------------------------------------------
    def step(self, latent: Any, labels: np.ndarray, r_max: float = 1.0, d_max: float = 0.0) -> float:
        feeds = {"latent": latent, "labels": np.asarray(labels, np.int64),
                 "brn_r_max": np.array(r_max, np.float32), "brn_d_max": np.array(d_max, np.float32)}
        fetches = self._vector()
        self.module.lazy_reset_grad()
        if isinstance(latent, ort.OrtValue):
            values = self._vector()
            for name in self._inputs:
                value = feeds[name]
                value = value if isinstance(value, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(value)
                values.push_back(value._ortvalue)
            self.module.train_step_with_ort_values(values, fetches)
        else:
            self.module.train_step([feeds[name] for name in self._inputs], fetches)
        loss = float(fetches[0].numpy())
        self._last_stats = {self._outputs[i]: fetches[i].numpy().copy() for i in range(1, len(fetches))}
        self._update()
        self._running_stats()
        self.steps += 1
        return loss

    def _update(self) -> None:
        """torch.optim.SGD with momentum and weight decay, per-parameter rows of `hyper`, SI penalty
        and trajectory: the formulas of the step graph (`export.step_graph`), in numpy."""
        si = set(self.si_params) if self.si_enabled else set()
        for k, name in enumerate(self.trainable):
            lr, mom, gscale, wd = (float(v) for v in self.hyper[k])
            p = self.state[name]
            g = self._ort_params[name].grad.numpy().astype(np.float32)
            if name in si:
                s = {key: self.state[v] for key, v in si_names(name).items()}
                g = g + np.float32(self.si_lambda) * s["F"] * (p - s["theta_star"])
            d = (g + np.float32(wd) * p) * np.float32(gscale)
            if name in si:
                d = d * s["scale"]
            buf = self.state[momentum_name(name)]
            buf[...] = np.float32(mom) * buf + d
            new = p - np.float32(lr) * buf
            if name in si:
                s["traj"] += g * (new - p)
            p[...] = new
            if lr:
                self._push(name)

    def _running_stats(self) -> None:
        m = np.float32(self.brn_momentum)
        if not m:
            return
        for layer in self.brn_layers:
            mu, sigma = self.state[f"{layer}/running_mean"], self.state[f"{layer}/running_std"]
            mu += m * (self._last_stats[f"{layer}/batch_mean"] - mu)
            sigma += m * (np.sqrt(self._last_stats[f"{layer}/batch_var"] + np.float32(BRN_EPS)) - sigma)
            self._push(f"{layer}/running_mean")
            self._push(f"{layer}/running_std")

    def batch_stats(self) -> Dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._last_stats.items()}

    def logits(self, latent: np.ndarray) -> np.ndarray:
        fetches = self._vector()
        self.module.eval_step([np.ascontiguousarray(latent)], fetches)
        return fetches[0].numpy()
