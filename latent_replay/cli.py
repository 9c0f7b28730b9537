"""The `latent-replay` command: one entry point, one subcommand per job (argument parsing only).

Each command lives in `latent_replay.apps`; handlers import their modules lazily so that `--help`
is instant and a subcommand only needs the dependencies it uses. A user mistake ends in one line on
stderr and exit code 2 (see `main`).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from .apps.common import EXIT_USAGE, run_handler


def build_parser() -> argparse.ArgumentParser:
    """The `latent-replay` parser: `--version` and one subcommand per job."""
    from . import __version__
    from .apps.artifacts import add_export_command, add_fetch_command, add_layers_command
    from .apps.bench.command import add_bench_command
    from .apps.doctor.command import add_doctor_command
    from .apps.export_model import add_export_model_command
    from .apps.predict import add_predict_command
    from .apps.run.command import add_run_command
    from .apps.stream.command import add_stream_command
    from .apps.sweep.command import add_report_command, add_sweep_command

    parser = argparse.ArgumentParser(
        prog="latent-replay",
        description="Continual learning on the edge: Latent Replay with CWR*, AR1* and AR1*-free on an "
                    "ImageNet-pretrained MobileNetV1, trained on the device by any ONNX Runtime.")
    parser.add_argument("--version", action="version", version=f"latent-replay {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for adder in [add_layers_command, add_export_command, add_predict_command, add_fetch_command, add_run_command,
                  add_sweep_command, add_report_command, add_export_model_command, add_stream_command,
                  add_bench_command, add_doctor_command]:
        adder(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; its exit status (0, 2 for a user mistake, 130 after Ctrl-C, 1 when the reader of
    its output went away)."""
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # a closed pipe shows here, inside main, not when the interpreter exits
    except BrokenPipeError:
        # The reader of stdout went away (`latent-replay layers | head`): stop quietly. Python's recipe:
        # point stdout at devnull, so that flushing it at exit raises nothing more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1


def _main(argv: Optional[List[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    return run_handler(args.command, args.handler, args)


if __name__ == "__main__":
    # `python -m latent_replay.cli`: run the imported module's main, so that the error classes the
    # subcommands import are the ones caught here, not a second copy.
    from latent_replay.cli import main as _main

    sys.exit(_main())
