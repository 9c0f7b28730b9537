"""Synaptic Intelligence (AR1*): importance of the conv weights, computed once per batch.

During a batch the engine accumulates the trajectory `traj += g * (theta_after - theta_before)` at
every step (g: the gradient of the regularized loss, without weight decay, as in the port) and
applies the importance: "penalty" adds `lambda * F * (theta - theta*)` to the gradient (the
gradient of lambda/2 sum F (theta - theta*)^2); "scale" multiplies the gradient (weight decay
included) by `1 - F / clip`. At the end of the batch this class turns the trajectory into
importance: `omega += c * (-traj) / ((theta_end - theta_start)^2 + xi)`, `F = clip(omega, 0, clip)`,
`theta* = theta_end`. Descent makes g * delta negative, so -traj, omega and F are >= 0 (a negative
omega is clipped to 0). Normalization parameters and the output layer are not regularized.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

import numpy as np

from ...export.format import si_names
from .config import LearnerConfig


class SynapticIntelligence:
    """SI's importance over conv weights (see the module docstring)."""

    KEYS = ("omega", "F", "theta_star", "theta_start")

    def __init__(self, names: Sequence[str], params: Mapping[str, np.ndarray], config: LearnerConfig) -> None:
        self.names = list(names)
        self.config = config
        zeros = {n: np.zeros_like(params[n], dtype=np.float32) for n in self.names}
        self.omega = {n: z.copy() for n, z in zeros.items()}
        self.F = {n: z.copy() for n, z in zeros.items()}
        self.theta_star = {n: np.array(params[n], np.float32) for n in self.names}
        self.theta_start = {n: np.array(params[n], np.float32) for n in self.names}

    # -- the importance (pure numpy) ------------------------------------------------------------
    def begin_batch(self, params: Mapping[str, np.ndarray]) -> None:
        for n in self.names:
            self.theta_start[n][...] = params[n]

    def end_batch(self, params: Mapping[str, np.ndarray], traj: Mapping[str, np.ndarray]) -> None:
        c = self.config
        for n in self.names:
            delta = params[n] - self.theta_start[n]
            self.omega[n] += c.si_c * -traj[n] / (delta * delta + c.si_xi)
            self.F[n] = np.clip(self.omega[n], 0.0, c.si_clip).astype(np.float32)
            self.theta_star[n][...] = params[n]

    def grad_scales(self) -> Dict[str, np.ndarray]:
        """Scale mode: per-weight gradient factors 1 - F / clip (in [0, 1])."""
        return {n: (1.0 - self.F[n] / self.config.si_clip).astype(np.float32) for n in self.names}

    @property
    def penalty_weight(self) -> float:
        """lambda of the penalty (0 in scale mode, where the importance scales the gradient instead)."""
        return float(self.config.si_lambda) if self.config.si_mode == "penalty" else 0.0

    # -- on an engine ---------------------------------------------------------------------------
    def start(self, back: Any) -> None:
        """Give the engine this batch's importance, anchor and gradient scale; empty its trajectory."""
        params = back.parameters(self.names)
        self.begin_batch(params)
        scales = self.grad_scales() if self.config.si_mode == "scale" else None
        for n in self.names:
            s = si_names(n)
            back.set(s["F"], self.F[n])
            back.set(s["theta_star"], self.theta_star[n])
            back.set(s["scale"], scales[n] if scales is not None else np.ones_like(self.F[n]))
            back.set(s["traj"], np.zeros_like(self.F[n]))

    def finish(self, back: Any) -> None:
        """Turn the engine's trajectory of this batch into importance."""
        params = back.parameters(self.names)
        self.end_batch(params, {n: back.get(si_names(n)["traj"]) for n in self.names})

    # -- state ----------------------------------------------------------------------------------
    def state(self) -> Dict[str, np.ndarray]:
        return {f"si/{k}/{n}": getattr(self, k)[n].copy() for k in self.KEYS for n in self.names}

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        for k in self.KEYS:
            target = getattr(self, k)
            for n in self.names:
                target[n] = np.array(arrays[f"si/{k}/{n}"], np.float32)
