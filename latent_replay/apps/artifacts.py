"""The artifact commands: `layers` (where the network can split), `export` (write the artifacts)
and `fetch weights` (download pretrained weights)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..models import mobilenet_v1 as net
from .common import EXIT_USAGE, UserError, add_weights_arguments, add_width_argument, load_weights_announced


def add_layers_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("layers", help="list the valid latent layers with shapes, memory and cost",
                       description="The 15 layers latent replay can split MobileNetV1 at: the latent "
                                   "shape, values and bytes per stored pattern, and the multiply-adds "
                                   "and parameters of the frozen front and the trainable back.")
    p.add_argument("--input-size", type=int, default=net.DEFAULT_INPUT_SIZE, help="square input side (default 128)")
    p.add_argument("--classes", type=int, default=net.DEFAULT_CLASSES, help="output classes (default 50)")
    add_width_argument(p, "(default 1.0: 32..1024 channels; 0.75: 24..768, as Keras computes them)", 1.0)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=_cmd_layers)


def _cmd_layers(args: argparse.Namespace) -> int:
    if args.classes < 2:
        raise UserError(f"--classes must be at least 2, got {args.classes}")
    try:
        rows = net.layer_table(args.input_size, args.classes, net.Architecture(args.width))
    except ValueError as e:
        raise UserError(str(e)) from None
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
    print(f"\ninput {args.input_size}x{args.input_size}x3, width {args.width:g}, {args.classes} classes; `data` stores "
          f"raw uint8 frames "
          f"(native replay); uint8 latents add one float scale per channel for the whole pool.")
    return 0


def add_export_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="split MobileNetV1 into a frozen ONNX front and a trainable back",
                       description="Write OUT/front.onnx (uint8 HWC frames -> latent layer, normalization "
                                   "folded), OUT/back/ (the training step of the layers above the latent layer as "
                                   "one standard ONNX graph, with Batch Renormalization, momentum SGD and SI; the "
                                   "eval graph; the initial arrays) and OUT/manifest.json. The output directory is "
                                   "replaced only once the export is complete, and only if it is new, empty or a "
                                   "previous export.")
    add_weights_arguments(p)
    p.add_argument("--latent-layer", "--latent_layer", default=net.DEFAULT_LATENT_LAYER,
                   help=f"where to split (default {net.DEFAULT_LATENT_LAYER}); `latent-replay layers` lists them")
    p.add_argument("--classes", type=int, default=net.DEFAULT_CLASSES, help="output classes (default 50)")
    p.add_argument("--input-size", type=int, default=net.DEFAULT_INPUT_SIZE, help="square input side (default 128)")
    p.add_argument("--input-order", choices=["BGR", "RGB"], default="BGR",
                   help="channel order of the frames the front receives (default BGR, as OpenCV gives them)")
    p.add_argument("--out", required=True,
                   help="output directory: new, empty, or a previous export (which is replaced)")
    p.add_argument("--engine", default="step",
                   help="engines to write artifacts for: step (default, any onnxruntime) or step,ort-training "
                        "(adds ONNX Runtime's training artifacts; needs onnxruntime-training)")
    p.set_defaults(handler=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from ..export.exporter import check_engines, check_output, export

    check_output(Path(args.out))  # before the weights load: a folder we may not replace is refused at once
    engines = check_engines(args.engine.split(","))
    weights = load_weights_announced(args.weights, args.seed, args.preprocessing, args.width)
    manifest = export(weights, args.latent_layer, args.classes, Path(args.out), args.input_size, args.input_order,
                      progress=lambda step: print(f"exporting {step} ...", file=sys.stderr), engines=engines)
    cost = manifest.cost
    print(f"wrote {args.out}: front -> {manifest.latent_layer} {tuple(manifest.latent_shape)} "
          f"({cost['front_macs'] / 1e6:.1f} MMAC), back {cost['back_macs'] / 1e6:.1f} MMAC / "
          f"{cost['back_params'] / 1e6:.3f} M params, {manifest.classes} classes, weights {manifest.weights_source}")
    return 0


def add_fetch_command(sub: argparse._SubParsersAction) -> None:
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


def add_fetch_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `latent-replay fetch weights`."""
    from ..models.fetch import DEFAULT_NAME, KNOWN_WEIGHTS

    parser.add_argument("name", nargs="?", default=DEFAULT_NAME,
                        help=f"known weights ({', '.join(KNOWN_WEIGHTS)}) or a URL (default: {DEFAULT_NAME})")
    parser.add_argument("--url", help="download from this URL instead of the known one")
    parser.add_argument("--cache-dir", help="cache folder (default: $LATENT_REPLAY_CACHE or ~/.cache/latent-replay)")
    parser.add_argument("--force", action="store_true", help="download again even if the file is cached")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _cmd_fetch(args: argparse.Namespace) -> int:
    """Run `fetch weights`: print the cached path (a failure is a WeightsError: one line, exit 2)."""
    from ..models.fetch import fetch_weights

    print(fetch_weights(args.name, cache_dir=args.cache_dir, url=args.url, progress=not args.quiet, force=args.force))
    return 0


