"""The interface every back engine offers the learners: named state, one training step, logits.

A training step is the whole update, wherever it runs: forward with Batch Renormalization, loss,
backward, SGD with momentum and weight decay on the active parameters, the running statistics'
exponential average and, with SI on, the SI penalty and trajectory. The learner sets what changes
per batch (`configure`, CWR*'s head rows, SI's importance) and reads state only when it needs it.

State tensors are addressed by name:
- `<layer>/weight|gamma|beta`, `mid_fc7/weight`: trainable parameters (`trainable`);
- `<layer>/running_mean|running_std`: Batch Renormalization's carried statistics (`carried`);
- `momentum/<param>`: SGD momentum buffers;
- `si/F|theta_star|scale|traj/<conv weight>`: Synaptic Intelligence's importance, anchor, gradient
  scale and per-batch trajectory (after `enable_si`).
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ...export.manifest import Manifest
from ...export.format import HYPER_COLUMNS, momentum_name, si_names
from .session import available_device, session_options

FROZEN_ROW = (0.0, 1.0, 0.0, 0.0)  # lr 0, momentum 1, grad scale 0: parameter and momentum untouched


class BackEngine(abc.ABC):
    """The back above the latent layer, trainable step by step (see the module docstring)."""

    name = "base"

    def __init__(self, directory: Union[str, Path], manifest: Optional[Manifest] = None, device: str = "auto",
                 threads: int = 0, spin: bool = True) -> None:
        self.directory = Path(directory)
        self.manifest = manifest or Manifest.load(self.directory)
        self.device = available_device(device)
        self._options = session_options(threads, spin)
        self.trainable: List[str] = list(self.manifest.trainable)
        self.carried: List[str] = list(self.manifest.carried)
        self.brn_layers: List[str] = list(self.manifest.brn_layers)
        self.si_params: List[str] = list(self.manifest.si_params)
        self.head = self.manifest.head
        self.has_brn = bool(self.brn_layers)
        self.si_enabled = False
        self.hyper = np.tile(np.asarray(FROZEN_ROW, np.float32), (len(self.trainable), 1))
        self.brn_momentum = 0.0
        self.si_lambda = 0.0
        self.steps = 0  # training steps run by this engine

    # -- names --------------------------------------------------------------------------------
    def state_names(self) -> List[str]:
        """Every state tensor, in a fixed order."""
        names = list(self.trainable) + [momentum_name(p) for p in self.trainable] + list(self.carried)
        if self.si_enabled:
            names += [si_names(p)[key] for p in self.si_params for key in ("F", "theta_star", "scale", "traj")]
        return names

    # -- state --------------------------------------------------------------------------------
    @abc.abstractmethod
    def get(self, name: str) -> np.ndarray:
        """A host copy of a state tensor."""

    @abc.abstractmethod
    def set(self, name: str, value: np.ndarray) -> None:
        """Overwrite a state tensor (same shape)."""

    def parameters(self, names: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        """Host copies of the trainable parameters and carried statistics (or of `names`)."""
        return {n: self.get(n) for n in (names if names is not None else self.trainable + self.carried)}

    def load_parameters(self, values: Mapping[str, np.ndarray]) -> None:
        for name, value in values.items():
            self.set(name, value)

    def zero_momentum(self) -> None:
        """Forget the momentum (as creating a new torch optimizer does)."""
        for p in self.trainable:
            self.set(momentum_name(p), np.zeros(self.shape(p), np.float32))

    @abc.abstractmethod
    def shape(self, name: str) -> Tuple[int, ...]:
        """Shape of a state tensor."""

    def _check_value(self, name: str, value: Any) -> np.ndarray:
        value = np.asarray(value, dtype=np.float32)  # (ascontiguousarray would make a 0-d value 1-d)
        if not value.flags.c_contiguous:
            value = value.copy()
        shape = self.shape(name)
        if value.shape != shape:
            raise ValueError(f"{name}: shape {value.shape} does not match {shape}")
        return value

    # -- update settings ------------------------------------------------------------------------
    def configure(self, active: Iterable[str], lr: Mapping[str, float], momentum: float, weight_decay: float,
                  brn_momentum: float, si_lambda: float = 0.0) -> None:
        """How the next steps update the back: `active` parameters get SGD with their `lr`; the
        others are frozen (parameter and momentum untouched); running statistics move at
        `brn_momentum`; SI's penalty weight is `si_lambda` (with SI enabled)."""
        active = set(active)
        unknown = sorted(active - set(self.trainable))
        if unknown:
            raise ValueError(f"unknown parameters {', '.join(unknown)}")
        table = np.tile(np.asarray(FROZEN_ROW, np.float32), (len(self.trainable), 1))
        for k, name in enumerate(self.trainable):
            if name in active:
                table[k] = (lr[name], momentum, 1.0, weight_decay)
        assert table.shape[1] == len(HYPER_COLUMNS)
        self.hyper = table
        self.brn_momentum = float(brn_momentum)
        self.si_lambda = float(si_lambda)
        self._settings_changed()

    def _settings_changed(self) -> None:
        """Hook: push `hyper`, `brn_momentum`, `si_lambda` to where the step reads them."""

    def enable_si(self) -> None:
        """Add SI's state (importance 0, gradient scale 1, empty trajectory) and train with it."""
        if self.si_enabled:
            return
        self.si_enabled = True
        self._add_si_state()
        for p in self.si_params:
            s = si_names(p)
            self.set(s["theta_star"], self.get(p))
            self.set(s["scale"], np.ones(self.shape(p), np.float32))

    @abc.abstractmethod
    def _add_si_state(self) -> None:
        """Allocate the si/* tensors (zero-filled)."""

    # -- steps --------------------------------------------------------------------------------
    @abc.abstractmethod
    def step(self, latent: Any, labels: np.ndarray, r_max: float = 1.0, d_max: float = 0.0) -> float:
        """One training step on a minibatch (numpy, or an OrtValue already on the device); returns the loss."""

    @abc.abstractmethod
    def batch_stats(self) -> Dict[str, np.ndarray]:
        """Batch mean and biased variance of every BRN layer in the last step ('<layer>/batch_mean|var')."""

    @abc.abstractmethod
    def logits(self, latent: np.ndarray) -> np.ndarray:
        """Inference with the running statistics."""

    def providers(self) -> Dict[str, List[str]]:
        """The execution providers each ONNX Runtime session opened so far really runs on (the sessions'
        own `get_providers()`: a provider that failed to load is missing there, while
        `onnxruntime.get_available_providers()` still lists it); empty where the engine has none."""
        return {}
