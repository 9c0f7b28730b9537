"""Split MobileNetV1 at the latent layer and write the front, the back's training step and the
manifest into one directory, atomically.

The back is written for the default engine as standard ONNX (`back/step.onnx`, `back/step_si.onnx`,
`back/eval.onnx`, the initial arrays in `back/initial_state.npz`; see `step_graph`), and, on request
(`engines` containing "ort-training"), also as ONNX Runtime's on-device training artifacts in
`back/ort_training/`. Those need onnxruntime-training; its `onnxruntime.training/__init__` imports
torch (through its `optim` package), but the artifact generator (`onnxblock`) does not need it, so
it is imported on its own.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx

from ..models import graph as g
from ..models import mobilenet_v1 as net
from ..models.weights import MobileNetWeights
from .. import __version__
from ..atomic import default_mode
from . import step_graph
from .manifest import ENGINES, MANIFEST_NAME, Manifest, sha256_file

FRONT_FILE = "front.onnx"
BACK_DIR = "back"
STEP_FILES = {"step": "step.onnx", "step_si": "step_si.onnx", "eval": "eval.onnx",
              "initial_state": "initial_state.npz"}
ORT_TRAINING_DIR = "ort_training"
ORT_TRAINING_FILES = {
    "training_model": "training_model.onnx",
    "eval_model": "eval_model.onnx",
    "optimizer_model": "optimizer_model.onnx",
    "checkpoint": "checkpoint",
}


class ExportError(ValueError):
    """A user-facing export failure (bad layer, bad class count, unwritable output)."""


def _artifacts_module():
    """`onnxruntime.training.artifacts` without running `onnxruntime.training/__init__` (torch)."""
    name = "onnxruntime.training"
    if name not in sys.modules:
        spec = importlib.util.find_spec("onnxruntime")
        if spec is None or spec.origin is None:
            raise ExportError("onnxruntime is not installed")
        training_dir = os.path.join(os.path.dirname(spec.origin), "training")
        if not os.path.isdir(os.path.join(training_dir, "onnxblock")):
            raise ExportError("--engine ort-training needs onnxruntime-training 1.19.2 instead of onnxruntime "
                              "(a separate virtual environment: see the README's engines section)")
        package = types.ModuleType(name)
        package.__path__ = [training_dir]  # type: ignore[attr-defined]
        sys.modules[name] = package
    from onnxruntime.training import artifacts  # noqa: E402

    return artifacts


@contextlib.contextmanager
def _native_stderr_silenced():
    """ORT's training-graph passes log every transformer at info level to the C stderr, whatever
    the Python-side severity; keep that out of the user's terminal (and show it if export fails)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace")[-4000:])
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _optimize_front(model: onnx.ModelProto, path: Path) -> None:
    """Save the front after ORT's portable (basic) graph optimizations: constant folding, redundant
    node elimination. Provider-specific fusions are left to the session at load time."""
    import onnxruntime as ort

    raw = path.with_suffix(".raw.onnx")
    onnx.save(model, raw)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(path)
    options.log_severity_level = 3
    ort.InferenceSession(str(raw), options, providers=["CPUExecutionProvider"])
    raw.unlink()
    optimized = onnx.load(str(path))
    if any(n.op_type == "BatchNormalization" for n in optimized.graph.node):
        raise RuntimeError("internal error: normalization left in the front graph")


def _share_checkpoint_inputs(evaluation: onnx.ModelProto, training: onnx.ModelProto, checkpoint: List[str]) -> None:
    """Give the eval model every checkpoint array as an input, in the training model's order:
    ORT's Module feeds the eval model all parameters, used or not. Initializers of the same name
    are dropped (the checkpoint supplies them)."""
    names = set(checkpoint)
    params = [i for i in training.graph.input if i.name in names]
    keep = [i for i in evaluation.graph.initializer if i.name not in names]
    del evaluation.graph.initializer[:]
    evaluation.graph.initializer.extend(keep)
    evaluation.graph.input.extend(params)


