"""What every command shares: the user-error type, the weights options, and announcing random weights."""
from __future__ import annotations

import argparse
import sys
from typing import Any, List, Mapping, Optional, Sequence


class UserError(ValueError):
    """A user-facing failure: printed as one line by the `latent-replay` command, exit code 2."""


def check_at_least(value: Optional[int], minimum: int, option: str) -> None:
    """Refuse a count below `minimum` (UserError naming `option`); None (not given) passes."""
    if value is not None and value < minimum:
        raise UserError(f"{option} must be at least {minimum}, got {value}")


def parse_list(text: str, valid: Sequence[str], what: str, option: str) -> List[str]:
    """A comma-separated `option` value as a list of names from `valid` (UserError naming the unknown
    ones, or an empty list)."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in valid]
    if bad or not items:
        raise UserError(f"{option} {text!r}: unknown {what} {', '.join(bad) if bad else '(empty list)'}; "
                        f"choose from {', '.join(valid)}")
    return items


def in_users_words(error: Exception, options: Mapping[str, str]) -> str:
    """The message of `error` naming what the user typed: `options` maps a setting ('lr_first') to the
    option that set it ('--lr'), for a SettingError of that setting; any other error keeps its message."""
    setting = getattr(error, "setting", None)
    if setting in options:
        return f"{options[setting]} {getattr(error, 'problem')}"
    return str(error)


def check_device(device: str) -> str:
    """The device the engines will open for --device `device` ('auto' resolved), asked before anything is
    written: the engines' own check (`available_device`), its refusal of a CUDA device this onnxruntime
    lacks turned into a UserError."""
    from ..runtime.engine.session import available_device

    try:
        return available_device(device)
    except (RuntimeError, ValueError) as e:
        raise UserError(str(e)) from None


def add_weights_arguments(p: argparse.ArgumentParser) -> None:
    """--weights / --width / --preprocessing / --seed, shared by every command that builds a network."""
    from ..models.files import SUPPORTED

    p.add_argument("--weights", default="random",
                   help=f"weights: {SUPPORTED} (random: seeded, for smoke tests; .safetensors/.pth/.pt/.npz: a timm "
                        f"or pytorchcv state dict, .npz its arrays saved with numpy; .h5 / model.json: Google's Keras/TF "
                        f"MobileNet), or a name fetched with `latent-replay fetch weights` ('caffe', 'timm', "
                        f"'keras:1.0_128', ...); see the README's weights table")
    add_width_argument(p, "of random weights (default 1.0); a weights file's own width is read from the file, and "
                          "a --width that contradicts it is refused")
    p.add_argument("--preprocessing", choices=["caffe", "imagenet", "tf"], default=None,
                   help="override the input preprocessing that travels with the weights (caffe: BGR minus mean; "
                        "imagenet: RGB mean/std; tf: RGB x / 127.5 - 1)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights (default 0)")


def add_width_argument(p: argparse.ArgumentParser, what: str, default: Any = None) -> None:
    """--width: MobileNetV1's width multiplier alpha."""
    from ..models.mobilenet_v1 import WIDTHS

    p.add_argument("--width", type=float, choices=WIDTHS, default=default, metavar="ALPHA",
                   help=f"width multiplier {'/'.join(f'{w:g}' for w in WIDTHS)} {what}")


def load_weights_announced(weights: str, seed: int = 0, preprocessing: Any = None, width: Any = None):
    """Load weights; random weights are announced loudly because they recognise nothing."""
    from ..models.load import load_weights

    loaded = load_weights(weights, seed=seed, preprocessing=preprocessing, width=width)
    if loaded.source.startswith("random"):
        print(f"WARNING: using RANDOM weights ({loaded.source}): fine for smoke tests, useless for real "
              f"objects. Run `latent-replay fetch weights` and pass --weights caffe (or keras:1.0_128).",
              file=sys.stderr)
    return loaded


def export_for(directory: Any, spec: Any, weights: str, seed: int = 0, preprocessing: Any = None,
               announce: bool = False, width: Any = None):
    """Export artifacts that fit a workspace `ArtifactSpec` into `directory` (its engine included);
    returns the manifest."""
    from ..export.exporter import export

    loaded = load_weights_announced(weights, seed, preprocessing, width)
    if announce:
        print(f"exporting {spec.describe()} (weights {loaded.source}) into {directory} ...", file=sys.stderr)
    engines = ("step",) if spec.engine == "step" else ("step", spec.engine)
    return export(loaded, spec.latent_layer, spec.classes, directory, input_size=spec.input_size, engines=engines)


EXIT_USAGE = 2  # the exit status of a user mistake


def _user_errors() -> tuple:
    """Exception types that mean 'the user gave us something wrong', not 'we have a bug'."""
    from ..atomic import WriteError
    from ..export.exporter import ExportError
    from ..export.manifest import ManifestError
    from ..folders import FolderError
    from ..models.weights import WeightsError
    from ..runtime.sources.base import SourceError
    from ..runtime.state import StateError

    return (UserError, ExportError, ManifestError, WeightsError, SourceError, FolderError, StateError,
            WriteError, FileNotFoundError)


def run_handler(command: str, handler: Any, args: argparse.Namespace) -> int:
    """Run a command's handler: its exit status, a user mistake as one line on stderr and exit code 2,
    Ctrl-C as exit code 130 with what the command says it kept (the CLI, and sweep's cells)."""
    try:
        return int(handler(args) or 0)
    except _user_errors() as e:
        print(f"latent-replay {command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as e:
        if e.name != "onnxruntime":
            raise
        print(f"latent-replay {command}: error: onnxruntime is not installed: pip install \"latent-replay[cpu]\" "
              f"(or [gpu]; on a Jetson, JetPack's onnxruntime-gpu wheel)", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        # A command may say what the interruption kept (KeyboardInterrupt("nothing was saved yet")).
        detail = f": {e}" if str(e) else ""
        print(f"latent-replay {command}: interrupted{detail}", file=sys.stderr)
        return 130
