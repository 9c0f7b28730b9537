"""The `latent-replay` command: one entry point, one subcommand per job.

Handlers import their modules lazily so that `--help` is instant and a subcommand only needs the
dependencies it uses. A user mistake ends in one line on stderr and exit code 2 (see `main`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from .models import mobilenet_v1 as net

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def _user_errors() -> tuple:
    """Exception types that mean 'the user gave us something wrong', not 'we have a bug'."""
    from .atomic import WriteError
    from .export.exporter import ExportError
    from .export.manifest import ManifestError
    from .folders import FolderError
    from .models.load import WeightsError

    from .runtime.runner import RunError
    from .runtime.sources.base import SourceError
    from .runtime.state import StateError

    return (CliError, ExportError, ManifestError, WeightsError, SourceError, RunError, FolderError, StateError,
            WriteError, FileNotFoundError)


# -- layers --------------------------------------------------------------------------------------
def _add_layers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("layers", help="list the valid latent layers with shapes, memory and cost",
                       description="The 15 layers latent replay can split MobileNetV1 at: the latent "
                                   "shape, values and bytes per stored pattern, and the multiply-adds "
                                   "and parameters of the frozen front and the trainable back.")
    p.add_argument("--input-size", type=int, default=net.DEFAULT_INPUT_SIZE, help="square input side (default 128)")
    p.add_argument("--classes", type=int, default=net.DEFAULT_CLASSES, help="output classes (default 50)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=_cmd_layers)


def _cmd_layers(args: argparse.Namespace) -> int:
    if args.classes < 2:
        raise CliError(f"--classes must be at least 2, got {args.classes}")
    try:
        rows = net.layer_table(args.input_size, args.classes)
    except ValueError as e:
        raise CliError(str(e)) from None
    if args.json:
        print(json.dumps([{
            "latent_layer": r.latent_layer, "latent_shape": list(r.latent_shape), "values": r.latent_values,
            "bytes_fp32": r.bytes_per_pattern("fp32"), "bytes_fp16": r.bytes_per_pattern("fp16"),
            "bytes_uint8": r.bytes_per_pattern("uint8"), "front_macs": r.front_macs,
            "front_params": r.front_params, "back_macs": r.back_macs, "back_params": r.back_params,
        } for r in rows], indent=2))
        return 0
    head = (f"{'latent layer':<12} {'shape':>14} {'values':>8} {'fp32 B':>8} {'fp16 B':>8} {'uint8 B':>8} "
            f"{'front MMAC':>10} {'front Mpar':>10} {'back MMAC':>10} {'back Mpar':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        shape = "x".join(str(s) for s in r.latent_shape)
        print(f"{r.latent_layer:<12} {shape:>14} {r.latent_values:>8} {r.bytes_per_pattern('fp32'):>8} "
              f"{r.bytes_per_pattern('fp16'):>8} {r.bytes_per_pattern('uint8'):>8} {r.front_macs / 1e6:>10.1f} "
              f"{r.front_params / 1e6:>10.3f} {r.back_macs / 1e6:>10.1f} {r.back_params / 1e6:>10.3f}")
    print(f"\ninput {args.input_size}x{args.input_size}x3, {args.classes} classes; `data` stores raw uint8 frames "
          f"(native replay); uint8 latents add one float scale per channel for the whole pool.")
    return 0


# -- export --------------------------------------------------------------------------------------
def add_weights_arguments(p: argparse.ArgumentParser) -> None:
    """--weights / --preprocessing / --seed, shared by every command that builds a network."""
    p.add_argument("--weights", default="random",
                   help="weights: 'random' (seeded, for smoke tests), a .caffemodel, .safetensors, .pth or "
                        ".npz file, or a name fetched with `latent-replay fetch weights` ('caffe', 'timm')")
    p.add_argument("--preprocessing", choices=["caffe", "imagenet"], default=None,
                   help="override the input preprocessing that travels with the weights")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights (default 0)")


def load_weights_announced(args: argparse.Namespace):
    """Load weights; random weights are announced loudly because they recognise nothing."""
    from .models.load import load_weights

    weights = load_weights(args.weights, seed=args.seed, preprocessing=args.preprocessing)
    if weights.source.startswith("random"):
        print(f"WARNING: using RANDOM weights ({weights.source}): fine for smoke tests, useless for real "
              f"objects. Run `latent-replay fetch weights` and pass --weights caffe.", file=sys.stderr)
    return weights


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="split MobileNetV1 into a frozen ONNX front and a trainable ORT back",
                       description="Write OUT/front.onnx (uint8 HWC frames -> latent layer, normalization "
                                   "folded), OUT/back/ (ONNX Runtime on-device training artifacts for the "
                                   "layers above the latent layer, with Batch Renormalization) and "
                                   "OUT/manifest.json. The output directory is replaced only once the export "
                                   "is complete, and only if it is new, empty or a previous export.")
    add_weights_arguments(p)
    p.add_argument("--latent-layer", "--latent_layer", default=net.DEFAULT_LATENT_LAYER,
                   help=f"where to split (default {net.DEFAULT_LATENT_LAYER}); `latent-replay layers` lists them")
    p.add_argument("--classes", type=int, default=net.DEFAULT_CLASSES, help="output classes (default 50)")
    p.add_argument("--input-size", type=int, default=net.DEFAULT_INPUT_SIZE, help="square input side (default 128)")
    p.add_argument("--input-order", choices=["BGR", "RGB"], default="BGR",
                   help="channel order of the frames the front receives (default BGR, as OpenCV gives them)")
    p.add_argument("--out", required=True,
                   help="output directory: new, empty, or a previous export (which is replaced)")
    p.set_defaults(handler=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from .export.exporter import check_output, export

    check_output(Path(args.out))  # before the weights load: a folder we may not replace is refused at once
    weights = load_weights_announced(args)
    manifest = export(weights, args.latent_layer, args.classes, Path(args.out), args.input_size, args.input_order,
                      progress=lambda step: print(f"exporting {step} ...", file=sys.stderr))
    cost = manifest.cost
    print(f"wrote {args.out}: front -> {manifest.latent_layer} {tuple(manifest.latent_shape)} "
          f"({cost['front_macs'] / 1e6:.1f} MMAC), back {cost['back_macs'] / 1e6:.1f} MMAC / "
          f"{cost['back_params'] / 1e6:.3f} M params, {manifest.classes} classes, weights {manifest.weights_source}")
    return 0


# -- predict -------------------------------------------------------------------------------------
def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="run front + back on images (or a generated one) and print the top classes",
                       description="Load exported artifacts without PyTorch and classify images. Without "
                                   "images, a generated test frame is used (a smoke test of the artifacts).")
    p.add_argument("--artifacts", required=True, help="directory written by `latent-replay export`")
    p.add_argument("images", nargs="*", help="image files (any size: center-cropped and resized)")
    p.add_argument("--top", type=int, default=3, help="how many classes to print (default 3)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="execution provider")
    p.set_defaults(handler=_cmd_predict)


def _read_images(paths: List[str], size: int):
    import cv2
    import numpy as np

    from .runtime.sources.video import center_crop_resize

    frames = []
    for path in paths:
        if not Path(path).is_file():
            raise CliError(f"image {path} does not exist")
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise CliError(f"cannot read image {path}")
        frames.append(center_crop_resize(img, size))
    return np.stack(frames)


def _cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from .export.manifest import Manifest
    from .runtime.engine import Back, Front

    manifest = Manifest.load(Path(args.artifacts), verify=True)
    size = manifest.input["size"]
    if args.images:
        frames, names = _read_images(args.images, size), args.images
    else:
        frames = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
        names = ["<generated frame>"]
    front, back = Front(Path(args.artifacts), manifest, args.device), Back(Path(args.artifacts), manifest, args.device)
    logits = back.logits(front(frames))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for name, p in zip(names, probs):
        top = np.argsort(-p)[: args.top]
        print(f"{name}: " + ", ".join(f"class {c} ({p[c]:.3f})" for c in top))
    return 0


# -- fetch ---------------------------------------------------------------------------------------
def _add_fetch(sub: argparse._SubParsersAction) -> None:
    from .models.fetch import add_fetch_arguments

    p = sub.add_parser("fetch", help="download pretrained weights into the cache",
                       description="Download pretrained weights (resumable, verified before use).")
    what = p.add_subparsers(dest="what", metavar="WHAT")
    w = what.add_parser("weights", help="download pretrained MobileNetV1 weights",
                        description="Download the seed's MobileNetV1.caffemodel ('caffe', default) or timm's "
                                    "mobilenetv1_100 ('timm') into the cache directory, resuming a broken "
                                    "download, and check that the file parses before using it.")
    add_fetch_arguments(w)
    w.set_defaults(handler=_cmd_fetch)
    p.set_defaults(handler=lambda args: (p.print_help(), EXIT_USAGE)[1])


def _cmd_fetch(args: argparse.Namespace) -> int:
    from .models.fetch import fetch_command

    return fetch_command(args)


# -- registry ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latent-replay",
        description="Continual learning on the edge: Latent Replay with CWR*, AR1* and AR1*-free on an "
                    "ImageNet-pretrained MobileNetV1, trained on the device with ONNX Runtime.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from .bench.run import add_bench_command
    from .runtime.export_model import add_export_model_command
    from .runtime.runner import add_run_command
    from .runtime.stream import add_stream_command

    for adder in [_add_layers, _add_export, _add_predict, _add_fetch, add_run_command, add_export_model_command,
                  add_stream_command, add_bench_command]:
        adder(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.handler(args) or 0)
    except _user_errors() as e:
        print(f"latent-replay {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        # A command may say what the interruption kept (KeyboardInterrupt("nothing was saved yet")).
        detail = f": {e}" if str(e) else ""
        print(f"latent-replay {args.command}: interrupted{detail}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # `python -m latent_replay.cli`: run the imported module's main, so that CliError raised by the
    # subcommands (which import latent_replay.cli) is the class caught here, not a second copy.
    from latent_replay.cli import main as _main

    sys.exit(_main())
