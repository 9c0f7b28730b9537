"""What a `latent-replay run` is asked to do, checked once: the typed options every later step reads.

The command line is accepted in the seed's form (`run AR1F 391 latent /data/core50`) and with
options; positionals are sorted by what they look like. Everything a user can get wrong here is
reported as a `RunError` before anything is read or written.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ...models import mobilenet_v1 as net
from ...runtime.learn import LearnerConfig
from ...runtime.learn.methods import method as method_named, spellings
from ..common import UserError, check_at_least, in_users_words

SCENARIOS = (79, 196, 391)
REPLAYS = ("no", "pure", "latent")
SYNTHETIC_MEMORY = 300
DEFAULT_MEMORY = 1500  # the paper's M, for CORe50 and image folders
SYNTHETIC_SIZE = 64
SYNTHETIC_DIFFICULTY = 0.1
SYNTHETIC_SETTINGS = LearnerConfig.small_stream_settings(0.01)  # see that method for why
FOLDER_PREFIX = "folder:"
FOLDER_SETTINGS: Dict[str, Dict[str, Any]] = {}  # per method: the settings a small real stream learns with
# The synthetic stream's parameters and the options that set them, for its errors (SettingError).
SYNTHETIC_OPTIONS = {"n_batches": "--synthetic-batches", "input_size": "--synthetic-size",
                     "frames_per_batch": "--synthetic-frames", "difficulty": "--synthetic-difficulty"}


class RunError(UserError):
    """A run configuration or input a user must fix."""


@dataclass
class RunOptions:
    """One experiment: what to learn from and how, where to write, how to run."""

    method: str
    scenario: int
    replay: str
    core50: Optional[Path]
    latent_layer: str
    replay_memory: int
    runs: List[int]
    out: Optional[Path] = None
    preset: str = "pytorch"
    overrides: Dict[str, Any] = field(default_factory=dict)  # --set KEY=VALUE
    storage: str = "fp32"
    device: str = "cpu"
    engine: str = "step"
    threads: int = 0
    spin: bool = True
    test_set: str = "reduced"
    skip_bad_images: bool = False
    filelists: Optional[str] = None
    artifacts: Optional[Path] = None
    classes: Optional[int] = None
    fresh: bool = False
    synthetic_batches: Optional[int] = None
    synthetic_size: int = SYNTHETIC_SIZE
    synthetic_frames: int = 60
    synthetic_difficulty: float = SYNTHETIC_DIFFICULTY
    save_every: int = 1
    max_batches: Optional[int] = None
    quiet: bool = False
    weights: str = "random"
    preprocessing: Optional[str] = None
    seed: int = 0
    width: Optional[float] = None
    folder: Optional[Path] = None  # `folder:DIR`: the user's own image folder instead of CORe50
    first_classes: Optional[int] = None
    per_batch: Optional[int] = None
    test_fraction: float = 0.2
    input_size: int = 128

    @property
    def synthetic(self) -> bool:
        return self.core50 is None and self.folder is None

    @property
    def scenario_name(self) -> str:
        if self.folder is not None:
            return f"folder-{self.folder.resolve().name}"
        return "synthetic" if self.synthetic else str(self.scenario)

    @property
    def scenario_label(self) -> str:
        """What results.json calls the stream: 79/196/391, "synthetic" or "folder"."""
        return "folder" if self.folder is not None else ("synthetic" if self.synthetic else str(self.scenario))

    def default_out(self) -> Path:
        """Each experiment its own folder, so that one run never resumes or overwrites another:
        runs/METHOD-SCENARIO-REPLAY-LAYER (e.g. runs/ar1free-synthetic-latent-conv5_4_dw)."""
        return Path("runs") / f"{self.method}-{self.scenario_name}-{self.replay}-{self.latent_layer.replace('/', '_')}"

    def learner_config(self, seed: int) -> LearnerConfig:
        """The learner settings of one run (seed = --seed + run), checked against the latent layer."""
        values: Dict[str, Any] = dict(method=self.method, replay=self.replay, replay_memory=self.replay_memory,
                                      storage=self.storage, seed=seed)
        if self.synthetic:
            values.update(SYNTHETIC_SETTINGS)
        elif self.folder is not None:
            values.update(FOLDER_SETTINGS.get(self.method, {}))
        values.update(self.overrides)
        try:
            config = LearnerConfig.preset(self.preset, **values)
            config.check_compatible(self.latent_layer)
        except (ValueError, TypeError) as e:
            typed = {"replay_memory": "--replay-memory",
                     **{k: f"--set {k}={v}: {k}" for k, v in self.overrides.items()}}
            raise RunError(in_users_words(e, typed)) from None
        return config


def parse_runs(text: str) -> List[int]:
    """'0-4' -> [0..4], '0,2,5' -> [0, 2, 5], '3' -> [3]."""
    runs: List[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if a > b:
                    raise RunError(f"--runs {text!r}: the range {a}-{b} is reversed; write {b}-{a}")
                runs.extend(range(a, b + 1))
            else:
                runs.append(int(part))
    except ValueError as e:
        if isinstance(e, RunError):
            raise
        raise RunError(f"--runs {text!r}: use a range like 0-4 or a list like 0,2,5") from None
    if not runs or any(r < 0 or r > 9 for r in runs):
        raise RunError(f"--runs {text!r}: NICv2 has runs 0..9")
    return sorted(set(runs))


def parse_overrides(pairs: List[str]) -> Dict[str, Any]:
    """--set KEY=VALUE pairs, values parsed as int, float, bool or string."""
    out: Dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise RunError(f"--set {pair!r}: use KEY=VALUE")
        key, value = pair.split("=", 1)
        parsed: Any = value
        for cast in (int, float):
            try:
                parsed = cast(value)
                break
            except ValueError:
                continue
        if value.lower() in ("true", "false"):
            parsed = value.lower() == "true"
        out[key.strip()] = parsed
    return out


def _is_method(value: str) -> bool:
    try:
        method_named(value)
        return True
    except ValueError:
        return False


def sort_positionals(values: List[Optional[str]]) -> Dict[str, Optional[str]]:
    """Assign the positionals by what they look like, so that `run naive no` or `run AR1F /data/core50`
    work as well as the seed's full `METHOD SCENARIO REPLAY PATH` form."""
    slots: Dict[str, Optional[str]] = {"method": None, "scenario": None, "replay": None, "core50": None}
    for value in (v for v in values if v is not None):
        low = value.lower()
        if low.startswith(FOLDER_PREFIX):
            key = "core50"  # the data source: CORe50's folder or folder:DIR
        elif _is_method(low):
            key = "method"
        elif value.isdigit():
            key = "scenario"
        elif low in REPLAYS:
            key = "replay"
        elif slots["method"] is None and "/" not in value and "." not in value:
            key = "method"  # an unknown method name: reported as such below
        else:
            key = "core50"
        if slots[key] is not None:
            raise RunError(f"cannot tell what {value!r} is; use METHOD SCENARIO REPLAY CORE50, "
                           f"e.g. `latent-replay run AR1F 391 latent /data/core50`")
        slots[key] = value
    return slots


