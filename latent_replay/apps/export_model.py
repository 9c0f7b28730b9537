"""`latent-replay export-model`: the learned model as one plain inference ONNX.

Front + eval-mode back with the learner's current parameters (consolidated CWR* head, carried BRN
statistics) baked in as initializers. The result needs no training build: any recent onnxruntime
(CPU, CUDA, TensorRT) runs it, e.g. on a board that only has onnxruntime-gpu. Its ONNX metadata
(`metadata_props`, read with `session.get_modelmeta().custom_metadata_map`) says what it needs and
what it answers: the class names, which outputs were trained, the input format and preprocessing
(`METADATA_KEYS`). `latent-replay predict` builds the same model in memory from a state.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import onnx
from onnx import compose, helper, numpy_helper

from ..export.manifest import Manifest
from .common import UserError

BACK_PREFIX = "back/"


def _initial_arrays(artifacts: Path, manifest: Manifest) -> Dict[str, np.ndarray]:
    """The back's exported arrays (parameters and carried statistics), as numpy."""
    with np.load(manifest.path(artifacts, "initial_state"), allow_pickle=False) as z:
        return {name: z[name] for name in z.files}


def inference_model(artifacts: Path, parameters: Dict[str, np.ndarray]) -> onnx.ModelProto:
    """frames (uint8 NHWC) -> logits and probabilities, with `parameters` overriding the checkpoint's."""
    artifacts = Path(artifacts)
    manifest = Manifest.load(artifacts, verify=True)
    arrays = _initial_arrays(artifacts, manifest)
    unknown = sorted(set(parameters) - set(arrays))
    if unknown:
        raise ValueError(f"parameters {', '.join(unknown[:3])} are not in these artifacts")
    arrays.update(parameters)
    back = onnx.load(str(manifest.path(artifacts, "eval")))
    inputs = [i for i in back.graph.input if i.name not in arrays]
    used = {name for node in back.graph.node for name in node.input}
    back.graph.initializer.extend(numpy_helper.from_array(np.asarray(arrays[i.name]), i.name)
                                  for i in back.graph.input if i.name in arrays and i.name in used)
    del back.graph.input[:]
    back.graph.input.extend(inputs)
    front = onnx.load(str(manifest.path(artifacts, "front")))
    front_out = front.graph.output[0].name
    merged = compose.merge_models(front, back, io_map=[(front_out, inputs[0].name)], prefix2=BACK_PREFIX,
                                  producer_name="latent-replay export-model")
    return _with_outputs(merged, BACK_PREFIX + back.graph.output[0].name, manifest.classes)


def _with_outputs(model: onnx.ModelProto, logits: str, classes: int) -> onnx.ModelProto:
    """`model` answering `logits` and their softmax `probabilities` (the learned model's two outputs)."""
    model.graph.node.extend([helper.make_node("Identity", [logits], ["logits"], name="logits"),
                             helper.make_node("Softmax", [logits], ["probabilities"], name="probabilities", axis=1)])
    del model.graph.output[:]
    model.graph.output.extend([helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", classes]),
                               helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["batch", classes])])
    onnx.checker.check_model(model)
    return model


def weights_model(weights: Any, input_size: int) -> onnx.ModelProto:
    """The whole imported network with the file's own classifier (bias included): frames -> logits,
    probabilities. Weights without a classifier: UserError."""
    from ..models import graph as g

    if weights.head_weight is None:
        raise UserError(f"the weights {weights.source} have no classifier (a no-top file, or random weights): "
                        f"nothing to predict with; pass weights with their ImageNet top, or train a head with "
                        f"`latent-replay run` and predict with --state")
    try:
        weights.validate(input_size)
    except ValueError as e:
        raise UserError(str(e)) from None
    return _with_outputs(g.build_full(weights, len(weights.head_weight), input_size), g.LOGITS,
                         len(weights.head_weight))


# Metadata keys of a learned model; every value is a JSON string.
METADATA_KEYS = {
    "class_names": "one name per output index (a list)",
    "trained_classes": "the output indices the learner was trained on (a list; empty: an untrained head)",
    "input": "the `frames` input: name, dtype, layout, shape, channel order, how to fit an image to it",
    "preprocessing": "what the model does to the pixels itself (feed raw uint8 frames)",
    "outputs": "what `logits` and `probabilities` are",
    "latent_replay": "where it comes from: package version, latent layer, weights, method, batches trained",
}


