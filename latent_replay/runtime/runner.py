"""`latent-replay run`: the NICv2 experiment (or the synthetic stream) end to end, resumable.

For every run: export (or reuse) the artifacts, push each training batch through the front once,
train the learner on its cached latents, evaluate on the test set's cached latents, then save the
learner state together with the per-batch records in one atomic directory. Re-running with the same
`--out` continues from the last saved batch of every run.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..models import mobilenet_v1 as net
from .learn import LearnerConfig

METHOD_NAMES = {"cwr": "cwr", "ar1f": "ar1free", "ar1free": "ar1free", "ar1s": "ar1", "ar1": "ar1",
                "naive": "naive", "cumulative": "cumulative"}
SCENARIOS = (79, 196, 391)
TEST_CACHE_LIMIT = 2 << 30  # test latents bigger than this are recomputed per evaluation
PAPER_REFERENCE = {("ar1free", 391, "latent"): 0.77}  # PyTorch port, conv5_4/dw, M=1500 (ALGORITHMS.md 7)
SYNTHETIC_MEMORY = 300
SYNTHETIC_SIZE = 64
SYNTHETIC_DIFFICULTY = 0.1
SYNTHETIC_SETTINGS = LearnerConfig.small_stream_settings(0.01)  # see that method for why


class RunError(ValueError):
    """A run configuration or input a user must fix."""


@dataclass
class RunSpec:
    method: str
    scenario: int
    replay: str
    core50: Optional[Path]
    latent_layer: str
    replay_memory: int
    runs: List[int]


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


def add_run_command(sub: argparse._SubParsersAction) -> None:
    from ..cli import add_weights_arguments

    p = sub.add_parser(
        "run", help="continual-learning experiment: CORe50 NICv2 or the built-in synthetic stream",
        description="Train the back batch by batch (latent replay + CWR*/AR1*/AR1*-free) and evaluate "
                    "after every batch. Accepts the seed's form too: `latent-replay run AR1F 391 latent "
                    "/data/core50 --latent_layer pool6 --replay_memory 1500`. Without a CORe50 path it "
                    "runs the synthetic stream. Re-running with the same --out resumes.")
    p.add_argument("method_pos", nargs="?", metavar="METHOD", help="CWR, AR1F (default), AR1S/AR1, naive, cumulative")
    p.add_argument("scenario_pos", nargs="?", metavar="SCENARIO", help="NICv2 scenario: 79, 196 or 391 (default)")
    p.add_argument("replay_pos", nargs="?", metavar="REPLAY", help="no, pure or latent (default)")
    p.add_argument("core50_pos", nargs="?", metavar="CORE50", help="folder with core50_128x128/ (omit: synthetic)")
    p.add_argument("--method", help="same as METHOD")
    p.add_argument("--scenario", type=int, help="same as SCENARIO")
    p.add_argument("--replay", help="same as REPLAY")
    p.add_argument("--core50", help="same as CORE50")
    p.add_argument("--latent-layer", "--latent_layer", dest="latent_layer", default=None,
                   help="latent replay layer (default conv5_4/dw; pool6 for CWR, data for pure replay)")
    p.add_argument("--replay-memory", "--replay_memory", dest="replay_memory", type=int, default=None,
                   help=f"replay memory size M, > 0 (default 1500; {SYNTHETIC_MEMORY} on the synthetic stream)")
    p.add_argument("--runs", default="0", help="NICv2 runs (batch orders), e.g. 0-4 (averaged); default 0")
    p.add_argument("--preset", choices=["pytorch", "caffe"], default="pytorch",
                   help="hyper-parameters of the PyTorch port (default) or of the Caffe code")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any learner setting, e.g. --set epochs=2 --set lr_later=1e-4 (repeatable)")
    p.add_argument("--storage", choices=["fp32", "fp16", "uint8"], default="fp32", help="replay pool dtype")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu",
                   help="cpu (default), cuda (CUDA provider + pycuda pool) or auto")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    p.add_argument("--no-spin", dest="spin", action="store_false",
                   help="ORT threads sleep instead of busy-waiting between operators (faster on a busy CPU)")
    p.add_argument("--test-set", choices=["reduced", "full"], default="reduced",
                   help="CORe50 test set: every 20th frame (reference, default) or all 44,972")
    p.add_argument("--skip-bad-images", action="store_true", help="skip (and count) unreadable CORe50 images")
    p.add_argument("--filelists", help="folder with NICv2 filelists (default: the ones shipped with the package)")
    p.add_argument("--artifacts", help="reuse exported artifacts instead of exporting into OUT/artifacts")
    p.add_argument("--classes", type=int, default=None, help="output classes when exporting (default: the stream's)")
    p.add_argument("--out", default=None,
                   help="output folder (default runs/METHOD-SCENARIO-REPLAY-LAYER, e.g. "
                        "runs/ar1free-synthetic-latent-conv5_4_dw); re-run to resume")
    p.add_argument("--fresh", action="store_true",
                   help="start over in --out: ignore its saved runs and replace artifacts that do not fit")
    p.add_argument("--synthetic-batches", type=int, default=None, help="length of the synthetic stream (default 26)")
    p.add_argument("--synthetic-size", type=int, default=SYNTHETIC_SIZE,
                   help=f"frame size of the synthetic stream (default {SYNTHETIC_SIZE}: a couple of minutes on 2 cores)")
    p.add_argument("--synthetic-frames", type=int, default=60, help="frames per synthetic batch (default 60)")
    p.add_argument("--synthetic-difficulty", type=float, default=SYNTHETIC_DIFFICULTY,
                   help=f"nuisance of the synthetic stream, 0..1 (default {SYNTHETIC_DIFFICULTY}: learnable with random "
                        f"weights; 1 = CORe50-like pose, lighting and background changes)")
    p.add_argument("--save-every", type=int, default=1,
                   help="save the learner state every N batches (default 1; the state holds the replay memory, "
                        "~200 MB at conv5_4/dw with M=1500, and cumulative's every latent)")
    p.add_argument("--max-batches", type=int, default=None,
                   help="stop after this many batches in this invocation (re-run to continue)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_weights_arguments(p)
    p.set_defaults(handler=run_command)


def _sort_positionals(args: argparse.Namespace) -> None:
    """Assign the positionals by what they look like, so that `run naive no` or `run AR1F /data/core50`
    work as well as the seed's full `METHOD SCENARIO REPLAY PATH` form."""
    given = [v for v in (args.method_pos, args.scenario_pos, args.replay_pos, args.core50_pos) if v is not None]
    slots = {"method_pos": None, "scenario_pos": None, "replay_pos": None, "core50_pos": None}
    for value in given:
        low = value.lower()
        if low in METHOD_NAMES:
            key = "method_pos"
        elif value.isdigit():
            key = "scenario_pos"
        elif low in ("no", "pure", "latent"):
            key = "replay_pos"
        elif slots["method_pos"] is None and "/" not in value and "." not in value:
            key = "method_pos"  # an unknown method name: reported as such below
        else:
            key = "core50_pos"
        if slots[key] is not None:
            raise RunError(f"cannot tell what {value!r} is; use METHOD SCENARIO REPLAY CORE50, "
                           f"e.g. `latent-replay run AR1F 391 latent /data/core50`")
        slots[key] = value
    for key, value in slots.items():
        setattr(args, key, value)


