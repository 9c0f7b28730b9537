"""`latent-replay run`: the command line of the experiment (see `experiment.py`), its results and report."""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

from ...export.manifest import ENGINES
from ...runtime.learn.config import PRESETS
from ...runtime.learn.methods import spellings
from ..common import add_weights_arguments, check_device
from .options import SYNTHETIC_DIFFICULTY, SYNTHETIC_MEMORY, SYNTHETIC_SETTINGS, SYNTHETIC_SIZE, RunOptions, \
    options_from_args

PAPER_REFERENCE = {("ar1free", 391, "latent"): 0.77}  # PyTorch port, conv5_4/dw, M=1500 (docs/algorithms.md)


RUN_DESCRIPTION = ("Train the back batch by batch (latent replay + CWR*/AR1*/AR1*-free) and evaluate "
                   "after every batch. Accepts the seed's form too: `latent-replay run AR1F 391 latent "
                   "/data/core50 --latent_layer pool6 --replay_memory 1500`. Without a CORe50 path it "
                   "runs the synthetic stream. Re-running with the same --out resumes.")


def add_run_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="continual-learning experiment: CORe50 NICv2 or the built-in synthetic stream",
                       description=RUN_DESCRIPTION)
    add_run_arguments(p)
    p.set_defaults(handler=run_command)


def run_parser() -> argparse.ArgumentParser:
    """A parser of `run`'s arguments alone (what `sweep` turns each of its cells into)."""
    p = argparse.ArgumentParser(prog="latent-replay run", description=RUN_DESCRIPTION)
    add_run_arguments(p)
    return p


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Every option of `run` (also `sweep`'s, where some may be lists)."""
    p.add_argument("method_pos", nargs="?", metavar="METHOD", help=f"{', '.join(spellings())} (default AR1F)")
    p.add_argument("scenario_pos", nargs="?", metavar="SCENARIO", help="NICv2 scenario: 79, 196 or 391 (default)")
    p.add_argument("replay_pos", nargs="?", metavar="REPLAY", help="no, pure or latent (default)")
    p.add_argument("core50_pos", nargs="?", metavar="CORE50",
                   help="folder with core50_128x128/, or folder:DIR for your own images (DIR/CLASS/*.jpg or "
                        "DIR/CLASS/SESSION/*.jpg); omit: the synthetic stream")
    p.add_argument("--method", help="same as METHOD")
    p.add_argument("--scenario", type=int, help="same as SCENARIO")
    p.add_argument("--replay", help="same as REPLAY")
    p.add_argument("--core50", help="same as CORE50")
    p.add_argument("--latent-layer", "--latent_layer", dest="latent_layer", default=None,
                   help="latent replay layer (default conv5_4/dw; pool6 for CWR, data for pure replay)")
    p.add_argument("--replay-memory", "--replay_memory", dest="replay_memory", type=int, default=None,
                   help=f"replay memory size M, > 0 (default 1500, the paper's; {SYNTHETIC_MEMORY} on the synthetic "
                        f"stream)")
    p.add_argument("--runs", default="0", help="NICv2 runs (batch orders), e.g. 0-4 (averaged); default 0")
    p.add_argument("--preset", choices=list(PRESETS), default="pytorch",
                   help="pytorch (default): the PyTorch port's hyper-parameters with the paper's rules; port: the "
                        "port's code exactly where it differs from the paper; caffe: the Caffe code's settings")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any learner setting, e.g. --set epochs=2 --set lr_later=1e-4 (repeatable)")
    p.add_argument("--storage", choices=["fp32", "fp16", "uint8"], default="fp32", help="replay pool dtype")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu",
                   help="cpu (default), cuda (CUDA provider, pool in GPU memory with pycuda) or auto")
    p.add_argument("--engine", choices=list(ENGINES), default="step",
                   help="step (default: the exported standard-ONNX training step, any onnxruntime) or "
                        "ort-training (ONNX Runtime's training artifacts; needs onnxruntime-training)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    p.add_argument("--no-spin", dest="spin", action="store_false",
                   help="ORT threads sleep instead of busy-waiting between operators (faster on a busy CPU)")
    p.add_argument("--test-set", choices=["reduced", "full"], default="reduced",
                   help="CORe50 test set: every 20th frame (reference, default) or all 44,972")
    p.add_argument("--skip-bad-images", action="store_true", help="skip (and count) unreadable CORe50 images")
    p.add_argument("--filelists", help="folder with NICv2 filelists (default: the ones shipped with the package)")
    p.add_argument("--first-classes", type=int, default=None,
                   help="folder stream: classes in batch 0, their first session (default 10, as NICv2)")
    p.add_argument("--per-batch", type=int, default=None,
                   help="folder stream: images per batch (default: one class-session per batch, as NICv2)")
    p.add_argument("--test-fraction", type=float, default=None,
                   help="folder stream without DIR/test/: held-out share of every class-session (default 0.2)")
    p.add_argument("--input-size", type=int, default=128,
                   help="folder stream: square side the images are cropped and resized to (default 128)")
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


