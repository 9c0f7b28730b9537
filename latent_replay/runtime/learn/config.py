"""Learner hyper-parameters: one dataclass, three presets.

- "pytorch" (default): the PyTorch port's hyper-parameters with the paper's semantics
  (docs/algorithms.md);
- "port": the same hyper-parameters and the official PyTorch port's code exactly where it differs
  from the paper (`PORT_RULES`: CWR*'s class list, the BRN running std's start, the replay memory;
  the README's presets table);
- "caffe": the Caffe code's settings.

Every value of a preset can be overridden: `LearnerConfig.preset("caffe", replay="no", lr_later=1e-3)`.
Values that the Caffe code derives from other settings (learning rate and BRN momentum of the later
batches depend on replay, the output-layer learning-rate multiplier on the method) are derived by
`preset` unless they are given explicitly.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Tuple

from ..errors import SettingError
from ..replay.pool import STORAGES
from .methods import METHOD_NAMES, Method, method as method_named

REPLAYS = ("no", "pure", "latent")
PRESETS = ("pytorch", "port", "caffe")
BRN_RAMPS = ("pytorch", "caffe")
REPLAY_SHUFFLES = ("none", "batch", "epoch")
SI_MODES = ("penalty", "scale")
UNSEEN_ROWS = ("trained", "zero")
CWR_CLASS_LISTS = ("unique", "per_memory_entry")
BRN_STD_STARTS = ("sqrt_var_eps", "sqrt_var")
REPLAY_RULES = ("paper", "port")
# Where the official PyTorch port's code differs from the paper (the "port" preset; README table).
PORT_RULES = {"cwr_class_list": "per_memory_entry", "brn_std_start": "sqrt_var", "replay_rules": "port"}

# Weights the Caffe preset never trains: conv1 and all depthwise convs (their scale/shift still train).
CAFFE_FROZEN = ("conv1/weight", "/dw/weight")
# BRN running-statistics rate for small streams trained at one fast learning rate (small_stream_settings).
SMALL_STREAM_BRN_MOMENTUM = 0.01


@dataclass(frozen=True)
class LearnerConfig:
    """What a `Learner` does with each training batch. Defaults: the PyTorch port (AR1*-free,
    latent replay, M = 1500)."""

    preset_name: str = "pytorch"
    method: str = "ar1free"
    replay: str = "latent"
    replay_memory: int = 1500
    storage: str = "fp32"  # replay storage of latents: fp32, fp16, uint8
    minibatch: int = 128
    epochs_first: int = 4
    epochs: int = 4
    lr_first: float = 1e-3
    lr_later: float = 5e-5
    momentum: float = 0.9
    weight_decay: float = 5e-4
    head_lr_mult: float = 1.0
    # Parameters whose name contains one of these substrings are never trained ("/dw/weight").
    frozen_weights: Tuple[str, ...] = ()
    # Batch Renormalization: running statistics EMA rate and r_max/d_max per phase.
    brn_momentum_first: float = 0.01
    brn_momentum_later: float = 5e-5
    brn_ramp: str = "pytorch"  # "pytorch": +step*minibatch per iteration; "caffe": BN, then linear
    brn_ramp_step: float = 4.1e-5  # per pattern of the minibatch (pytorch ramp)
    brn_warmup_iters: int = 0  # caffe ramp: plain BN for this many iterations
    brn_ramp_end_iter: int = 96  # caffe ramp: r_max/d_max reach their first-batch values here
    brn_r_max_first: float = 1.25
    brn_d_max_first: float = 0.5
    brn_r_max: float = 1.25
    brn_d_max: float = 0.5
    freeze_brn_stats: bool = False
    # Synaptic Intelligence (method "ar1").
    si_mode: str = "penalty"  # "penalty": + lambda/2 F (theta - theta*)^2; "scale": grad *= 1 - F/clip
    si_lambda: float = 1e6
    si_xi: float = 1e-7
    si_c: float = 1.0
    si_clip: float = 1e-3
    # Minibatch order: new patterns are shuffled once per batch (port) or every epoch; the memory is
    # walked in slot order (port), or shuffled once per batch or every epoch.
    shuffle_each_epoch: bool = False
    replay_shuffle: str = "none"
    pad_without_replay: bool = True  # pad to whole minibatches when there is no memory (port)
    cwr_unseen_rows: str = "trained"  # inference rows of never-consolidated classes: trained | zero
    # CWR*'s list of the batch's classes: each class once ("unique", the paper), or the new batch's
    # classes once plus one entry per memory pattern ("per_memory_entry", the port): the average is
    # then weighted by those counts and a class's running average is applied once per entry.
    cwr_class_list: str = "unique"
    # BRN running std before the first batch: the export's sqrt(var + eps), or sqrt(var) (the port
    # builds it from the pretrained running variance without eps). The update rule is the same.
    brn_std_start: str = "sqrt_var_eps"
    # Replay memory and minibatches: "paper" (docs/algorithms.md) or "port" (the port's code: the
    # memory is filled from the epoch-0 minibatches, never grows after its first filling, the
    # replayed share of a minibatch comes from the configured M, short slices instead of wrapping).
    replay_rules: str = "paper"
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str = "pytorch", **overrides: Any) -> "LearnerConfig":
        """A preset with `overrides` applied; unknown names and bad values raise ValueError."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown learner setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
        values: Dict[str, Any] = {"preset_name": name}
        if overrides.get("method") == "cumulative" and "replay" not in overrides:
            values["replay"] = "no"  # the upper bound keeps every pattern, not a replay memory
        if name == "caffe":
            values.update(_caffe_values(overrides))
        if name == "port":
            values.update(PORT_RULES)
        values.update(overrides)
        if "frozen_weights" in values:
            values["frozen_weights"] = tuple(values["frozen_weights"])
        return cls(**values)

    @staticmethod
    def small_stream_settings(lr: float) -> Dict[str, Any]:
        """Overrides for small streams (the synthetic stream, a few taught objects, an image folder of
        small batches): one learning rate for every batch, BRN running statistics that follow the
        weights at a matching pace, and SI's penalty weight scaled so that lr x lambda stays the
        PyTorch preset's. The presets' 1e-3 then 5e-5 (with running-statistics rate 5e-5) are tuned for
        CORe50's 3,000-image first batch on ImageNet features; at a rate 100x higher the eval-mode
        statistics go stale (AR1*-free on the synthetic stream: 47% instead of 97%), and the penalty's
        curvature lambda x F (up to 1e6 x 1e-3) makes momentum SGD unstable once lr x lambda x F
        passes ~4 (AR1* at lr 0.005 on a COIL-100 stream: NaN from its 8th batch)."""
        preset = LearnerConfig()
        return {"lr_first": lr, "lr_later": lr, "brn_momentum_later": SMALL_STREAM_BRN_MOMENTUM,
                "si_lambda": preset.si_lambda * preset.lr_later / lr}

    def replace(self, **changes: Any) -> "LearnerConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["frozen_weights"] = list(self.frozen_weights)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "LearnerConfig":
        d = dict(d)
        d["frozen_weights"] = tuple(d.get("frozen_weights", ()))
        return cls(**d)

    # -- checks -----------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise SettingError (a ValueError) naming the bad setting and the valid values."""
        _choice("method", self.method, METHOD_NAMES)
        _choice("replay", self.replay, REPLAYS)
        _choice("storage", self.storage, STORAGES)
        _choice("preset", self.preset_name, PRESETS)
        _choice("brn_ramp", self.brn_ramp, BRN_RAMPS)
        _choice("replay_shuffle", self.replay_shuffle, REPLAY_SHUFFLES)
        _choice("si_mode", self.si_mode, SI_MODES)
        _choice("cwr_unseen_rows", self.cwr_unseen_rows, UNSEEN_ROWS)
        _choice("cwr_class_list", self.cwr_class_list, CWR_CLASS_LISTS)
        _choice("brn_std_start", self.brn_std_start, BRN_STD_STARTS)
        _choice("replay_rules", self.replay_rules, REPLAY_RULES)
        if self.replay != "no" and int(self.replay_memory) <= 0:
            problem = f"must be > 0, got {self.replay_memory} (use replay 'no' to train without a memory)"
            raise SettingError("replay_memory", problem, f"replay memory size {problem}")
        for name in ("minibatch", "epochs_first", "epochs"):
            if int(getattr(self, name)) < 1:
                raise SettingError(name, f"must be at least 1, got {getattr(self, name)}")
        for name in ("lr_first", "lr_later", "weight_decay", "head_lr_mult", "si_lambda", "si_xi",
                     "brn_ramp_step", "brn_warmup_iters"):
            if getattr(self, name) < 0:
                raise SettingError(name, f"must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise SettingError("momentum", f"must be in [0, 1), got {self.momentum}")
        for name in ("brn_momentum_first", "brn_momentum_later"):
            if not 0 <= getattr(self, name) <= 1:
                raise SettingError(name, f"must be in [0, 1], got {getattr(self, name)}")
        for name in ("brn_r_max_first", "brn_r_max"):
            if getattr(self, name) < 1:
                raise SettingError(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("brn_d_max_first", "brn_d_max"):
            if getattr(self, name) < 0:
                raise SettingError(name, f"must be >= 0, got {getattr(self, name)}")
        if self.si_clip <= 0:
            raise SettingError("si_clip", f"must be > 0, got {self.si_clip}")
        if self.method == "cumulative" and self.replay != "no":
            raise ValueError("method 'cumulative' trains on all data seen so far and uses no replay "
                             "memory: set replay 'no'")

    def check_compatible(self, latent_layer: str) -> None:
        """Refuse combinations of method/replay and latent layer that make no sense."""
        needed = self.method_spec.latent_layer
        if needed is not None and latent_layer != needed:
            raise ValueError(f"CWR* trains only the output layer: use latent layer 'pool6', not {latent_layer!r} "
                             f"(or method 'ar1free' to train the layers above {latent_layer!r})")
        if self.replay == "pure" and latent_layer != "data":
            raise ValueError(f"pure (native) replay stores raw images: export the artifacts at latent layer "
                             f"'data', not {latent_layer!r} (or use replay 'latent')")

    # -- derived ----------------------------------------------------------------------------
    @property
    def method_spec(self) -> Method:
        return method_named(self.method)

    @property
    def uses_cwr(self) -> bool:
        return self.method_spec.cwr

    @property
    def uses_si(self) -> bool:
        return self.method_spec.si

    @property
    def uses_memory(self) -> bool:
        return self.replay != "no"

    def lr(self, batch_index: int) -> float:
        return self.lr_first if batch_index == 0 else self.lr_later

    def epochs_for(self, batch_index: int) -> int:
        return self.epochs_first if batch_index == 0 else self.epochs


def _choice(name: str, value: Any, valid: Tuple[str, ...]) -> None:
    if value not in valid:
        choose = f"choose one of {', '.join(valid)}"
        raise SettingError(name, f"{value!r} is unknown; {choose}", f"unknown {name} {value!r}; {choose}")


def _caffe_values(overrides: Dict[str, Any]) -> Dict[str, Any]:
    """The Caffe code's settings (docs/algorithms.md); some depend on replay and method."""
    replay = overrides.get("replay", "no" if overrides.get("method") == "cumulative" else "latent")
    method = overrides.get("method", "ar1free")
    return {
        "lr_first": 1e-3,
        "lr_later": 3e-4 if replay != "no" else 1e-3,
        "head_lr_mult": 10.0 if method in ("ar1", "ar1free") else 1.0,
        "frozen_weights": CAFFE_FROZEN,
        "brn_momentum_first": 0.01,
        "brn_momentum_later": 5e-5 if replay != "no" else 1e-4,
        "brn_ramp": "caffe",
        "brn_warmup_iters": 48,
        "brn_ramp_end_iter": 96,
        "brn_r_max_first": 3.0,
        "brn_d_max_first": 5.0,
        "si_mode": "scale",
        "replay_shuffle": "batch",
    }