def _resolve_spec(args: argparse.Namespace) -> RunSpec:
    _sort_positionals(args)

    def pick(pos, opt, name):
        if pos is not None and opt is not None and str(pos) != str(opt):
            raise RunError(f"{name} given twice ({pos!r} and --{name} {opt!r})")
        return opt if opt is not None else pos

    method_raw = pick(args.method_pos, args.method, "method") or "AR1F"
    method = METHOD_NAMES.get(str(method_raw).lower())
    if method is None:
        raise RunError(f"unknown method {method_raw!r}; choose CWR, AR1F, AR1S (= AR1), naive or cumulative")
    scenario_raw = pick(args.scenario_pos, args.scenario, "scenario") or 391
    try:
        scenario = int(scenario_raw)
    except ValueError:
        raise RunError(f"scenario must be 79, 196 or 391, not {scenario_raw!r}") from None
    if scenario not in SCENARIOS:
        raise RunError(f"scenario must be 79, 196 or 391, not {scenario}")
    replay = (pick(args.replay_pos, args.replay, "replay") or ("no" if method == "cumulative" else "latent")).lower()
    if replay not in ("no", "pure", "latent"):
        raise RunError(f"replay must be no, pure or latent, not {replay!r}")
    core50 = pick(args.core50_pos, args.core50, "core50")
    latent_layer = args.latent_layer
    if latent_layer is None:
        latent_layer = "pool6" if method == "cwr" else "data" if replay == "pure" else net.DEFAULT_LATENT_LAYER
    try:
        net.check_latent_layer(latent_layer)
    except ValueError as e:
        raise RunError(str(e)) from None
    memory = args.replay_memory
    if memory is None:
        memory = 1500 if core50 else SYNTHETIC_MEMORY
    if memory <= 0:
        raise RunError(f"--replay-memory must be > 0, got {memory}")
    if args.save_every < 1:
        raise RunError(f"--save-every must be at least 1, got {args.save_every}")
    return RunSpec(method, scenario, replay, Path(core50) if core50 else None, latent_layer, memory,
                   parse_runs(args.runs))