class ModelClasses:
    """The classes of a learned model: a name per output, and the outputs that were trained."""

    def __init__(self, names: List[str], trained: List[int], source: str) -> None:
        self.names, self.trained, self.source = names, sorted(set(int(t) for t in trained)), source

    def name(self, index: int) -> str:
        return self.names[index] if 0 <= index < len(self.names) else f"class_{index}"


def _padded(names: List[str], outputs: int) -> List[str]:
    return [str(names[c]) if c < len(names) and names[c] else f"class_{c}" for c in range(outputs)]


def state_classes(state: Mapping[str, Any], outputs: int, head: str) -> ModelClasses:
    """Class names and trained outputs of a learner state: the stream demo's class book, or a run's
    recorded class names and training labels (`class_N` names and the consolidated CWR* classes or
    the non-zero head rows for states saved before those were recorded)."""
    from .stream.common import STREAM_META

    meta, arrays = state["meta"], state["arrays"]
    if STREAM_META in meta:
        book = meta[STREAM_META]
        return ModelClasses(_padded(list(book.get("class_names", [])), outputs), list(book.get("trained", [])),
                            "stream")
    names = _padded(list(meta.get("class_names") or []), outputs)
    records = meta.get("records") or []
    if records and all("classes" in r for r in records):
        trained = sorted({int(c) for r in records for c in r["classes"]})
    elif "cwr/past" in arrays:
        trained = np.flatnonzero(np.asarray(arrays["cwr/past"]) > 0).tolist()
    elif int(meta.get("batches_trained", 0)) > 0:
        trained = np.flatnonzero(np.abs(np.asarray(arrays[f"param/{head}"])).sum(1) > 0).tolist()
    else:
        trained = []
    return ModelClasses(names, trained, "run")


def head_classes(artifacts: Path, manifest: Manifest) -> ModelClasses:
    """The classes of exported artifacts used as they are: the names the weights brought with their
    classifier, else `class_N`; trained = the non-zero head rows (zero for random weights; the seed's
    Caffe model brings a trained CORe50 head, Keras's an ImageNet one)."""
    head = np.asarray(_initial_arrays(artifacts, manifest)[manifest.head])
    return ModelClasses(_padded(manifest.class_names, manifest.classes),
                        np.flatnonzero(np.abs(head).sum(1) > 0).tolist(), "artifacts")


def set_metadata(model: onnx.ModelProto, manifest: Manifest, classes: ModelClasses,
                 origin: Optional[Dict[str, Any]] = None) -> None:
    """Write METADATA_KEYS into `model.metadata_props` so any onnxruntime user can read them."""
    from .. import __version__

    size = int(manifest.input["size"])
    values = {
        "class_names": classes.names,
        "trained_classes": classes.trained,
        "input": {"name": "frames", "dtype": "uint8", "layout": "NHWC", "shape": ["batch", size, size, 3],
                  "channel_order": manifest.input["channel_order"], "values": "0..255",
                  "fit": f"take the central square of the image, resize it to {size}x{size} (area interpolation "
                         f"when shrinking, linear when enlarging)"},
        "preprocessing": dict(manifest.preprocessing, inside_model=True,
                              note="done by the model (channel order, scaling, mean/std): feed raw pixels"),
        "outputs": {"logits": "(batch, classes) float32", "probabilities": "(batch, classes) softmax of logits "
                    "over every output; class_names[i] names output i"},
        "latent_replay": dict({"version": __version__, "latent_layer": manifest.latent_layer,
                               "weights": manifest.weights_source, "source": classes.source,
                               "head": BACK_PREFIX + manifest.head}, **(origin or {})),
    }
    del model.metadata_props[:]
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    model.doc_string = (f"latent-replay learned model: uint8 {manifest.input['channel_order']} frames "
                        f"(batch, {size}, {size}, 3) -> logits, probabilities over {manifest.classes} classes; "
                        f"class names and preprocessing in the metadata")


