"""`latent-replay predict`: classify images with what a learner learned.

Four sources of a model, all run the same way (one inference ONNX in an InferenceSession): a
learner state (`--state`: a run's or a stream's; the learned model is built in memory exactly as
`export-model` writes it), a file `export-model` wrote (`--model`: class names and input format
from its metadata, no artifacts needed), exported artifacts as they are (`--artifacts` alone:
only useful when the weights bring a trained head), or pretrained weights with their own classifier
(`--weights`: e.g. Keras's ImageNet MobileNet, which names ImageNet classes). A head that learned
nothing is refused: it gives every class the same probability.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, List, Optional

from .common import UserError

HOW = ("pass --state with a run's OUT/runN/state (or its OUT), or a `latent-replay stream --state` folder, "
       "or --model with a file `latent-replay export-model` wrote")


def add_predict_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images with a learned model (a run's or stream's state, or "
                                       "an exported learned.onnx)",
                       description="Classify images with what a learner learned: --state (a run's OUT/runN/state "
                                   "or OUT, or the --state folder of `latent-replay stream`; the artifacts are "
                                   "found next to it unless --artifacts is given) or --model (the file "
                                   "`latent-replay export-model` wrote; names and input format come from its "
                                   "metadata). Prints the top classes by name per image, or one JSON object per "
                                   "image with --json. Without images, a generated frame is classified (a smoke "
                                   "test). An untrained head is refused.")
    p.add_argument("images", nargs="*", help="image files (any size: the central square is resized to the input)")
    p.add_argument("--state", help="learner state: OUT/runN/state or OUT of `latent-replay run`, or the --state "
                                   "folder of `latent-replay stream`")
    p.add_argument("--model", help="a learned model written by `latent-replay export-model` (needs no artifacts)")
    p.add_argument("--artifacts", help="the artifacts the state was trained on (default: found next to the "
                                       "state); alone, the export's own head (untrained for random weights)")
    p.add_argument("--weights", help="pretrained weights with their classifier (a Keras .h5 with top, a TF.js "
                                     "model.json, keras:1.0_128, ...): the whole imported network, e.g. its 1000 "
                                     "ImageNet classes; class names from the weights' metadata or --labels")
    p.add_argument("--classes", type=int, default=None,
                   help="with --weights: the classes its classifier must have (e.g. 1000); default: whatever it has")
    p.add_argument("--input-size", type=int, default=None,
                   help="with --weights: the square input side images are resized to (default 128; Keras's "
                        "ImageNet models were trained at the size in their name, e.g. 224)")
    p.add_argument("--labels", help="with --weights: a text file with one class name per line, in output order")
    p.add_argument("--top", type=int, default=3, help="how many classes to print per image (default 3)")
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of text")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="execution provider")
    p.set_defaults(handler=_cmd_predict)


def _read_images(paths: List[str], size: int):
    import cv2
    import numpy as np

    from ..runtime.sources.video import center_crop_resize, quiet_opencv_logs

    quiet_opencv_logs()
    frames = []
    for path in paths:
        if Path(path).is_dir():
            raise UserError(f"image {path} is a folder; give image files")
        if not Path(path).is_file():
            raise UserError(f"image {path} does not exist")
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise UserError(f"cannot read image {path} (not an image OpenCV can decode)")
        frames.append(center_crop_resize(img, size))
    return np.stack(frames)


def _session(model: Any, device: str):
    """An InferenceSession on `model` (a path or serialized bytes) for --device."""
    import onnxruntime as ort

    from ..runtime.engine.session import providers_for
    from .common import check_device

    return ort.InferenceSession(model, providers=providers_for(check_device(device)))


class Loaded:
    """A model to run, its classes, its head weights when known (to refuse all-zero rows), what it is,
    for messages, and the learner state it comes from (said on stderr), if any."""

    def __init__(self, model: Any, classes: Optional[Any], head: Optional[Any], what: str,
                 learned: Optional[Any] = None) -> None:
        self.model, self.classes, self.head, self.what, self.learned = model, classes, head, what, learned


def _model_file(path: Path) -> Loaded:
    """The --model file; a path that is not an ONNX model: UserError."""
    import onnx

    from .export_model import ModelClasses, head_weights, read_metadata

    if path.is_dir():
        raise UserError(f"--model {path} is a folder; give the .onnx file `latent-replay export-model` wrote")
    if not path.is_file():
        raise UserError(f"--model {path} does not exist; write one with `latent-replay export-model --state "
                        f"DIR --out {path}`")
    try:
        model = onnx.load(str(path))
    except Exception:  # any parse failure means: not an ONNX model
        raise UserError(f"--model {path} is not an ONNX model; give the file `latent-replay export-model` "
                        f"wrote") from None
    meta = read_metadata({p.key: p.value for p in model.metadata_props})
    if "class_names" not in meta or "trained_classes" not in meta:
        raise UserError(f"--model {path} carries no class names in its metadata (not written by this version of "
                        f"`latent-replay export-model`); write it again with `latent-replay export-model`")
    classes = ModelClasses(list(meta["class_names"]), list(meta["trained_classes"]), "model")
    return Loaded(model, classes, head_weights(model, (meta.get("latent_replay") or {}).get("head")),
                  f"--model {path}")


def _load(args: argparse.Namespace) -> Loaded:
    """The model --model, --state or --artifacts name."""
    from ..export.manifest import Manifest
    from .export_model import BACK_PREFIX, Learned, head_classes, head_weights, inference_model, set_metadata

    given = [name for name in ("model", "state", "weights") if getattr(args, name)]
    if len(given) > 1:
        raise UserError(f"--{given[0]} already names the model to predict with: drop --{given[1]}")
    if args.weights:
        if args.artifacts:
            raise UserError("--weights brings the whole network: drop --artifacts")
        return _weights(args)
    if args.classes is not None or args.input_size is not None or args.labels:
        raise UserError("--classes, --input-size and --labels go with --weights (the other models know theirs)")
    if args.model:
        if args.artifacts:
            raise UserError("--model already holds the artifacts and what was learned: drop --artifacts")
        return _model_file(Path(args.model))
    if args.state:
        learned = Learned(args.state, args.artifacts)
        return Loaded(learned.model, learned.classes, learned.head, f"the learner in {learned.state}", learned)
    if args.artifacts:
        artifacts = Path(args.artifacts)
        manifest = Manifest.load(artifacts, verify=True)
        model = inference_model(artifacts, {})
        classes = head_classes(artifacts, manifest)
        set_metadata(model, manifest, classes)
        return Loaded(model, classes, head_weights(model, BACK_PREFIX + manifest.head),
                      f"the export in {artifacts} (its own head: nothing was learned)")
    raise UserError(f"nothing to predict with: {HOW}")


def _labels(path: Path, outputs: int) -> List[str]:
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--labels {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if len(names) != outputs:
        raise UserError(f"--labels {path} has {len(names)} names for a classifier of {outputs} classes; give one name "
                        f"per line, in output order")
    return names


def _weights(args: argparse.Namespace) -> Loaded:
    """The network of --weights with its own classifier (ImageNet's for Keras's files)."""
    from ..models import mobilenet_v1 as net
    from ..models.load import load_weights
    from .export_model import ModelClasses, weights_model

    weights = load_weights(args.weights)  # random weights have no classifier: refused below, not announced
    size = args.input_size or net.DEFAULT_INPUT_SIZE
    model = weights_model(weights, size)
    outputs = int(model.graph.output[0].type.tensor_type.shape.dim[1].dim_value)
    if args.classes is not None and args.classes != outputs:
        raise UserError(f"the classifier of {weights.source} has {outputs} classes, not --classes {args.classes}")
    names = _labels(Path(args.labels), outputs) if args.labels else (weights.class_names or
                                                                     [f"class_{c}" for c in range(outputs)])
    return Loaded(model, ModelClasses(names, list(range(outputs)), "weights"), weights.head_weight,
                  f"the weights {weights.source}")


def _cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from .export_model import untrained_reason

    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    for path in args.images:  # before the model is built: a wrong path is answered at once
        if not Path(path).is_file():
            raise UserError(f"image {path} {'is a folder; give image files' if Path(path).is_dir() else 'does not exist'}")
    loaded = _load(args)
    model, classes = loaded.model, loaded.classes
    inputs = {i.name: i for i in model.graph.input}
    if "frames" not in inputs or "probabilities" not in {o.name for o in model.graph.output}:
        raise UserError(f"{loaded.what} is not a learned model of latent-replay (it needs a 'frames' input and a "
                        f"'probabilities' output); write one with `latent-replay export-model`")
    reason = untrained_reason(classes, loaded.head)
    if reason:
        raise UserError(f"{loaded.what} is untrained ({reason}): it gives every class about the same "
                        f"probability; {HOW} after training")
    size = inputs["frames"].type.tensor_type.shape.dim[1].dim_value
    if args.images:
        frames, names = _read_images(args.images, size), list(args.images)
    else:
        frames = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
        names = ["<generated frame>"]
    session = _session(model.SerializeToString(), args.device)
    probs = session.run(["probabilities"], {"frames": frames})[0]
    if loaded.learned is not None:
        loaded.learned.announce()
    trained = set(classes.trained)
    k = min(args.top, probs.shape[1])
    for name, p in zip(names, probs):
        top = [int(c) for c in np.argsort(-p, kind="stable")[:k]]
        if args.json:
            print(json.dumps({"image": name, "prediction": classes.name(top[0]), "class": top[0],
                              "top": [{"class": classes.name(c), "index": c, "probability": round(float(p[c]), 6),
                                       "trained": c in trained} for c in top]}))
        else:
            print(f"{name}: " + ", ".join(f"{classes.name(c)}{'' if c in trained else ' [untrained]'} "
                                          f"({p[c]:.3f})" for c in top))
    return 0
