"""`latent-replay export-model`: the learned model as one plain inference ONNX.

Front + eval-mode back with the learner's current parameters (consolidated CWR* head, carried BRN
statistics) baked in as initializers. The result needs no training build: any recent onnxruntime
(CPU, CUDA, TensorRT) runs it, e.g. on a board that only has onnxruntime-gpu.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict

import numpy as np
import onnx
from onnx import compose, helper, numpy_helper

from ..export.manifest import Manifest

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
    logits = BACK_PREFIX + back.graph.output[0].name
    merged.graph.node.extend([helper.make_node("Identity", [logits], ["logits"], name="logits"),
                              helper.make_node("Softmax", [logits], ["probabilities"], name="probabilities", axis=1)])
    classes = manifest.classes
    del merged.graph.output[:]
    merged.graph.output.extend([helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", classes]),
                                helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["batch", classes])])
    onnx.checker.check_model(merged)
    return merged


def add_export_model_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-model", help="write the learned model as one inference ONNX (front + back)",
                       description="Bake a learner state (from `latent-replay run --out DIR` -> DIR/runN/state, or "
                                   "`latent-replay stream --state DIR`) into one ONNX model: uint8 NHWC frames in, "
                                   "`logits` and `probabilities` out. Runs on any onnxruntime >= 1.14.")
    p.add_argument("--artifacts", required=True,
                   help="the artifacts the learner trained (e.g. runs/ar1free-synthetic-latent-conv5_4_dw/artifacts, "
                        "or STATE/artifacts of the stream demo)")
    p.add_argument("--state", required=True,
                   help="learner state: OUT/runN/state of `latent-replay run`, or the --state folder of "
                        "`latent-replay stream`")
    p.add_argument("--out", required=True, help="output .onnx file (an existing ONNX model there is replaced)")
    p.set_defaults(handler=export_model_command)


def _state_folder(given: Path) -> Path:
    """The learner state folder for --state: a state itself, or the folder of `latent-replay stream
    --state` (its learner/ subfolder). Anything else: an error that says what to pass."""
    from .common import UserError as RunError
    from ..runtime.state import has_state as is_state

    if is_state(given):
        return given
    if is_state(given / "learner"):  # a stream state folder
        return given / "learner"
    runs = sorted(p.name for p in given.glob("run[0-9]") if is_state(p / "state")) if given.is_dir() else []
    if runs:
        raise RunError(f"{given} is a run folder: pass the state of one run, e.g. --state {given / runs[0] / 'state'}")
    what = "does not exist" if not given.exists() else "holds no learner state"
    raise RunError(f"--state {given} {what}; pass OUT/runN/state of `latent-replay run --out OUT`, or the "
                   f"--state folder of `latent-replay stream`")


def _check_out(out: Path) -> None:
    """--out must be a file to create, or an ONNX model to replace: never a folder or another file."""
    from .common import UserError as RunError

    if out.is_dir():
        raise RunError(f"--out {out} is a folder; give the model file to write, e.g. --out {out / 'learned.onnx'}")
    if out.exists():
        try:
            model = onnx.load(str(out), load_external_data=False)
            ours = model.ir_version > 0 and len(model.graph.node) > 0
        except Exception:  # anything that does not parse as ONNX is not ours to overwrite
            ours = False
        if not ours:
            raise RunError(f"--out {out} exists and is not an ONNX model: refusing to overwrite it; "
                           f"choose another file name")


def export_model_command(args: argparse.Namespace) -> int:
    from ..atomic import write_bytes_atomic
    from .common import UserError as RunError
    from ..runtime.state import load_state

    out = Path(args.out)
    _check_out(out)
    state_path = _state_folder(Path(args.state))
    state = load_state(state_path)
    params = {k[len("param/"):]: v for k, v in state["arrays"].items() if k.startswith("param/")}
    manifest = Manifest.load(Path(args.artifacts))
    if state["meta"].get("latent_layer") != manifest.latent_layer:
        raise RunError(f"the state was trained at {state['meta'].get('latent_layer')!r} but the artifacts are "
                       f"cut at {manifest.latent_layer!r}; pass the artifacts the learner used")
    model = inference_model(Path(args.artifacts), params)
    write_bytes_atomic(out, model.SerializeToString())
    print(f"wrote {args.out}: frames uint8 (N, {manifest.input['size']}, {manifest.input['size']}, 3) "
          f"{manifest.input['channel_order']} -> logits, probabilities ({manifest.classes} classes)")
    return 0
