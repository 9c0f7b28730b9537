"""A sweep's grid: `run`'s arguments where some are lists (or `all`), expanded into cells.

A cell is exactly one `latent-replay run` of one NICv2 run into its own folder, named after its grid
point, so that a stopped sweep continues cell by cell and `run` itself resumes a cell batch by batch.
Every cell's command line is parsed and checked by `run`'s own code before anything runs; a cell
that `run` refuses is a failed cell with `run`'s message, and the other cells go on.
"""
from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ...models import mobilenet_v1 as net
from ...runtime.learn.methods import METHOD_NAMES, method as method_named
from ..common import UserError
from ..run.options import FOLDER_PREFIX, REPLAYS, SCENARIOS, RunError, options_from_args, parse_runs, \
    sort_positionals

# The options that may be lists, with what `all` means for each (None: `all` is not allowed).
AXES: Dict[str, Optional[Sequence[str]]] = {
    "method": METHOD_NAMES, "scenario": tuple(str(s) for s in SCENARIOS), "replay": REPLAYS,
    "latent_layer": tuple(net.LATENT_LAYERS), "replay_memory": None,
}
POSITIONALS = ("method_pos", "scenario_pos", "replay_pos", "core50_pos")
OPTION_OF = {"method": "--method", "scenario": "--scenario", "replay": "--replay", "latent_layer": "--latent-layer",
             "replay_memory": "--replay-memory", "runs": "--runs"}


class SweepError(UserError):
    """A sweep's grid that cannot be expanded."""


@dataclass
class Cell:
    """One `run` of the grid: its folder name, its `run` command line and its grid point."""

    name: str
    argv: List[str]
    point: Dict[str, Any]  # the axes' values except the run, e.g. {"method": "ar1free", "latent_layer": ...}
    run: int
    error: Optional[str] = None  # `run`'s refusal of this cell's options, if it refused them
    out: Path = field(default=Path("."))  # the cell's run folder
    log: Path = field(default=Path("cell.log"))  # what its run printed


def listed(value: Optional[str], axis: str, option: str) -> List[str]:
    """'a,b' -> ['a', 'b']; 'all' -> every value of the axis; None -> [None]."""
    if value is None:
        return [None]  # type: ignore[list-item]
    items = [v.strip() for v in str(value).split(",")]
    if any(not v for v in items):
        raise SweepError(f"{option} {value!r}: an empty item in the list")
    if items == ["all"]:
        if AXES.get(axis) is None:
            raise SweepError(f"{option} all: give the values, e.g. {option} 500,1500")
        return list(AXES[axis])  # type: ignore[arg-type]
    return list(dict.fromkeys(items))


def _sorted_positionals(args: argparse.Namespace) -> Dict[str, Optional[str]]:
    """The positionals by what their first item looks like (as `run` sorts single values)."""
    values = [getattr(args, name) for name in POSITIONALS]
    firsts: List[Optional[str]] = []
    for v in values:
        if v is not None and v.split(",")[0].strip().lower() == "all":
            raise SweepError(f"cannot tell what {v!r} is: write `all` as an option (--method all, --scenario all, "
                             f"--replay all, --latent-layer all)")
        firsts.append(None if v is None else v.split(",")[0].strip())
    try:
        slots = sort_positionals(firsts)
    except RunError as e:
        raise SweepError(str(e)) from None
    whole = dict(zip(firsts, values))
    return {k: (whole[v] if v is not None else None) for k, v in slots.items()}


def _axis_values(args: argparse.Namespace) -> Dict[str, List[Any]]:
    pos = _sorted_positionals(args)
    values: Dict[str, List[Any]] = {}
    for axis in ("method", "scenario", "replay"):
        given = [v for v in (pos[axis], getattr(args, axis)) if v is not None]
        if len(given) == 2 and given[0] != given[1]:
            raise SweepError(f"{axis} given twice ({given[0]!r} and {OPTION_OF[axis]} {given[1]!r})")
        values[axis] = listed(given[0] if given else None, axis, OPTION_OF[axis])
    values["method"] = [_method(m) for m in values["method"]]
    core50 = pos["core50"] if pos["core50"] is not None else args.core50
    if core50 is not None and "," in core50 and not core50.startswith(FOLDER_PREFIX):
        raise SweepError(f"one data source per sweep, not {core50!r}")
    values["core50"] = [core50]
    for axis in ("latent_layer", "replay_memory"):
        values[axis] = listed(getattr(args, axis), axis, OPTION_OF[axis])
    return values


def _method(name: Optional[str]) -> Optional[str]:
    if name is None:
        return None
    try:
        return method_named(name).name
    except ValueError as e:
        raise SweepError(f"--method: {e}") from None