def read_metadata(values: Mapping[str, str]) -> Dict[str, Any]:
    """METADATA_KEYS decoded from a model's metadata map (missing or unreadable keys are left out)."""
    out = {}
    for key in METADATA_KEYS:
        try:
            out[key] = json.loads(values[key])
        except (KeyError, TypeError, ValueError):
            pass
    return out


def choose_state(given: Path) -> Tuple[Path, str]:
    """The learner state `--state` names, for `predict` and `export-model` alike: (its folder, which one it
    is, said on stderr). `given` is a state itself, the folder of `latent-replay stream --state` (its
    learner/), or a run folder OUT of `latent-replay run` (its run0, or its lowest run). Anything else:
    a UserError that says what to pass."""
    from ..runtime.state import has_state

    if has_state(given):
        return given, str(given)
    if has_state(given / "learner"):  # a stream state folder
        return given / "learner", f"{given / 'learner'} (the stream state {given})"
    runs = sorted((p for p in given.glob("run[0-9]*") if p.name[3:].isdigit() and has_state(p / "state")),
                  key=lambda p: int(p.name[3:])) if given.is_dir() else []
    if runs:
        chosen = runs[0] / "state"
        if len(runs) == 1:
            return chosen, f"{chosen} (run {runs[0].name[3:]}, the only run in {given})"
        return chosen, (f"{chosen} (run {runs[0].name[3:]} of runs {', '.join(p.name[3:] for p in runs)} in {given}; "
                        f"--state {given / 'runN' / 'state'} for another)")
    what = "does not exist" if not given.exists() else "holds no learner state"
    raise UserError(f"--state {given} {what}; pass OUT/runN/state of `latent-replay run --out OUT`, the run "
                    f"folder OUT, or the --state folder of `latent-replay stream`")


def find_artifacts(given: Path, state_path: Path) -> Path:
    """The artifacts a state was trained on, when --artifacts is not given: STATE/artifacts of the
    stream demo or OUT/artifacts of a run (also for OUT/runN/state), else the --artifacts a run
    recorded in OUT/results.json."""
    candidates = [given / "artifacts", state_path.parent / "artifacts", state_path.parent.parent / "artifacts"]
    results = state_path.parent.parent / "results.json"
    try:
        recorded = [Path(r["artifacts"]) for r in json.loads(results.read_text(encoding="utf-8"))["runs"]
                    if f"run{r['run']}" == state_path.parent.name and r.get("artifacts")]
    except (OSError, ValueError, KeyError, TypeError):
        recorded = []
    for directory in candidates + recorded:
        if (directory / "manifest.json").is_file():
            return directory
    raise UserError(f"found no artifacts next to the state {state_path} (looked in "
                    f"{', '.join(str(c) for c in dict.fromkeys(candidates))}); pass --artifacts DIR, the "
                    f"artifacts the learner trained")


class Learned:
    """The inference model of the learner state --state names (on --artifacts, or the artifacts found next
    to it), and which state that is (`chosen`, said on stderr once the command succeeded)."""

    def __init__(self, state: str, artifacts: Optional[str]) -> None:
        self.state, self.chosen = choose_state(Path(state))
        self.artifacts = Path(artifacts) if artifacts else find_artifacts(Path(state), self.state)
        self.model, self.manifest, self.classes = learned_model(self.artifacts, self.state)
        self.head = head_weights(self.model, BACK_PREFIX + self.manifest.head)

    def announce(self) -> None:
        print(f"state: {self.chosen}", file=sys.stderr)


def head_weights(model: onnx.ModelProto, name: Optional[str]) -> Optional[np.ndarray]:
    """The initializer `name` of `model` (a learned model's output layer), or None."""
    return next((numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name), None) if name else None