def _overrides(pairs: List[str]) -> Dict[str, object]:
    """--set KEY=VALUE pairs, values parsed as int, float, bool or string."""
    out: Dict[str, object] = {}
    for pair in pairs:
        if "=" not in pair:
            raise RunError(f"--set {pair!r}: use KEY=VALUE")
        key, value = pair.split("=", 1)
        parsed: object = value
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


def make_config(spec: RunSpec, args: argparse.Namespace, seed: int) -> LearnerConfig:
    overrides = dict(method=spec.method, replay=spec.replay, replay_memory=spec.replay_memory,
                     storage=args.storage, seed=seed)
    if spec.core50 is None:
        overrides.update(SYNTHETIC_SETTINGS)
    overrides.update(_overrides(args.set))
    try:
        config = LearnerConfig.preset(args.preset, **overrides)
        config.check_compatible(spec.latent_layer)
    except (ValueError, TypeError) as e:
        raise RunError(str(e)) from None
    return config


def make_scenario(spec: RunSpec, args: argparse.Namespace, run: int):
    from .sources import Core50Scenario, SyntheticScenario

    if spec.core50 is None:
        try:
            return SyntheticScenario(n_batches=args.synthetic_batches, seed=args.seed + run,
                                     input_size=args.synthetic_size, frames_per_batch=args.synthetic_frames,
                                     difficulty=args.synthetic_difficulty)
        except ValueError as e:
            raise RunError(str(e)) from None
    scenario = Core50Scenario(spec.core50, scenario=spec.scenario, run=run, test_set=args.test_set,
                              filelists=args.filelists, skip_bad_images=args.skip_bad_images)
    scenario.check_images()
    return scenario


def plan_artifacts(args: argparse.Namespace, spec: RunSpec, classes: int, out: Path, scenario_size: int):
    """(directory, manifest) of the artifacts to train, without writing anything: --artifacts
    (checked against the run), or OUT/artifacts -- manifest None when they must be exported there.
    Artifacts in OUT that do not fit this run are refused unless --fresh (they belong to the runs
    saved in OUT)."""
    from ..export.manifest import Manifest

    if args.artifacts:
        manifest = Manifest.load(Path(args.artifacts), verify=True)
        manifest.check_latent_layer(spec.latent_layer)
        if manifest.input["size"] != scenario_size:
            raise RunError(f"the artifacts take {manifest.input['size']}px frames but the stream has {scenario_size}px; "
                           f"export again with --input-size {scenario_size}")
        if manifest.classes < classes:
            raise RunError(f"the artifacts have {manifest.classes} classes but the stream has {classes}; "
                           f"export again with --classes {classes}")
        return Path(args.artifacts), manifest
    directory = out / "artifacts"
    try:
        manifest = Manifest.load(directory)
    except ValueError:
        return directory, None
    have = (manifest.latent_layer, manifest.classes, manifest.input["size"])
    if have == (spec.latent_layer, classes, scenario_size):
        return directory, manifest
    if not args.fresh:
        raise RunError(f"{out} holds a run with other artifacts ({_describe(*have)}; this run needs "
                       f"{_describe(spec.latent_layer, classes, scenario_size)}): use --fresh to start over there "
                       f"or another --out")
    return directory, None


def _describe(layer: str, classes: int, size: int) -> str:
    return f"latent layer {layer}, {classes} classes, {size}px"


def ensure_artifacts(args: argparse.Namespace, spec: RunSpec, classes: int, out: Path, scenario_size: int):
    """The artifacts to train: --artifacts (checked against the run), or exported into OUT/artifacts."""
    directory, manifest = plan_artifacts(args, spec, classes, out, scenario_size)
    if manifest is not None:
        return directory, manifest
    from ..cli import load_weights_announced
    from ..export.exporter import export

    weights = load_weights_announced(args)
    return directory, export(weights, spec.latent_layer, classes, directory, input_size=scenario_size)