def _pick(pos: Any, opt: Any, name: str) -> Any:
    if pos is not None and opt is not None and str(pos) != str(opt):
        raise RunError(f"{name} given twice ({pos!r} and --{name} {opt!r})")
    return opt if opt is not None else pos


def options_from_args(args: argparse.Namespace) -> RunOptions:
    """The checked options of `latent-replay run` from its parsed command line."""
    pos = sort_positionals([args.method_pos, args.scenario_pos, args.replay_pos, args.core50_pos])
    method_raw = _pick(pos["method"], args.method, "method") or "AR1F"
    try:
        method = method_named(method_raw).name
    except ValueError:
        raise RunError(f"unknown method {method_raw!r}; choose {', '.join(spellings())}") from None
    scenario_raw = _pick(pos["scenario"], args.scenario, "scenario") or 391
    try:
        scenario = int(scenario_raw)
    except ValueError:
        raise RunError(f"scenario must be 79, 196 or 391, not {scenario_raw!r}") from None
    if scenario not in SCENARIOS:
        raise RunError(f"scenario must be 79, 196 or 391, not {scenario}")
    replay = (_pick(pos["replay"], args.replay, "replay") or ("no" if method == "cumulative" else "latent")).lower()
    if replay not in REPLAYS:
        raise RunError(f"replay must be no, pure or latent, not {replay!r}")
    core50 = _pick(pos["core50"], args.core50, "core50")
    folder = None
    if core50 and core50.startswith(FOLDER_PREFIX):
        folder, core50 = Path(core50[len(FOLDER_PREFIX):]), None
        if not str(folder) or str(folder) == ".":
            raise RunError(f"{FOLDER_PREFIX}DIR needs the folder, e.g. {FOLDER_PREFIX}/data/my_objects")
    if folder is None and (args.first_classes is not None or args.per_batch is not None
                           or args.test_fraction is not None):
        raise RunError("--first-classes, --per-batch and --test-fraction plan a folder stream: give folder:DIR")
    if args.filelists and not core50:
        raise RunError("--filelists applies to CORe50 only: give the CORe50 folder (CORE50 or --core50), or drop it")
    if args.skip_bad_images and not (core50 or folder):
        raise RunError("--skip-bad-images applies to image files (CORe50 or folder:DIR): drop it for the synthetic "
                       "stream")
    latent_layer = args.latent_layer or method_named(method).latent_layer or (
        net.DATA if replay == "pure" else net.DEFAULT_LATENT_LAYER)
    try:
        net.check_latent_layer(latent_layer)
    except ValueError as e:
        raise RunError(str(e)) from None
    memory = args.replay_memory if args.replay_memory is not None else \
        (DEFAULT_MEMORY if core50 or folder else SYNTHETIC_MEMORY)
    if memory <= 0:
        raise RunError(f"--replay-memory must be > 0, got {memory}")
    for value, minimum, option in ((args.save_every, 1, "--save-every"), (args.max_batches, 1, "--max-batches"),
                                   (args.threads, 0, "--threads")):
        check_at_least(value, minimum, option)
    return RunOptions(
        method=method, scenario=scenario, replay=replay, core50=Path(core50) if core50 else None,
        latent_layer=latent_layer, replay_memory=memory, runs=parse_runs(args.runs),
        out=Path(args.out) if args.out else None, preset=args.preset, overrides=parse_overrides(args.set),
        storage=args.storage, device=args.device, engine=args.engine, threads=args.threads, spin=args.spin,
        test_set=args.test_set, skip_bad_images=args.skip_bad_images, filelists=args.filelists,
        artifacts=Path(args.artifacts) if args.artifacts else None, classes=args.classes, fresh=args.fresh,
        synthetic_batches=args.synthetic_batches, synthetic_size=args.synthetic_size,
        synthetic_frames=args.synthetic_frames, synthetic_difficulty=args.synthetic_difficulty,
        save_every=args.save_every, max_batches=args.max_batches, quiet=args.quiet, weights=args.weights,
        preprocessing=args.preprocessing, seed=args.seed, width=args.width, folder=folder,
        first_classes=args.first_classes, per_batch=args.per_batch,
        test_fraction=0.2 if args.test_fraction is None else args.test_fraction, input_size=args.input_size)