def run_command(args: argparse.Namespace) -> int:
    from ...folders import FolderLock
    from .experiment import Saved, check_existing, prepare, small_stream_note

    opts = options_from_args(args)
    check_device(opts.device)
    out = opts.out or opts.default_out()
    prepared = prepare(opts, out)  # every check that needs no write, before the first write
    if opts.synthetic:
        print(f"no CORe50 path: running the built-in synthetic stream ({opts.synthetic_size}px, difficulty "
              f"{opts.synthetic_difficulty}; method {opts.method} at {opts.latent_layer}, M={opts.replay_memory}, "
              f"lr {SYNTHETIC_SETTINGS['lr_first']}, BRN momentum {SYNTHETIC_SETTINGS['brn_momentum_later']} "
              f"unless --set)", file=sys.stderr)
    note = small_stream_note(opts, prepared)
    if note:
        print(note, file=sys.stderr)
    if opts.out is None:
        print(f"output folder: {out} (--out to choose another)", file=sys.stderr)
    saved = Saved()
    with FolderLock(out, "--out"):
        check_existing(opts, out, prepared)  # again, now that no other process can change it
        try:
            return _run_all(opts, out, prepared, saved)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(saved.message(out)) from None


def _run_all(opts: RunOptions, out: Path, prepared: list, saved) -> int:
    from ...atomic import write_json_atomic
    from .experiment import run_one
    from .results import load_results, plot_accuracy, plot_accuracy_matrix, stopped_note, summarize, table

    results_path = out / "results.json"
    previous = {} if opts.fresh else load_results(results_path) or {}
    runs: List[dict] = []
    for p in prepared:
        runs.append(run_one(p, opts, out, saved=saved))
        done = {r["run"]: r for r in (previous.get("runs") or [])}
        done.update({r["run"]: r for r in runs})
        write_json_atomic(results_path, _results(opts, list(done.values()), complete=False))
    write_json_atomic(results_path, _results(opts, runs, complete=all(r["complete"] for r in runs)))
    reference = PAPER_REFERENCE.get((opts.method, opts.scenario, opts.replay)) if opts.core50 else None
    stopped = stopped_note(runs)
    stream = ("synthetic stream" if opts.synthetic else f"images of {opts.folder}" if opts.folder
              else "NICv2-%d" % opts.scenario)
    title = (f"{opts.method} / {stream} / {opts.replay} replay at {opts.latent_layer}, M={opts.replay_memory}"
             + (f" ({stopped})" if stopped else ""))
    plot_accuracy(out / "accuracy.png", runs, title, reference)
    named = {tuple(r.get("class_names") or ()) for r in runs}  # synthetic runs draw other objects per seed
    names = list(named.pop()) if len(named) == 1 else None
    heat = plot_accuracy_matrix(out / "accuracy_matrix.png", runs, title, names)
    print(table(runs))
    print(f"results: {results_path}  plots: {out / 'accuracy.png'}"
          + (f", {out / 'accuracy_matrix.png'}" if heat else ""))
    s = summarize(runs)
    if s and reference is not None:
        print(f"reference (PyTorch port, NICv2-391, AR1*-free, conv5_4/dw, M=1500): about {100 * reference:.0f}% "
              f"final accuracy; this run: {100 * s['final_accuracy_mean']:.2f}%")
    return 0


def _versions() -> Dict[str, str]:
    import onnxruntime as ort

    from ... import __version__

    return {"latent_replay": __version__, "onnxruntime": ort.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "machine": platform.machine()}


def _results(opts: RunOptions, runs: List[dict], complete: bool) -> dict:
    from .results import run_entry, stopped_note, summarize

    return {
        "complete": complete, "stopped": stopped_note(runs),
        "method": opts.method, "scenario": opts.scenario if opts.core50 else opts.scenario_label,
        "replay": opts.replay, "latent_layer": opts.latent_layer, "replay_memory": opts.replay_memory,
        "preset": opts.preset, "storage": opts.storage, "device": opts.device, "engine": opts.engine,
        "weights": opts.weights, "test_set": opts.test_set, "core50": str(opts.core50) if opts.core50 else None,
        "folder": str(opts.folder) if opts.folder else None,
        "runs": [run_entry(r) for r in sorted(runs, key=lambda r: r["run"])], "summary": summarize(runs),
        "versions": _versions(),
    }