class LatentCache:
    """The test set pushed through the frozen front once; evaluation then only runs the back."""

    def __init__(self, front, test, chunk: int = 256) -> None:
        self.labels = test.labels
        self.front, self.test, self.chunk = front, test, chunk
        values = int(np.prod(front_shape(front)))
        self.latents = None
        if len(test) * values * 4 <= TEST_CACHE_LIMIT:
            self.latents = np.concatenate([front(test.frames[i:i + chunk]) for i in range(0, len(test), chunk)])

    def chunks(self):
        if self.latents is not None:
            yield self.latents
            return
        for i in range(0, len(self.test), self.chunk):
            yield self.front(self.test.frames[i:i + self.chunk])


def front_shape(front) -> Tuple[int, ...]:
    return tuple(front.manifest.latent_shape)


def _check_labels(labels: np.ndarray, classes: int, where: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise RunError(f"{where}: labels {int(labels.min())}..{int(labels.max())} do not fit the artifacts' "
                       f"{classes} classes; export with --classes {int(labels.max()) + 1} or more")


def _versions() -> Dict[str, str]:
    import onnxruntime as ort

    from .. import __version__

    return {"latent_replay": __version__, "onnxruntime": ort.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "machine": platform.machine()}


RUN_MARKERS = ("results.json", "run[0-9]", "artifacts/manifest.json")  # what makes a folder a run folder


def default_out(spec: RunSpec) -> Path:
    """Each experiment its own folder, so that one run never resumes or overwrites another:
    runs/METHOD-SCENARIO-REPLAY-LAYER (e.g. runs/ar1free-synthetic-latent-conv5_4_dw)."""
    scenario = str(spec.scenario) if spec.core50 else "synthetic"
    return Path("runs") / f"{spec.method}-{scenario}-{spec.replay}-{spec.latent_layer.replace('/', '_')}"


@dataclass
class Prepared:
    """One run, checked (source, learner settings, artifacts, saved state) before anything is written."""

    run: int
    scenario: object
    config: LearnerConfig
    classes: int


class Saved:
    """Batches on disk per run, for what to tell the user after Ctrl-C."""

    def __init__(self) -> None:
        self.batches: Dict[int, Tuple[int, int]] = {}  # run -> (saved batches, batches in the run)

    def message(self, out: Path) -> str:
        done = {r: v for r, v in sorted(self.batches.items()) if v[0] > 0}
        if not done:
            return "nothing was saved yet (the first batch had not finished)"
        parts = ", ".join(f"run {r} up to batch {k} of {n}" for r, (k, n) in done.items())
        return f"saved {parts} in {out}; the same command continues from there"


def _prepare(spec: RunSpec, args: argparse.Namespace, out: Path) -> List[Prepared]:
    """Everything that can be checked without writing: the data source, the learner settings
    (--set, method and layer), the artifacts, and what OUT already holds."""
    from ..folders import check_folder
    from .state import check_replaceable
    from .stream import STATE_MARKERS

    check_folder(out, RUN_MARKERS, "--out", "a run folder (no results.json or runN/)",
                 others=[(STATE_MARKERS[:2], "the state folder of `latent-replay stream`")])
    prepared = []
    for run in spec.runs:
        check_replaceable(out / f"run{run}" / "state")
        config = make_config(spec, args, seed=args.seed + run)
        scenario = make_scenario(spec, args, run)
        classes = args.classes or scenario.num_classes
        _, manifest = plan_artifacts(args, spec, classes, out, scenario.input_size)
        prepared.append(Prepared(run, scenario, config, manifest.classes if manifest is not None else classes))
    _check_existing(out, spec, args, prepared)
    return prepared


def _check_existing(out: Path, spec: RunSpec, args: argparse.Namespace, prepared: List[Prepared]) -> None:
    """Refuse (unless --fresh) an OUT whose results or saved runs belong to another experiment."""
    import json

    from .results import load_results
    from .state import STATE_META, state_dir

    if args.fresh:
        return
    again = "use --fresh to start over there, or another --out"
    previous = load_results(out / "results.json") or {}
    scenario = spec.scenario if spec.core50 else "synthetic"
    mine = {"method": spec.method, "scenario": scenario, "replay": spec.replay, "latent_layer": spec.latent_layer,
            "replay_memory": spec.replay_memory}
    other = [f"{k.replace('_', ' ')} {previous[k]}, not {mine[k]}" for k in mine
             if k in previous and previous[k] != mine[k]]
    if other:
        raise RunError(f"{out} holds the results of another experiment ({', '.join(other)}): {again}")
    for p in prepared:
        where = out / f"run{p.run}" / "state"
        try:
            meta = json.loads((state_dir(where) / STATE_META).read_text(encoding="utf-8"))
            saved = LearnerConfig.from_dict(meta["config"])
            layer, classes = meta["latent_layer"], int(meta["classes"])
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError):
            continue  # damaged: loading it reports that, with what to do
        diff = [f"latent layer {layer}, not {spec.latent_layer}"] if layer != spec.latent_layer else []
        diff += [f"{classes} classes, not {p.classes}"] if classes != p.classes else []
        now = p.config.to_dict()
        diff += [f"{k}={v}, not {now.get(k)}" for k, v in sorted(saved.to_dict().items()) if now.get(k) != v]
        if diff:
            shown = ", ".join(diff[:4]) + (", ..." if len(diff) > 4 else "")
            raise RunError(f"{out} holds run {p.run} saved with other settings ({shown}): {again}")