def _set_axes(pairs: Sequence[str]) -> Tuple[List[str], Dict[str, List[str]]]:
    """--set KEY=V1,V2 pairs: the fixed ones as given, the listed ones as axes."""
    fixed, axes = [], {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if sep and "," in value:
            axes[key.strip()] = listed(value, key, f"--set {key}=")
        else:
            fixed.append(pair)
    return fixed, axes


def _layer_for(method: Optional[str], replay: Optional[str], layer: Optional[str]) -> Optional[str]:
    """The latent layer a cell runs at: the method's or pure replay's own where they fix it."""
    needed = method_named(method).latent_layer if method else None
    if needed is not None:
        return needed
    if replay == "pure":
        return net.DATA
    return layer


def cell_name(point: Dict[str, Any], run: int) -> str:
    """METHOD-SCENARIO-REPLAY-LAYER-mM[-KEY=V...]-runR, readable and unique per grid point."""
    keys = ("method", "scenario", "replay", "latent_layer", "replay_memory")
    parts = [str(point[k]) if k != "replay_memory" else f"m{point[k]}" for k in keys]
    parts += [f"{k[4:]}={v}" for k, v in sorted(point.items()) if k.startswith("set:")]
    return "-".join(p.replace("/", "_") for p in parts) + f"-run{run}"


def expand(args: argparse.Namespace, run_parser: argparse.ArgumentParser, out: Path,
           passthrough: Sequence[str]) -> List[Cell]:
    """Every cell of the grid, each with its `run` command line checked by `run` itself.

    `passthrough` are the sweep's other `run` options, unchanged in every cell."""
    values = _axis_values(args)
    fixed_sets, set_axes = _set_axes(args.set)
    runs = parse_runs(args.runs)
    cells: List[Cell] = []
    seen = set()
    keys = ["method", "scenario", "replay", "latent_layer", "replay_memory"] + [f"set:{k}" for k in set_axes]
    grid = [values[k] for k in keys[:5]] + [set_axes[k[4:]] for k in keys[5:]]
    for combo in itertools.product(*grid):
        chosen = dict(zip(keys, combo))
        chosen["latent_layer"] = _layer_for(chosen["method"], chosen["replay"], chosen["latent_layer"])
        argv = [a for k in keys[:5] if chosen[k] is not None for a in (OPTION_OF[k], str(chosen[k]))]
        if values["core50"][0] is not None:
            argv += ["--core50", values["core50"][0]]
        for pair in fixed_sets:
            argv += ["--set", pair]
        argv += [a for k in keys[5:] for a in ("--set", f"{k[4:]}={chosen[k]}")]
        argv += list(passthrough)
        for run in runs:
            cell = _checked_cell(argv + ["--runs", str(run)], run, run_parser, chosen, out)
            if cell.name not in seen:  # a method that fixes its layer makes one cell of many layers
                seen.add(cell.name)
                cells.append(cell)
    return cells


def _checked_cell(argv: List[str], run: int, parser: argparse.ArgumentParser, chosen: Dict[str, Any],
                  out: Path) -> Cell:
    """The cell with the values `run` really uses (its defaults filled in), or its refusal."""
    point = dict(chosen)
    error = None
    try:
        opts = options_from_args(parser.parse_args(argv))
        point.update(method=opts.method, scenario=opts.scenario_name, replay=opts.replay,
                     latent_layer=opts.latent_layer, replay_memory=opts.replay_memory)
    except UserError as e:
        error = str(e)
        point = {k: ("default" if v is None else v) for k, v in point.items()}
    name = cell_name(point, run)
    full = argv + ["--out", str(out / name), "--quiet"]
    return Cell(name=name, argv=full, point=point, run=run, error=error, out=out / name,
                log=out / "logs" / f"{name}.log")


def grid_file_argv(path: Path) -> List[str]:
    """A YAML or JSON grid file ({option: value or list}) as command-line arguments."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise SweepError(f"--grid {path}: {e.strerror or e}") from None
    data = _load_mapping(text, path)
    argv: List[str] = []
    for key, value in data.items():
        option = "--" + str(key).replace("_", "-")
        if key == "set":
            if not isinstance(value, dict):
                raise SweepError(f"--grid {path}: `set` must map settings to values, e.g. set: {{epochs: [1, 2]}}")
            for k, v in value.items():
                argv += ["--set", f"{k}={_joined(v)}"]
        elif value is True:
            argv.append(option)
        elif value is False or value is None:
            continue
        else:
            argv += [option, _joined(value)]
    return argv


def _joined(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def _load_mapping(text: str, path: Path) -> Dict[str, Any]:
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise SweepError(f"--grid {path}: reading YAML needs PyYAML (pip install \"latent-replay[sweep]\"), "
                             f"or write the grid as JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SweepError(f"--grid {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    else:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise SweepError(f"--grid {path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise SweepError(f"--grid {path}: expected a mapping of run options to values or lists")
    return data
