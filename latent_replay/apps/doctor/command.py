"""`latent-replay doctor`: the command line of the checks (`check.py`) and the comparison (`compare.py`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List

from ..common import UserError, check_at_least, check_device, parse_list
from .check import Settings

EXIT_FAILED = 1  # a check failed (a user mistake is 2, as for every command)


def add_doctor_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check that this onnxruntime trains here, and on which providers",
                       description="Export small artifacts of seeded random weights at a few latent layers, run "
                                   "the front on generated frames, train a few steps of the step engine on one "
                                   "fixed minibatch and evaluate; report the execution providers every session "
                                   "really runs on (its get_providers(), not only what onnxruntime lists). Fails "
                                   "(exit code 1) when the loss does not fall, when a CUDA device's sessions fell "
                                   "back to the CPU, when --tensorrt's front does not run on TensorRT, or when "
                                   "--compare finds arrays beyond --rtol.")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to train (default auto: CUDA when this onnxruntime has it)")
    p.add_argument("--tensorrt", action="store_true",
                   help="also run the front on the TensorRT provider and compare its latents")
    p.add_argument("--layers", default="pool6,conv6/dw", help="latent layers to check (default pool6,conv6/dw)")
    p.add_argument("--steps", type=int, default=Settings.steps, help=f"training steps per layer (default {Settings.steps})")
    p.add_argument("--input-size", type=int, default=Settings.input_size,
                   help=f"square frame side of the small export (default {Settings.input_size})")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default 0: all cores)")
    p.add_argument("--json", metavar="PATH", help="write the report (versions, providers, losses, times) as JSON")
    p.add_argument("--arrays", metavar="PATH", help="save the latents, losses, logits and trained arrays (.npz)")
    p.add_argument("--compare", metavar="PATH",
                   help="compare with the --arrays file of another machine's doctor run with the same settings")
    p.add_argument("--rtol", type=float, default=1e-4,
                   help="--compare's tolerance, relative to each array's largest value (default 1e-4)")
    p.set_defaults(handler=_cmd_doctor)


def _settings(args: argparse.Namespace) -> Settings:
    from ...models import mobilenet_v1 as net

    layers = tuple(parse_list(args.layers, net.LATENT_LAYERS, "latent layer", "--layers"))
    try:
        net.conv_layers(args.input_size)
    except ValueError as e:
        raise UserError(f"--input-size: {e}") from None
    check_at_least(args.steps, 2, "--steps")
    check_at_least(args.threads, 0, "--threads")
    if not args.rtol > 0:
        raise UserError(f"--rtol must be > 0, got {args.rtol}")
    return Settings(layers=layers, steps=args.steps, input_size=args.input_size)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from ...folders import check_output_file
    from .check import run_checks
    from .compare import compare, load_arrays, summary

    settings = _settings(args)
    for option in ("--json", "--arrays"):
        if getattr(args, option[2:]):
            check_output_file(getattr(args, option[2:]), option)
    reference = None
    if args.compare:
        theirs, reference = load_arrays(Path(args.compare))
        if theirs != settings.to_json():
            raise UserError(f"--compare {args.compare} was made with other settings ({theirs}); give the same "
                            f"--layers, --steps and --input-size")
    device = check_device(args.device)
    report_head(device, args.tensorrt)
    report, arrays = run_checks(settings, device, args.threads, args.tensorrt)
    if reference is not None:
        rows = compare(arrays, reference, args.rtol)
        report["compare"] = {"with": str(args.compare), "rtol": args.rtol, "arrays": rows}
        print(f"compared with {args.compare}:")
        print("\n".join(summary(rows, args.rtol)))
        report["problems"] += [f"--compare: {r['array']} {r.get('problem') or 'beyond --rtol'}"
                               for r in rows if not r["ok"]]
    report["ok"] = not report["problems"]
    _write(args, report, arrays, settings)
    return _verdict(report)


def report_head(device: str, tensorrt: bool) -> None:
    import onnxruntime as ort

    from .check import versions

    v = versions()
    print(f"latent-replay {v['latent_replay']} doctor: Python {v['python']}, numpy {v['numpy']}, onnxruntime "
          f"{v['onnxruntime']} on {v['machine']}; available providers: {', '.join(ort.get_available_providers())}; "
          f"training on {device}{' (+ TensorRT front)' if tensorrt else ''}")


def _write(args: argparse.Namespace, report: Dict[str, Any], arrays: Dict[str, Any], settings: Settings) -> None:
    from ...atomic import write_json_atomic
    from .compare import save_arrays

    if args.json:
        write_json_atomic(Path(args.json), report)
    if args.arrays:
        save_arrays(Path(args.arrays), arrays, settings.to_json())


def _verdict(report: Dict[str, Any]) -> int:
    problems: List[str] = report["problems"]
    if problems:
        for problem in problems:
            print(f"latent-replay doctor: FAILED: {problem}", file=sys.stderr)
        return EXIT_FAILED
    providers = sorted({p for entry in report["layers"].values() for found in entry["providers"].values() for p in found})
    print(f"doctor: OK ({len(report['layers'])} layers trained; sessions on {', '.join(providers)})")
    return 0
