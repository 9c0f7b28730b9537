"""The names inside the exported back: the step graph's inputs and outputs, shared by the exporter
(`step_graph.py`) and the engines that run it (`runtime/engine/`). Together with the manifest this is
the artifact format; the runtime imports nothing else from `export`.

Every state tensor X of the step (a parameter, its momentum, a running statistic, SI's trajectory)
is an input named X and an output named X + NEXT with its value after the step.
"""
from __future__ import annotations

from typing import Dict

from ..models.graph import D_MAX_INPUT, FRAMES_INPUT, LATENT_INPUT, LOGITS, R_MAX_INPUT

__all__ = ["ACTIVATION", "BRN_MOMENTUM", "D_MAX", "FRAMES_INPUT", "GRAD", "HYPER_COLUMNS", "LABELS", "LATENT_INPUT",
           "LOGITS", "LOSS", "MOMENTUM", "NEXT", "R_MAX", "SGD_HYPER", "SI_LAMBDA", "momentum_name", "si_names"]

NEXT = ".next"  # suffix of an updated state tensor's output
LABELS = "labels"
LOSS = "loss"
R_MAX, D_MAX = R_MAX_INPUT, D_MAX_INPUT
BRN_MOMENTUM = "brn_momentum"
SGD_HYPER = "sgd_hyper"  # (P, 4): one row per trainable parameter: lr, momentum, grad_scale, weight_decay
HYPER_COLUMNS = ("lr", "momentum", "grad_scale", "weight_decay")
SI_LAMBDA = "si_lambda"
MOMENTUM = "momentum/"
GRAD = "grad/"  # gradients (graphs built for tests only)
ACTIVATION = "act/"  # layer outputs (graphs built for tests only)


def momentum_name(param: str) -> str:
    return MOMENTUM + param


def si_names(param: str) -> Dict[str, str]:
    """Inputs of the SI variant for one conv weight: importance, anchor, gradient scale, trajectory."""
    return {"F": f"si/F/{param}", "theta_star": f"si/theta_star/{param}", "scale": f"si/scale/{param}",
            "traj": f"si/traj/{param}"}
