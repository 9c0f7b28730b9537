"""The one table of continual-learning methods: what each uses, and the names users type.

A method is a combination of components: CWR* on the output layer (`cwr.py`), Synaptic
Intelligence (`si.py`), which parameters train after the first batch, and whether it retrains on
everything seen so far instead of replaying a memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class Method:
    name: str  # the configuration value (LearnerConfig.method)
    title: str  # how papers and logs write it
    aliases: Tuple[str, ...]  # command-line spellings (case-insensitive), besides `name`
    cwr: bool  # CWR* manages the output layer
    si: bool  # Synaptic Intelligence regularizes the conv weights
    head_only_later: bool  # after batch 0 only the output layer trains
    cumulative: bool  # trains on all data seen so far (the upper bound), no replay memory
    live: bool  # offered by the camera demo
    latent_layer: Optional[str]  # the latent layer the method needs, if it needs one


METHODS: Dict[str, Method] = {m.name: m for m in (
    Method("ar1free", "AR1*-free", ("ar1f",), cwr=True, si=False, head_only_later=False, cumulative=False,
           live=True, latent_layer=None),
    Method("ar1", "AR1*", ("ar1s",), cwr=True, si=True, head_only_later=False, cumulative=False, live=True,
           latent_layer=None),
    Method("cwr", "CWR*", (), cwr=True, si=False, head_only_later=True, cumulative=False, live=True,
           latent_layer="pool6"),
    Method("naive", "naive fine-tuning", (), cwr=False, si=False, head_only_later=False, cumulative=False,
           live=False, latent_layer=None),
    Method("cumulative", "cumulative (all data)", (), cwr=False, si=False, head_only_later=False, cumulative=True,
           live=False, latent_layer=None),
)}
METHOD_NAMES: Tuple[str, ...] = tuple(METHODS)
LIVE_METHODS: Tuple[str, ...] = tuple(m.name for m in METHODS.values() if m.live)


def method(name: str) -> Method:
    """The method called `name` or one of its aliases (any case); ValueError listing them otherwise."""
    low = str(name).lower()
    for m in METHODS.values():
        if low == m.name or low in m.aliases:
            return m
    raise ValueError(f"unknown method {name!r}; choose {', '.join(spellings())}")


def spellings() -> Tuple[str, ...]:
    """Every accepted spelling, for help texts: CWR, AR1F, AR1S (= AR1), naive, cumulative."""
    return ("CWR", "AR1F (= ar1free)", "AR1S (= AR1)", "naive", "cumulative")