def run_one(p: Prepared, spec: RunSpec, args: argparse.Namespace, out: Path, progress: bool,
            saved: Optional[Saved] = None) -> dict:
    """One NICv2 run (or synthetic seed): returns {'run', 'batches': [...], 'complete'}."""
    from .engine import Back, Front
    from .learn import Learner
    from .state import StateError, load_state, save_state
    from .pool import make_pool
    from .memory import peak_rss_mb

    run, scenario, config = p.run, p.scenario, p.config
    saved = saved if saved is not None else Saved()
    artifacts, manifest = ensure_artifacts(args, spec, p.classes, out, scenario.input_size)
    front = Front(artifacts, manifest, args.device, args.threads, args.spin)
    back = Back(artifacts, manifest, args.device, args.threads, args.spin)
    device = "cuda" if front.device == "cuda" else "cpu"
    pool = None
    if config.uses_memory:
        pool = make_pool(device, config.replay_memory, tuple(manifest.latent_shape), config.storage, config.seed,
                         np.uint8 if manifest.latent_dtype == "uint8" else np.float32)
    learner = Learner(back, config, pool)
    state_dir = out / f"run{run}" / "state"
    records: List[dict] = []
    if not args.fresh:
        try:
            state = load_state(state_dir)
        except FileNotFoundError:
            state = None
        except StateError as e:
            raise RunError(f"{e}; {'or ' if e.previous else ''}use --fresh to start over") from None
        if state is not None:
            try:
                learner.load_state_dict(state)
            except ValueError as e:
                raise RunError(f"{out} holds a run with other settings ({e}); use another --out or --fresh") from None
            records = list(state["meta"].get("records", []))
            del state
    start = len(records)
    saved.batches[run] = (start, scenario.n_batches)
    if start >= scenario.n_batches:
        print(f"run {run}: already complete ({start} of {scenario.n_batches} batches in {state_dir}); "
              f"--fresh starts over", file=sys.stderr)
    elif start:
        print(f"run {run}: resuming at batch {start} of {scenario.n_batches} (state in {state_dir})", file=sys.stderr)
    test = scenario.test_set()
    _check_labels(test.labels, manifest.classes, "test set")
    cache = LatentCache(front, test)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=scenario.n_batches, initial=start, desc=f"run {run}", unit="batch", file=sys.stderr,
                   dynamic_ncols=True)
    stop = scenario.n_batches if args.max_batches is None else min(scenario.n_batches, start + args.max_batches)
    for i, batch in enumerate(scenario.iter_train(start), start=start):
        if i >= stop:
            break
        _check_labels(batch.labels, manifest.classes, batch.name)
        t0 = time.perf_counter()
        latents = np.concatenate([front(batch.frames[j:j + 256]) for j in range(0, len(batch), 256)])
        front_s = time.perf_counter() - t0
        stats = learner.train_batch(latents, batch.labels, i)
        accuracy = learner.evaluate(cache.chunks(), cache.labels)
        records.append({
            "batch": i, "name": batch.name, "patterns": len(batch), "accuracy": accuracy,
            "train_s": stats["time"], "front_s": front_s, "iterations": stats["iterations"],
            "loss": stats["loss"], "pool_patterns": len(pool) if pool is not None else 0,
            "pool_bytes": int(pool.nbytes) if pool is not None else 0, "peak_rss_mb": peak_rss_mb(),
            "bad_images": int(getattr(scenario, "bad_images", 0)),
        })
        if (i + 1) % args.save_every == 0 or i + 1 == stop:
            state = learner.state_dict()
            state["meta"]["records"] = records
            save_state(state, state_dir)
            saved.batches[run] = (len(records), scenario.n_batches)
        if bar is not None:
            bar.set_postfix(acc=f"{100 * accuracy:.1f}%", train=f"{stats['time']:.1f}s")
            bar.update(1)
    if bar is not None:
        bar.close()
    return {"run": run, "batches": records, "complete": len(records) == scenario.n_batches,
            "scenario": scenario.name, "n_batches": scenario.n_batches, "test_size": len(test),
            "config": config.to_dict(), "artifacts": str(artifacts)}


