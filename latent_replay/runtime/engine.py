"""Open exported artifacts with ONNX Runtime, without PyTorch.

`onnxruntime.training` imports torch when imported as a package; the training classes live in the
C bindings (`onnxruntime.capi._pybind_state`: CheckpointState, Module), which need no torch. The
back's parameters are read and written as numpy arrays so that the runtime can apply update rules
ORT's optimizers cannot express (SGD with momentum and weight decay, SI, CWR* row resets).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import _pybind_state as C
from onnxruntime.capi.onnxruntime_pybind11_state import OrtValueVector

from ..export.manifest import Manifest

ort.set_default_logger_severity(3)


def available_device(requested: str = "auto") -> str:
    """'cuda' when asked for (or 'auto') and the CUDA execution provider is present, else 'cpu'."""
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if requested == "cuda" and not has_cuda:
        raise RuntimeError("--device cuda: this onnxruntime has no CUDA execution provider "
                           "(install the CUDA build: pip install .[gpu])")
    if requested == "auto":
        return "cuda" if has_cuda else "cpu"
    return requested


def session_options(threads: int = 0, spin: bool = True) -> ort.SessionOptions:
    """Session options shared by front and back: full graph optimization, fixed thread count.

    `spin=False` stops ORT's worker threads from busy-waiting between operators: on a CPU shared with
    other work (the decoding threads, a camera loop, other processes) spinning threads steal the
    cores the next operator needs."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def providers_for(device: str) -> List[str]:
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]


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


class Back:
    """The back's ORT training Module with its checkpoint state, parameters as numpy arrays."""

    def __init__(self, directory: Path, manifest: Optional[Manifest] = None, device: str = "auto",
                 threads: int = 0, spin: bool = True) -> None:
        self.directory = Path(directory)
        self.manifest = manifest or Manifest.load(directory)
        self.device = available_device(device)
        self.state = C.load_checkpoint(str(self.manifest.path(directory, "checkpoint")))
        self._ort_device = ort_device = C.OrtDevice(C.OrtDevice.cuda() if self.device == "cuda" else C.OrtDevice.cpu(),
                                 C.OrtDevice.default_memory(), 0)
        self._options = session_options(threads, spin)
        self.module = C.Module(str(self.manifest.path(directory, "training_model")), self.state,
                               str(self.manifest.path(directory, "eval_model")), ort_device, self._options)
        self._params = {name: self.state.get_parameter(name) for name in self.state.parameter_names()}
        self.trainable: List[str] = list(self.manifest.trainable)
        self.carried: List[str] = list(self.manifest.carried)
        self.has_brn = bool(self.manifest.brn_layers)
        self._train_inputs: List[str] = list(self.module.input_names(True))
        self._train_outputs: List[str] = list(self.module.output_names(True))
        self._optimizer = None

    # -- parameters -------------------------------------------------------------------------
    def get(self, name: str) -> np.ndarray:
        """A copy of a parameter (ORT's numpy view would change under the caller's feet)."""
        return self._params[name].data.numpy().copy()

    def set(self, name: str, value: np.ndarray) -> None:
        current = self._params[name].data
        value = np.ascontiguousarray(value, dtype=np.float32)
        if tuple(current.shape()) != value.shape:
            raise ValueError(f"{name}: shape {value.shape} does not match {tuple(current.shape())}")
        self.state.copy_parameter_from(name, ort.OrtValue.ortvalue_from_numpy(value)._ortvalue)

    def grad(self, name: str) -> np.ndarray:
        """The gradient of the last train_step (a view valid until the next step)."""
        return self._params[name].grad.numpy()

    def parameters(self, names: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        return {n: self.get(n) for n in (names if names is not None else self.trainable + self.carried)}

    def load_parameters(self, values: Dict[str, np.ndarray]) -> None:
        for name, value in values.items():
            self.set(name, value)

    # -- steps --------------------------------------------------------------------------------
    def train_step(self, latent: Union[np.ndarray, ort.OrtValue], labels: np.ndarray, r_max: float = 1.0,
                   d_max: float = 0.0) -> Tuple[float, Dict[str, np.ndarray]]:
        """Forward + backward on one minibatch; gradients are left in the state (not applied).

        `latent` may be an OrtValue already on the device (e.g. a minibatch gathered by the CUDA
        replay pool), which is fed without a copy through the host.
        Returns the loss and the batch statistics of every BRN layer ({layer: (mean, var)} flattened
        as '<layer>/batch_mean', '<layer>/batch_var')."""
        feeds = {"latent": latent, "labels": labels.astype(np.int64),
                 "brn_r_max": np.array(r_max, np.float32), "brn_d_max": np.array(d_max, np.float32)}
        inputs = [feeds[name] for name in self._train_inputs]
        fetches = OrtValueVector()
        self.module.lazy_reset_grad()
        if isinstance(latent, ort.OrtValue):
            values = OrtValueVector()
            for value in inputs:
                value = value if isinstance(value, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(value)
                values.push_back(value._ortvalue)
            self.module.train_step_with_ort_values(values, fetches)
        else:
            self.module.train_step(inputs, fetches)
        loss = float(fetches[0].numpy())
        stats = {self._train_outputs[i]: fetches[i].numpy() for i in range(1, len(fetches))}
        return loss, stats

    def sgd_step(self, lr: float) -> None:
        """Apply the current gradients with the artifacts' own optimizer model (plain SGD in ORT).

        The learners use their own update rule (momentum, weight decay, SI); this is the engine's
        native step, kept for users who want ORT's optimizer and to check the artifacts end to end."""
        if self._optimizer is None:
            self._optimizer = C.Optimizer(str(self.manifest.path(self.directory, "optimizer_model")), self.state,
                                          self._ort_device, self._options)
        self._optimizer.set_learning_rate(lr)
        self._optimizer.optimizer_step()

    def logits(self, latent: np.ndarray) -> np.ndarray:
        """Inference with the running statistics (the eval model), sharing the training parameters."""
        fetches = OrtValueVector()
        self.module.eval_step([latent], fetches)
        return fetches[0].numpy()
