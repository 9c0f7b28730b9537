"""Batch Renormalization's schedule: r_max, d_max and the running-statistics rate, step by step."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

from .config import LearnerConfig


class BrnSchedule:
    """r_max, d_max and the EMA rate of the running statistics, iteration by iteration.

    PyTorch ramp (port's BatchRenorm2D): on the first batch r_max/d_max start at 1/0 and after every
    training forward grow by `step * minibatch` while below their first-batch values (the port does
    not clamp, so the last increment may overshoot by less than one step). Caffe ramp: plain BN
    (1/0) for `warmup` iterations, then linear up to the first-batch values at `ramp_end`.
    Later batches: constant `brn_r_max`/`brn_d_max`.
    """

    def __init__(self, config: LearnerConfig) -> None:
        self.config = config
        self.r_max, self.d_max = 1.0, 0.0
        self.iteration = 0
        self.momentum = config.brn_momentum_first
        self.ramping = True

    def begin_batch(self, batch_index: int) -> None:
        c = self.config
        if batch_index == 0:
            self.r_max, self.d_max, self.iteration, self.ramping = 1.0, 0.0, 0, True
            self.momentum = c.brn_momentum_first
        else:
            self.r_max, self.d_max, self.ramping = c.brn_r_max, c.brn_d_max, False
            self.momentum = c.brn_momentum_later

    def current(self) -> Tuple[float, float]:
        c = self.config
        if self.ramping and c.brn_ramp == "caffe":
            if self.iteration < c.brn_warmup_iters:
                return 1.0, 0.0
            span = c.brn_ramp_end_iter - c.brn_warmup_iters
            frac = 1.0 if span <= 0 else min(1.0, (self.iteration - c.brn_warmup_iters) / span)
            return 1.0 + (c.brn_r_max_first - 1.0) * frac, c.brn_d_max_first * frac
        return self.r_max, self.d_max

    def advance(self, minibatch: int) -> None:
        self.iteration += 1
        if self.ramping and self.config.brn_ramp == "pytorch":
            inc = self.config.brn_ramp_step * minibatch
            if self.r_max < self.config.brn_r_max_first:
                self.r_max += inc
            if self.d_max < self.config.brn_d_max_first:
                self.d_max += inc

    def state(self) -> Dict[str, Any]:
        return {"r_max": self.r_max, "d_max": self.d_max, "iteration": self.iteration,
                "momentum": self.momentum, "ramping": self.ramping}

    def load(self, state: Mapping[str, Any]) -> None:
        self.r_max, self.d_max = float(state["r_max"]), float(state["d_max"])
        self.iteration, self.momentum = int(state["iteration"]), float(state["momentum"])
        self.ramping = bool(state["ramping"])