def _write_step(weights: MobileNetWeights, latent_layer: str, classes: int, input_size: int,
                input_order: str, back_dir: Path) -> Dict[str, List[str]]:
    """The default engine's files: the step graph (plain and with SI), the eval graph, the arrays."""
    for role, si in (("step", False), ("step_si", True)):
        model, spec = step_graph.build_step(latent_layer, classes, weights.preprocessing, input_size, input_order,
                                            si=si, arch=weights.arch)
        onnx.save(model, str(back_dir / STEP_FILES[role]))
    evaluation = g.build_back(weights, latent_layer, classes, "eval", input_size, input_order, params_as_inputs=True)
    onnx.save(evaluation, str(back_dir / STEP_FILES["eval"]))
    arrays, trainable, carried = g.back_parameters(weights, latent_layer, classes, input_size)
    with open(back_dir / STEP_FILES["initial_state"], "wb") as f:
        np.savez(f, **arrays)
    return {"trainable": trainable, "carried": carried, "brn_layers": spec.brn_layers, "si_params": spec.si_params}


def _write_ort_training(weights: MobileNetWeights, latent_layer: str, classes: int, input_size: int,
                        input_order: str, out_dir: Path) -> None:
    """ONNX Runtime's on-device training artifacts of the same back (onnxruntime-training only)."""
    import onnxruntime as ort

    artifacts = _artifacts_module()
    ort.set_default_logger_severity(3)
    train = g.build_back(weights, latent_layer, classes, "train", input_size, input_order)
    _, trainable, _ = g.back_parameters(weights, latent_layer, classes, input_size)
    constants = [i.name for i in train.graph.initializer if i.name not in trainable]
    brn_layers = [l.name for l in net.split_layers(latent_layer, input_size, weights.arch)[1]]
    stats = [name for layer in brn_layers for name in g.batch_stat_names(layer)]
    out_dir.mkdir()
    with _native_stderr_silenced():
        artifacts.generate_artifacts(
            train, requires_grad=trainable, frozen_params=constants,
            loss=artifacts.LossType.CrossEntropyLoss, optimizer=artifacts.OptimType.SGD,
            artifact_directory=str(out_dir), additional_output_names=stats or None,
            loss_input_names=[g.LOGITS],
        )
    # ORT derives the eval model by switching BatchNormalization to inference mode, which cannot hold
    # the batch-statistics outputs; the eval model is instead the same back built in eval mode, with
    # the checkpoint's arrays as inputs so that it shares them with the training model.
    evaluation = g.build_back(weights, latent_layer, classes, "eval", input_size, input_order)
    training = onnx.load(str(out_dir / ORT_TRAINING_FILES["training_model"]))
    _share_checkpoint_inputs(evaluation, training, trainable + constants)
    onnx.save(evaluation, str(out_dir / ORT_TRAINING_FILES["eval_model"]))


