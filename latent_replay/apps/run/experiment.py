"""The NICv2 experiment (or the synthetic stream) end to end, resumable.

For every run: export (or reuse) the artifacts, push each training batch through the front once,
train the learner on its cached latents, evaluate on the test set's latents, then save the learner
state together with the per-batch records in one atomic directory. Re-running with the same `--out`
continues from the last saved batch of every run. Everything that can be checked without writing
(`prepare`) is checked before the first write.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from ...runtime.learn import LearnerConfig
from ...runtime.workspace import ArtifactSpec
from ..common import in_users_words
from .options import SYNTHETIC_OPTIONS, RunError, RunOptions

TEST_CACHE_LIMIT = 2 << 30  # test latents bigger than this are recomputed per evaluation
PROGRESS_FILE = "progress.json"
SMALL_BATCH = 100  # images: CORe50's NICv2 batches hold 300, for which the presets' learning rates are tuned
SMALL_STREAM_LR = 0.005  # measured on COIL-100 batches of 14 images (README: 'Your own images')


def small_stream_flags(method: str) -> List[str]:
    """The `--set` flags of `LearnerConfig.small_stream_settings` at SMALL_STREAM_LR (SI's penalty
    weight only for a method with SI)."""
    from ...runtime.learn.methods import method as method_named

    settings = LearnerConfig.small_stream_settings(SMALL_STREAM_LR)
    if not method_named(method).si:
        settings.pop("si_lambda")
    return [flag for key, value in settings.items() for flag in ("--set", f"{key}={value:g}")]
RUN_MARKERS = ("results.json", "run[0-9]", "artifacts/manifest.json", "progress.json")  # what makes a folder a run folder


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


def make_scenario(opts: RunOptions, run: int):
    from ...runtime.sources import Core50Scenario, FolderScenario, SyntheticScenario

    if opts.folder is not None:  # the run orders the batches; every run is tested on the same held-out images
        return FolderScenario(opts.folder, opts.first_classes, opts.per_batch, opts.test_fraction, seed=opts.seed + run,
                              split_seed=opts.seed, input_size=opts.input_size, skip_bad_images=opts.skip_bad_images)
    if opts.synthetic:
        try:
            return SyntheticScenario(n_batches=opts.synthetic_batches, seed=opts.seed + run,
                                     input_size=opts.synthetic_size, frames_per_batch=opts.synthetic_frames,
                                     difficulty=opts.synthetic_difficulty)
        except ValueError as e:
            raise RunError(in_users_words(e, SYNTHETIC_OPTIONS)) from None
    scenario = Core50Scenario(opts.core50, scenario=opts.scenario, run=run, test_set=opts.test_set,
                              filelists=opts.filelists, skip_bad_images=opts.skip_bad_images)
    scenario.check_images()
    return scenario


def plan_artifacts(opts: RunOptions, spec: ArtifactSpec, out: Path):
    """(directory, manifest) of the artifacts to train, without writing anything: --artifacts
    (checked against the run), or OUT/artifacts -- manifest None when they must be exported there.
    Artifacts in OUT that do not fit this run are refused unless --fresh (they belong to the runs
    saved in OUT)."""
    from ...runtime.workspace import existing_artifacts, given_artifacts

    if opts.artifacts:
        return opts.artifacts, given_artifacts(opts.artifacts, spec)
    directory = out / "artifacts"
    manifest, other = existing_artifacts(directory, spec)
    if other is not None and not opts.fresh:
        raise RunError(f"{out} holds a run with other artifacts ({other}; this run needs {spec.describe()}): "
                       f"use --fresh to start over there or another --out")
    return directory, manifest


def ensure_artifacts(opts: RunOptions, spec: ArtifactSpec, out: Path):
    """The artifacts to train: --artifacts (checked against the run), or exported into OUT/artifacts."""
    from ..common import export_for

    directory, manifest = plan_artifacts(opts, spec, out)
    if manifest is None:
        manifest = export_for(directory, spec, opts.weights, opts.seed, opts.preprocessing, width=opts.width)
    return directory, manifest


class TestLatents:
    """The test set through the frozen front, once: evaluation then only runs the back. A test set
    whose latents would not fit TEST_CACHE_LIMIT is decoded and encoded chunk by chunk per evaluation."""

    def __init__(self, front, scenario) -> None:
        from ...runtime.workspace import encode_chunks

        self.front, self.scenario = front, scenario
        values = int(np.prod(front.manifest.latent_shape))
        self.size = scenario.test_size
        self.cached: Optional[List[Tuple[np.ndarray, np.ndarray]]] = None
        if self.size * values * 4 <= TEST_CACHE_LIMIT:
            self.cached = list(encode_chunks(front, scenario.iter_test()))

    def chunks(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """(latents, labels) chunks of the whole test set."""
        from ...runtime.workspace import encode_chunks

        if self.cached is not None:
            return iter(self.cached)
        return encode_chunks(self.front, self.scenario.iter_test())


def _check_labels(labels: np.ndarray, classes: int, where: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise RunError(f"{where}: labels {int(labels.min())}..{int(labels.max())} do not fit the artifacts' "
                       f"{classes} classes; export with --classes {int(labels.max()) + 1} or more")


def prepare(opts: RunOptions, out: Path) -> List[Prepared]:
    """Everything that can be checked without writing: the data source, the learner settings
    (--set, method and layer), the artifacts, and what OUT already holds."""
    from ...folders import check_folder
    from ...runtime.state import check_replaceable
    from ..stream.state import STATE_MARKERS

    check_folder(out, RUN_MARKERS, "--out", "a run folder (no results.json or runN/)",
                 others=[(STATE_MARKERS[:2], "the state folder of `latent-replay stream`")])
    prepared = []
    for run in opts.runs:
        check_replaceable(out / f"run{run}" / "state")
        config = opts.learner_config(seed=opts.seed + run)
        scenario = make_scenario(opts, run)
        classes = opts.classes or scenario.num_classes
        spec = ArtifactSpec(opts.latent_layer, classes, scenario.input_size, opts.engine)
        _, manifest = plan_artifacts(opts, spec, out)
        prepared.append(Prepared(run, scenario, config, manifest.classes if manifest is not None else classes))
    check_existing(opts, out, prepared)
    return prepared


def small_stream_note(opts: RunOptions, prepared: List[Prepared]) -> Optional[str]:
    """A warning for a stream whose batches are so small that the preset's learning rates learn little
    from them (None when the batches are large or --set chose the later rate)."""
    if not prepared or "lr_later" in opts.overrides:
        return None
    sizes = prepared[0].scenario.batch_sizes()
    if not sizes or len(sizes) < 2:
        return None
    typical = int(np.median(sizes[1:]))
    if typical >= SMALL_BATCH:
        return None
    return (f"note: the batches of this stream hold about {typical} images; the {opts.preset} preset's learning "
            f"rates ({prepared[0].config.lr_first:g}, then {prepared[0].config.lr_later:g}) are tuned for CORe50's "
            f"3,000 and then 300 and learn little from each small batch; train every batch at one higher rate, e.g. "
            f"{' '.join(small_stream_flags(opts.method))} (README: 'Your own images')")


def check_existing(opts: RunOptions, out: Path, prepared: List[Prepared]) -> None:
    """Refuse (unless --fresh) an OUT whose results or saved runs belong to another experiment."""
    from ...runtime.state import STATE_META, state_dir
    from .results import load_results

    if opts.fresh:
        return
    again = "use --fresh to start over there, or another --out"
    previous = load_results(out / "results.json") or {}
    mine = {"method": opts.method, "scenario": opts.scenario if opts.core50 else opts.scenario_label,
            "replay": opts.replay, "latent_layer": opts.latent_layer, "replay_memory": opts.replay_memory,
            "weights": opts.weights}
    other = [f"{k.replace('_', ' ')} {previous[k]}, not {mine[k]}" for k in mine
             if k in previous and previous[k] != mine[k]]
    if other:
        raise RunError(f"{out} holds the results of another experiment ({', '.join(other)}): {again}")
    for p in prepared:
        try:
            meta = json.loads((state_dir(out / f"run{p.run}" / "state") / STATE_META).read_text(encoding="utf-8"))
            saved = LearnerConfig.from_dict(meta["config"])
            layer, classes = meta["latent_layer"], int(meta["classes"])
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError):
            continue  # damaged: loading it reports that, with what to do
        diff = [f"latent layer {layer}, not {opts.latent_layer}"] if layer != opts.latent_layer else []
        diff += [f"{classes} classes, not {p.classes}"] if classes != p.classes else []
        now = p.config.to_dict()
        diff += [f"{k}={v}, not {now.get(k)}" for k, v in sorted(saved.to_dict().items()) if now.get(k) != v]
        if diff:
            shown = ", ".join(diff[:4]) + (", ..." if len(diff) > 4 else "")
            raise RunError(f"{out} holds run {p.run} saved with other settings ({shown}): {again}")


def _resume(learner, state_dir: Path, opts: RunOptions, out: Path) -> List[dict]:
    """The per-batch records of a saved run (its learner state loaded), or [] to start afresh."""
    from ...runtime.state import StateError, load_state

    if opts.fresh:
        return []
    try:
        state = load_state(state_dir)
    except FileNotFoundError:
        return []
    except StateError as e:
        raise RunError(f"{e}; {'or ' if e.previous else ''}use --fresh to start over") from None
    try:
        learner.load_state_dict(state)
    except ValueError as e:
        raise RunError(f"{out} holds a run with other settings ({e}); use another --out or --fresh") from None
    return list(state["meta"].get("records", []))


def run_one(p: Prepared, opts: RunOptions, out: Path, saved: Optional[Saved] = None) -> dict:
    """One NICv2 run (or synthetic seed): returns {'run', 'batches': [...], 'complete'}."""
    from ...runtime.memory import peak_rss_mb
    from ...runtime.state import save_state
    from ...runtime.workspace import encode, open_learner

    run, scenario, config = p.run, p.scenario, p.config
    saved = saved if saved is not None else Saved()
    spec = ArtifactSpec(opts.latent_layer, p.classes, scenario.input_size, opts.engine)
    artifacts, manifest = ensure_artifacts(opts, spec, out)
    opened = open_learner(artifacts, manifest, config, opts.device, opts.threads, opts.spin, opts.engine)
    front, learner, pool = opened.front, opened.learner, opened.learner.pool
    state_dir = out / f"run{run}" / "state"
    records = _resume(learner, state_dir, opts, out)
    start = len(records)
    saved.batches[run] = (start, scenario.n_batches)
    if start < scenario.n_batches:  # a finished run writes nothing new (its results.json is rewritten as it was)
        write_progress(out, run, start, scenario.n_batches)
    if start >= scenario.n_batches:
        print(f"run {run}: already complete ({start} of {scenario.n_batches} batches in {state_dir}); "
              f"--fresh starts over", file=sys.stderr)
    elif start:
        print(f"run {run}: resuming at batch {start} of {scenario.n_batches} (state in {state_dir})", file=sys.stderr)
    _check_labels(scenario.test_labels(), manifest.classes, "test set")
    class_names = output_names(scenario.class_names, manifest.classes)
    test = TestLatents(front, scenario)
    bar = None
    if not opts.quiet:
        from tqdm import tqdm

        bar = tqdm(total=scenario.n_batches, initial=start, desc=f"run {run}", unit="batch", file=sys.stderr,
                   dynamic_ncols=True)
    stop = scenario.n_batches if opts.max_batches is None else min(scenario.n_batches, start + opts.max_batches)
    try:
        for i, batch in enumerate(scenario.iter_train(start), start=start):
            if i >= stop:
                break
            _check_labels(batch.labels, manifest.classes, batch.name)
            t0 = time.perf_counter()
            latents = encode(front, batch.frames)
            front_s = time.perf_counter() - t0
            stats = learner.train_batch(latents, batch.labels, i)
            accuracy, class_accuracy = _evaluate(learner, test, scenario.num_classes)
            records.append({
                "batch": i, "name": batch.name, "patterns": len(batch), "accuracy": accuracy,
                "classes": sorted(int(c) for c in np.unique(batch.labels)), "class_accuracy": class_accuracy,
                "train_s": stats["time"], "front_s": front_s, "iterations": stats["iterations"],
                "loss": stats["loss"], "pool_patterns": len(pool) if pool is not None else 0,
                "pool_bytes": int(pool.nbytes) if pool is not None else 0, "peak_rss_mb": peak_rss_mb(),
                "bad_images": int(getattr(scenario, "bad_images", 0)),
            })
            if (i + 1) % opts.save_every == 0 or i + 1 == stop:
                state = learner.state_dict()
                state["meta"]["records"] = records
                state["meta"]["class_names"] = class_names
                save_state(state, state_dir)
                saved.batches[run] = (len(records), scenario.n_batches)
            write_progress(out, run, len(records), scenario.n_batches, accuracy)
            if bar is not None:
                bar.set_postfix(acc=f"{100 * accuracy:.1f}%", train=f"{stats['time']:.1f}s")
                bar.update(1)
    finally:
        if bar is not None:  # also on Ctrl-C or an error: the message that follows starts on a line of its own
            bar.close()
    return {"run": run, "batches": records, "complete": len(records) == scenario.n_batches,
            "scenario": scenario.name, "n_batches": scenario.n_batches, "test_size": test.size,
            "config": config.to_dict(), "artifacts": str(artifacts), "engine": learner.back.name,
            "class_names": class_names, "plan": scenario.describe()}


def write_progress(out: Path, run: int, batches: int, of: int, accuracy: Optional[float] = None) -> None:
    """OUT/progress.json: the run and batch a running experiment is at, for whoever watches the folder
    (`latent-replay sweep` prints its cells' progress from it)."""
    from ...atomic import write_json_atomic

    write_json_atomic(out / PROGRESS_FILE, {"run": run, "batch": batches, "batches": of, "accuracy": accuracy})


def output_names(scenario_names: List[str], outputs: int) -> List[str]:
    """A name per output of the artifacts: the scenario's class names, `class_N` for spare outputs."""
    return [scenario_names[c] if c < len(scenario_names) else f"class_{c}" for c in range(outputs)]


def _evaluate(learner, test: TestLatents, classes: int) -> Tuple[float, List[Optional[float]]]:
    """(accuracy over every test frame, accuracy per class: one row of the accuracy matrix)."""
    from .metrics import per_class_accuracy

    predicted, truth = [], []
    for latents, labels in test.chunks():
        predicted.append(learner.predict(latents)[0])
        truth.append(np.asarray(labels))
    pred = np.concatenate(predicted) if predicted else np.zeros(0, np.int64)
    true = np.concatenate(truth) if truth else np.zeros(0, np.int64)
    accuracy = float(np.mean(pred == true)) if len(true) else 0.0
    return accuracy, per_class_accuracy(pred, true, max(classes, int(true.max()) + 1 if len(true) else 0))
