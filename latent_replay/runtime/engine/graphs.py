"""CUDA-graph replay of the training step (onnxruntime's `enable_cuda_graph`, run option `gpu_graph_id`).

A captured graph replays its kernels on the device addresses it was captured with. The step engine
alternates two bindings (side 0 reads state A and writes B, side 1 the reverse), so each side gets a
graph of its own (ids 1 and 2) and its own minibatch and label buffers at fixed addresses, for one
batch size: the first one trained. A host minibatch is copied into them; a device minibatch (the
CUDA pool's, which keeps one tensor per size) is bound on first use and replayed while it is the same
tensor. Every other step (another batch size, another device tensor) runs uncaptured (`gpu_graph_id`
-1) through the ordinary bindings, so a graph never reads a stale address.

On the CPU the same bookkeeping runs with the run option ignored, which is how it is tested there.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import onnxruntime as ort

from ...export.format import LABELS, LATENT_INPUT

GRAPH_RUN_OPTION = "gpu_graph_id"


def run_options(graph_id: int) -> ort.RunOptions:
    """RunOptions that replay (capturing on first use) graph `graph_id`, or run uncaptured with -1."""
    options = ort.RunOptions()
    options.add_run_config_entry(GRAPH_RUN_OPTION, str(graph_id))
    return options


class _Slot:
    """One side's binding with its fixed-address minibatch and label tensors."""

    def __init__(self, io: Any, latent: Any, labels: Any, owned: bool) -> None:
        self.io, self.latent, self.labels, self.owned = io, latent, labels, owned


class GraphInputs:
    """Chooses, per step, a captured-graph binding with the step's inputs in place, or none."""

    def __init__(self, bind: Callable[[int], Any], device: str) -> None:
        self._bind = bind  # side -> a new IOBinding with the state, statistics and loss bound
        self._device = device
        self.rows: Optional[int] = None  # the batch size the graphs are captured for
        self._slots: List[Optional[_Slot]] = [None, None]
        self._options = [run_options(1), run_options(2)]
        self.uncaptured = run_options(-1)
        self.replays = 0  # steps run through a graph binding

    def _value(self, host: np.ndarray) -> Any:
        host = np.array(host)  # a copy the OrtValue owns (on the CPU it wraps this array)
        if self._device == "cpu":
            return ort.OrtValue.ortvalue_from_numpy(host)
        return ort.OrtValue.ortvalue_from_numpy(host, self._device, 0)

    def binding(self, side: int, latent: Any, labels: np.ndarray) -> Optional[Tuple[Any, ort.RunOptions]]:
        """(IOBinding, RunOptions) for this step through graph `side + 1`, or None: run it uncaptured."""
        rows = len(labels)
        if self.rows is None:
            self.rows = rows
        if rows != self.rows:
            return None
        on_device = isinstance(latent, ort.OrtValue)
        slot = self._slots[side]
        if slot is None:
            io = self._bind(side)
            value = latent if on_device else self._value(np.ascontiguousarray(latent))
            slot = self._slots[side] = _Slot(io, value, self._value(labels), owned=not on_device)
            io.bind_ortvalue_input(LATENT_INPUT, slot.latent)
            io.bind_ortvalue_input(LABELS, slot.labels)
        else:
            if on_device:
                if slot.owned or latent.data_ptr() != slot.latent.data_ptr():
                    return None
            else:
                latent = np.ascontiguousarray(latent)
                if not slot.owned or latent.shape != tuple(slot.latent.shape()):
                    return None
                slot.latent.update_inplace(latent)
            slot.labels.update_inplace(labels)
        self.replays += 1
        return slot.io, self._options[side]