def check_engines(engines: Sequence[str]) -> List[str]:
    """The engines to export for, validated; the step engine is always written."""
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise ExportError(f"unknown engine {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    if "ort-training" in engines:
        _artifacts_module()  # fails now, before anything is written, without onnxruntime-training
    return [e for e in ENGINES if e == "step" or e in engines]


def check_output(out: Path) -> Path:
    """The export folder as an absolute path, refused (ExportError) unless it is new, empty or a
    previous export: replacing it must never delete anything else. Touches nothing."""
    from ..folders import FolderError, absolute, check_folder, refuse_current_folder

    try:
        resolved = absolute(out, "--out")
        refuse_current_folder(resolved, "--out", str(out), "artifacts")
        check_folder(resolved, [MANIFEST_NAME], "--out", "an export (no manifest.json)")
    except FolderError as e:
        raise ExportError(str(e)) from None
    return resolved


def export(weights: MobileNetWeights, latent_layer: str, classes: int, out: Path,
           input_size: int = net.DEFAULT_INPUT_SIZE, input_order: str = "BGR",
           progress: Optional[callable] = None, engines: Sequence[str] = ("step",)) -> Manifest:
    """Write DIR/front.onnx, DIR/back/*, DIR/manifest.json. All or nothing: built in a temporary
    sibling directory and moved into place only once complete. An existing DIR is replaced only
    when it is empty or holds a previous export."""
    try:
        net.check_latent_layer(latent_layer)
    except ValueError as e:
        raise ExportError(str(e)) from None
    if classes < 2:
        raise ExportError(f"--classes must be at least 2, got {classes}")
    if input_order not in ("BGR", "RGB"):
        raise ExportError(f"input channel order must be BGR or RGB, not {input_order!r}")
    try:
        weights.validate(input_size)
    except ValueError as e:
        raise ExportError(str(e)) from None
    engines = check_engines(engines)
    shown = out
    out = check_output(out)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    except OSError as e:
        raise ExportError(f"cannot write to {shown}: {e.strerror or e}") from None
    try:
        step = progress or (lambda msg: None)
        step("front")
        _optimize_front(g.build_front(weights, latent_layer, input_size, input_order), tmp / FRONT_FILE)
        step("back")
        (tmp / BACK_DIR).mkdir()
        names = _write_step(weights, latent_layer, classes, input_size, input_order, tmp / BACK_DIR)
        if "ort-training" in engines:
            step("ORT training artifacts")
            _write_ort_training(weights, latent_layer, classes, input_size, input_order,
                                tmp / BACK_DIR / ORT_TRAINING_DIR)
        manifest = _manifest(weights, latent_layer, classes, input_size, input_order, tmp, names, engines)
        manifest.save(tmp)
        os.chmod(tmp, default_mode(directory=True))  # mkdtemp's 0700 must not become the export's mode
        _replace_dir(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):  # e.g. disk full: nothing half-written is left, a previous export is kept
            raise ExportError(f"cannot write the export to {shown}: {e.strerror or e}") from None
        raise
    return manifest


def _manifest(weights: MobileNetWeights, latent_layer: str, classes: int, input_size: int,
              input_order: str, directory: Path, names: Dict[str, List[str]], engines: List[str]) -> Manifest:
    import onnxruntime as ort

    files = {"front": FRONT_FILE}
    files.update({role: f"{BACK_DIR}/{name}" for role, name in STEP_FILES.items()})
    if "ort-training" in engines:
        files.update({role: f"{BACK_DIR}/{ORT_TRAINING_DIR}/{name}" for role, name in ORT_TRAINING_FILES.items()})
    cost = net.split_cost(latent_layer, input_size, classes, weights.arch)
    return Manifest(
        latent_layer=latent_layer,
        latent_shape=tuple(net.latent_shape(latent_layer, input_size, weights.arch)),
        latent_dtype="uint8" if latent_layer == net.DATA else "float32",
        classes=classes,
        input={"name": g.FRAMES_INPUT, "layout": "NHWC", "dtype": "uint8", "size": input_size,
               "channel_order": input_order},
        preprocessing=weights.preprocessing.to_dict(),
        weights_source=weights.source,
        files={role: {"path": rel, "sha256": sha256_file(directory / rel)} for role, rel in files.items()},
        trainable=names["trainable"],
        carried=names["carried"],
        brn_layers=names["brn_layers"],
        si_params=names["si_params"],
        engines=engines,
        head=g.HEAD_WEIGHT,
        architecture=weights.arch.to_dict(),
        class_names=list(weights.class_names or []) if weights.head_for(classes)[2] else [],
        versions={"latent_replay": __version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                  "numpy": np.__version__, "opset": str(g.OPSET)},
        cost={"front_macs": cost.front_macs, "back_macs": cost.back_macs,
              "front_params": cost.front_params, "back_params": cost.back_params},
    )


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished export into place; an older export there is replaced only at the end,
    and only if it still is an export (or an empty folder) at this moment."""
    check_output(out)
    old = None
    if os.path.lexists(out):
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