def learned_model(artifacts: Path, state_path: Path) -> Tuple[onnx.ModelProto, Manifest, ModelClasses]:
    """The inference model of a learner state on its artifacts, with its metadata (METADATA_KEYS)."""
    from ..runtime.state import load_state

    manifest = Manifest.load(Path(artifacts), verify=True)
    state = load_state(state_path)
    meta = state["meta"]
    if meta.get("latent_layer") != manifest.latent_layer or int(meta.get("classes", -1)) != manifest.classes:
        raise UserError(f"the state in {state_path} was trained at {meta.get('latent_layer')!r} with "
                        f"{meta.get('classes')} classes but the artifacts in {artifacts} are cut at "
                        f"{manifest.latent_layer!r} with {manifest.classes}; pass the artifacts the learner used")
    params = {k[len("param/"):]: v for k, v in state["arrays"].items() if k.startswith("param/")}
    try:
        model = inference_model(Path(artifacts), params)
    except ValueError as e:
        raise UserError(f"the state in {state_path} does not fit the artifacts in {artifacts} ({e}); pass the "
                        f"artifacts the learner used") from None
    classes = state_classes(state, manifest.classes, manifest.head)
    config = meta.get("config") or {}
    set_metadata(model, manifest, classes, {"method": config.get("method"),
                                            "batches_trained": int(meta.get("batches_trained", 0))})
    return model, manifest, classes


def untrained_reason(classes: ModelClasses, head: Optional[np.ndarray]) -> Optional[str]:
    """Why a model's head is untrained (None when it is trained): no trained class, or all-zero rows."""
    if not classes.trained:
        return "no class was trained"
    if head is not None and not np.abs(np.asarray(head)[classes.trained]).sum() > 0:
        return "its output layer is all zeros"
    return None


def add_export_model_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-model", help="write the learned model as one inference ONNX (front + back)",
                       description="Bake a learner state (from `latent-replay run --out DIR` -> DIR/runN/state or "
                                   "DIR, or `latent-replay stream --state DIR`) into one ONNX model: uint8 NHWC "
                                   "frames in, `logits` and `probabilities` out, the class names, trained classes, "
                                   "input format and preprocessing in its metadata. Runs on any onnxruntime >= 1.14.")
    p.add_argument("--artifacts",
                   help="the artifacts the learner trained (default: OUT/artifacts of the run, or STATE/artifacts "
                        "of the stream demo)")
    p.add_argument("--state", required=True,
                   help="learner state: OUT/runN/state or OUT of `latent-replay run` (its run0, or its lowest run: "
                        "said on stderr), or the --state folder of `latent-replay stream`")
    p.add_argument("--out", required=True, help="output .onnx file (an existing ONNX model there is replaced)")
    p.set_defaults(handler=export_model_command)


def _check_out(out: Path) -> None:
    """--out must be a file to create, or an ONNX model to replace: never a folder or another file; and
    a place that can be written (checked before the model is built)."""
    from ..folders import check_output_file

    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give the model file to write, e.g. --out {out / 'learned.onnx'}")
    if out.exists():
        try:
            model = onnx.load(str(out), load_external_data=False)
            ours = model.ir_version > 0 and len(model.graph.node) > 0
        except Exception:  # anything that does not parse as ONNX is not ours to overwrite
            ours = False
        if not ours:
            raise UserError(f"--out {out} exists and is not an ONNX model: refusing to overwrite it; "
                            f"choose another file name")
    check_output_file(out, "--out")


def export_model_command(args: argparse.Namespace) -> int:
    from ..atomic import write_bytes_atomic

    out = Path(args.out)
    _check_out(out)
    learned = Learned(args.state, args.artifacts)
    manifest, classes, state_path = learned.manifest, learned.classes, learned.state
    untrained = untrained_reason(classes, learned.head)
    write_bytes_atomic(out, learned.model.SerializeToString())
    learned.announce()
    size = manifest.input["size"]
    print(f"wrote {args.out}: frames uint8 (N, {size}, {size}, 3) {manifest.input['channel_order']} -> logits, "
          f"probabilities ({manifest.classes} classes, {len(classes.trained)} trained: "
          f"{', '.join(classes.name(c) for c in classes.trained[:5])}{', ...' if len(classes.trained) > 5 else ''}); "
          f"class names and preprocessing in its metadata")
    if untrained:
        print(f"note: the learner in {state_path} is untrained ({untrained}): `latent-replay predict` refuses "
              f"this model until it has learned a class", file=sys.stderr)
    return 0
