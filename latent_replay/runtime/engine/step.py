"""The default engine: the exported standard-opset step graph on any onnxruntime (CPU, CUDA, Jetson).

Every state tensor has two buffers on the session's device (OrtValues; on the CPU they wrap numpy
arrays without a copy). Two IOBindings are prepared once: one reads side 0 and writes side 1, the
other the reverse, so each step reads the previous step's outputs with no copy and the host sees
the state only when asked (`get`, `set`: state saves, CWR* once per batch, SI once per batch).
On CUDA the two bindings are also replayed as captured CUDA graphs (`graphs.py`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import onnxruntime as ort

from ...export.manifest import Manifest
from ...export.format import BRN_MOMENTUM, LABELS, LOSS, NEXT, SGD_HYPER, SI_LAMBDA, momentum_name, si_names
from ...models.graph import D_MAX_INPUT, LATENT_INPUT, R_MAX_INPUT
from .base import BackEngine
from .graphs import GraphInputs
from .session import cuda_graphs_wanted, providers_for

SI_STATIC = ("F", "theta_star", "scale")  # SI inputs that the graph reads but does not update


class StepBack(BackEngine):
    """Trains the back with the exported step graph (`back/step.onnx`, `back/step_si.onnx` with SI).

    `cuda_graph`: replay the step as captured CUDA graphs (default: on CUDA with onnxruntime >= 1.18,
    unless LATENT_REPLAY_CUDA_GRAPH=0); True on the CPU runs the same bookkeeping uncaptured."""

    name = "step"

    def __init__(self, directory: Union[str, Path], manifest: Optional[Manifest] = None, device: str = "auto",
                 threads: int = 0, spin: bool = True, cuda_graph: Optional[bool] = None) -> None:
        super().__init__(directory, manifest, device, threads, spin)
        # onnxruntime 1.16-1.18 (not 1.32) computed some steps wrong from the second run of a session
        # on when it replayed the first run's memory pattern with these bound outputs; off, no cost here
        self._options.enable_mem_pattern = False
        # CUDA graphs need every per-step input at a fixed device address, the scalars included
        self.cuda_graph = cuda_graphs_wanted(self.device) if cuda_graph is None else bool(cuda_graph)
        self._graphs: Optional[GraphInputs] = None
        with np.load(self.manifest.path(self.directory, "initial_state"), allow_pickle=False) as z:
            initial = {k: z[k].astype(np.float32) for k in z.files}
        self._shapes: Dict[str, Tuple[int, ...]] = {}
        self._pairs: Dict[str, List[Any]] = {}  # state name -> [side 0, side 1] OrtValues
        self._host: Dict[str, List[np.ndarray]] = {}  # CPU: the numpy arrays behind the OrtValues
        self._statics: Dict[str, Any] = {}  # inputs the step reads and does not update
        self._static_host: Dict[str, np.ndarray] = {}
        self.side = 0
        for name in self.trainable + self.carried:
            self._add_pair(name, initial[name])
        for name in self.trainable:
            self._add_pair(momentum_name(name), np.zeros_like(initial[name]))
        self._add_static(SGD_HYPER, self.hyper)
        self._add_static(SI_LAMBDA, np.array(0.0, np.float32))
        if self.has_brn:
            for name, value in ((BRN_MOMENTUM, 0.0), (R_MAX_INPUT, 1.0), (D_MAX_INPUT, 0.0)):
                self._add_static(name, np.array(value, np.float32), device=None if self.cuda_graph else "cpu")
        self._loss_value, self._loss = self._alloc(np.zeros((), np.float32), None if self.cuda_graph else "cpu")
        self._stats = {}
        for layer in self.brn_layers:
            c = self._shapes[f"{layer}/running_mean"]
            for key in ("batch_mean", "batch_var"):
                self._stats[f"{layer}/{key}"] = self._alloc(np.zeros(c, np.float32))[0]
        self._session: Optional[ort.InferenceSession] = None
        self._bindings: List[Any] = []
        self._eval: Optional[ort.InferenceSession] = None
        self._eval_inputs: List[str] = []

    # -- buffers --------------------------------------------------------------------------------
    def _alloc(self, value: np.ndarray, device: Optional[str] = None) -> Tuple[Any, Optional[np.ndarray]]:
        """(OrtValue, host array behind it or None) holding a copy of `value` on the device."""
        device = device or self.device
        if device == "cpu":
            host = np.array(value, np.float32)
            return ort.OrtValue.ortvalue_from_numpy(host), host
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value, np.float32), device, 0), None

    def _add_pair(self, name: str, value: np.ndarray) -> None:
        self._shapes[name] = tuple(value.shape)
        a, ha = self._alloc(value)
        b, hb = self._alloc(value)
        self._pairs[name] = [a, b]
        if ha is not None:
            self._host[name] = [ha, hb]

    def _add_static(self, name: str, value: np.ndarray, device: Optional[str] = None) -> None:
        self._shapes[name] = tuple(np.shape(value))
        self._statics[name], host = self._alloc(value, device)
        if host is not None:
            self._static_host[name] = host

    def _add_si_state(self) -> None:
        for p in self.si_params:
            zeros = np.zeros(self._shapes[p], np.float32)
            s = si_names(p)
            for key in SI_STATIC:
                self._add_static(s[key], zeros)
            self._add_pair(s["traj"], zeros)
        self._session, self._bindings, self._graphs = None, [], None  # the SI variant of the graph from now on

    def shape(self, name: str) -> Tuple[int, ...]:
        try:
            return self._shapes[name]
        except KeyError:
            raise KeyError(f"no state tensor {name!r} in this back") from None

    def get(self, name: str) -> np.ndarray:
        if name in self._pairs:
            host = self._host.get(name)
            return host[self.side].copy() if host is not None else self._pairs[name][self.side].numpy()
        if name in self._statics:
            host = self._static_host.get(name)
            return host.copy() if host is not None else self._statics[name].numpy()
        raise KeyError(f"no state tensor {name!r} in this back")

    def set(self, name: str, value: np.ndarray) -> None:
        value = self._check_value(name, value)
        if name in self._pairs:
            host, target = self._host.get(name), self._pairs[name][self.side]
            host = host[self.side] if host is not None else None
        elif name in self._statics:
            host, target = self._static_host.get(name), self._statics[name]
        else:
            raise KeyError(f"no state tensor {name!r} in this back")
        if host is not None:
            np.copyto(host, value)
        else:
            target.update_inplace(value)

    def _settings_changed(self) -> None:
        self.set(SGD_HYPER, self.hyper)
        self.set(SI_LAMBDA, np.array(self.si_lambda, np.float32))
        if self.has_brn:
            self._set_scalar(BRN_MOMENTUM, self.brn_momentum)

    def _set_scalar(self, name: str, value: float) -> None:
        """A scalar of the step: on the host (bound as a CPU input) unless CUDA graphs are on."""
        self.set(name, np.array(value, np.float32))

    # -- sessions -------------------------------------------------------------------------------
    def _step_session(self) -> ort.InferenceSession:
        if self._session is None:
            role = "step_si" if self.si_enabled else "step"
            self._session = ort.InferenceSession(str(self.manifest.path(self.directory, role)), self._options,
                                                 providers=providers_for(self.device, self.cuda_graph))
            self._bindings = [self._bind(self._session, side) for side in (0, 1)]
            if self.cuda_graph:
                session = self._session
                self._graphs = GraphInputs(lambda side: self._bind(session, side), self.device)
        return self._session

    def _bind(self, session: ort.InferenceSession, side: int) -> Any:
        """An IOBinding that reads the state of `side` and writes the next state into the other side."""
        io = session.io_binding()
        inputs = {i.name for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        for name, pair in self._pairs.items():
            if name in inputs:
                io.bind_ortvalue_input(name, pair[side])
                io.bind_ortvalue_output(name + NEXT, pair[1 - side])
        for name, value in self._statics.items():
            if name in inputs:
                io.bind_ortvalue_input(name, value)
        io.bind_ortvalue_output(LOSS, self._loss_value)
        for name, value in self._stats.items():
            if name in outputs:
                io.bind_ortvalue_output(name, value)
        return io

    # -- steps --------------------------------------------------------------------------------
    def step(self, latent: Any, labels: np.ndarray, r_max: float = 1.0, d_max: float = 0.0) -> float:
        self._step_session()
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        if self.has_brn:
            self._set_scalar(R_MAX_INPUT, r_max)
            self._set_scalar(D_MAX_INPUT, d_max)
        graph = self._graphs.binding(self.side, latent, labels) if self._graphs is not None else None
        if graph is not None:
            io, options = graph
        else:
            io = self._bindings[self.side]
            options = self._graphs.uncaptured if self._graphs is not None else None
            if isinstance(latent, ort.OrtValue):
                io.bind_ortvalue_input(LATENT_INPUT, latent)
            else:
                io.bind_cpu_input(LATENT_INPUT, np.ascontiguousarray(latent))
            io.bind_cpu_input(LABELS, labels)
        self._session.run_with_iobinding(io, options)  # type: ignore[union-attr]
        self.side = 1 - self.side
        self.steps += 1
        return float(self._loss) if self._loss is not None else float(self._loss_value.numpy())

    def providers(self) -> Dict[str, List[str]]:
        sessions = {"step": self._session, "eval": self._eval}
        return {role: session.get_providers() for role, session in sessions.items() if session is not None}

    def batch_stats(self) -> Dict[str, np.ndarray]:
        return {name: value.numpy() for name, value in self._stats.items()}

    def logits(self, latent: np.ndarray) -> np.ndarray:
        if self._eval is None:
            self._eval = ort.InferenceSession(str(self.manifest.path(self.directory, "eval")), self._options,
                                              providers=providers_for(self.device))
            self._eval_inputs = [i.name for i in self._eval.get_inputs() if i.name != LATENT_INPUT]
        io = self._eval.io_binding()
        io.bind_cpu_input(LATENT_INPUT, np.ascontiguousarray(latent))
        for name in self._eval_inputs:
            io.bind_ortvalue_input(name, self._pairs[name][self.side])
        io.bind_output(self._eval.get_outputs()[0].name, "cpu")
        self._eval.run_with_iobinding(io)
        return io.copy_outputs_to_cpu()[0]