def run_command(args: argparse.Namespace) -> int:
    from ..folders import FolderLock

    spec = _resolve_spec(args)
    out = Path(args.out) if args.out else default_out(spec)
    prepared = _prepare(spec, args, out)  # every check that needs no write, before the first write
    if spec.core50 is None:
        print(f"no CORe50 path: running the built-in synthetic stream ({args.synthetic_size}px, difficulty "
              f"{args.synthetic_difficulty}; method {spec.method} at {spec.latent_layer}, M={spec.replay_memory}, "
              f"lr {SYNTHETIC_SETTINGS['lr_first']}, BRN momentum {SYNTHETIC_SETTINGS['brn_momentum_later']} "
              f"unless --set)", file=sys.stderr)
    if not args.out:
        print(f"output folder: {out} (--out to choose another)", file=sys.stderr)
    saved = Saved()
    with FolderLock(out, "--out"):
        _check_existing(out, spec, args, prepared)  # again, now that no other process can change it
        try:
            return _run_all(spec, args, out, prepared, saved)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(saved.message(out)) from None


def _run_all(spec: RunSpec, args: argparse.Namespace, out: Path, prepared: List[Prepared], saved: Saved) -> int:
    from ..atomic import write_json_atomic
    from .results import load_results, plot_accuracy, summarize, table

    results_path = out / "results.json"
    previous = {} if args.fresh else load_results(results_path) or {}
    runs: List[dict] = []
    for p in prepared:
        result = run_one(p, spec, args, out, progress=not args.quiet, saved=saved)
        runs.append(result)
        done = {r["run"]: r for r in (previous.get("runs") or [])}
        done.update({r["run"]: r for r in runs})
        write_json_atomic(results_path, _results(spec, args, list(done.values()), complete=False))
    results = _results(spec, args, runs, complete=all(r["complete"] for r in runs))
    write_json_atomic(results_path, results)
    reference = PAPER_REFERENCE.get((spec.method, spec.scenario, spec.replay)) if spec.core50 else None
    title = (f"{spec.method} / {'NICv2-%d' % spec.scenario if spec.core50 else 'synthetic stream'} / "
             f"{spec.replay} replay at {spec.latent_layer}, M={spec.replay_memory}")
    plot_accuracy(out / "accuracy.png", runs, title, reference)
    print(table(runs))
    print(f"results: {results_path}  plot: {out / 'accuracy.png'}")
    s = summarize(runs)
    if s and reference is not None:
        print(f"reference (PyTorch port, NICv2-391, AR1*-free, conv5_4/dw, M=1500): about {100 * reference:.0f}% "
              f"final accuracy; this run: {100 * s['final_accuracy_mean']:.2f}%")
    return 0


def _results(spec: RunSpec, args: argparse.Namespace, runs: List[dict], complete: bool) -> dict:
    from .results import summarize

    return {
        "complete": complete,
        "method": spec.method, "scenario": spec.scenario if spec.core50 else "synthetic",
        "replay": spec.replay, "latent_layer": spec.latent_layer, "replay_memory": spec.replay_memory,
        "preset": args.preset, "storage": args.storage, "device": args.device, "weights": args.weights,
        "test_set": args.test_set, "core50": str(spec.core50) if spec.core50 else None,
        "runs": sorted(runs, key=lambda r: r["run"]), "summary": summarize(runs), "versions": _versions(),
    }
