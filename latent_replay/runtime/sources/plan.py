"""The NICv2-style plan of a stream (Lomonaco & Maltoni's New Instances and Classes): batch 0 holds
a fixed set of units together (NICv2: the first session of 10 of the 50 objects), every other unit
is a batch of its own, in a seeded random order (a run). Shared by the synthetic and folder sources."""
from __future__ import annotations

from typing import Hashable, List, Sequence, TypeVar

import numpy as np

Unit = TypeVar("Unit", bound=Hashable)


def nicv2_plan(units: Sequence[Unit], first: Sequence[Unit], seed: int) -> List[List[Unit]]:
    """[first units] + [[unit] for every other unit in a seeded order]; `units` in their natural
    order (the order is a permutation of it, so the same seed gives the same plan)."""
    fixed = set(first)
    missing = [u for u in first if u not in set(units)]
    if missing:
        raise ValueError(f"batch-0 units {missing[:3]} are not among the units")
    later = [u for u in units if u not in fixed]
    order = np.random.default_rng([seed, 3]).permutation(len(later))
    return [list(first)] + [[later[k]] for k in order]
