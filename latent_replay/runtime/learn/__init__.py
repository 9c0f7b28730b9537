"""Continual learners on the exported back: the loop (`learner.py`) and the components methods
combine (`cwr.py`, `si.py`, `brn.py`, `replay.py`), named in one table (`methods.py`)."""
from __future__ import annotations

from .config import LearnerConfig
from .hooks import LearnerHooks
from .learner import Learner
from .methods import METHODS, method

__all__ = ["Learner", "LearnerConfig", "LearnerHooks", "METHODS", "method"]
