"""The stream demo's start-up: its --state folder (learner, class names, artifacts), the checks
made before anything is written, and the learner the teacher trains."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from ...models import mobilenet_v1 as net
from ..common import check_at_least, check_device, in_users_words
from .common import DEFAULT_EPOCHS, DEFAULT_LR, DEFAULT_REPLAY_SHUFFLE, STREAM_META, WINDOW, StreamError
from .live import ClassBook
from .options import StreamOptions
from .schedule import Schedule

STATE_MARKERS = ("learner", ".learner.previous", "artifacts/manifest.json")  # what makes a folder a --state
# The learner settings the demo's options set, for their errors (SettingError).
TYPED = {"lr_first": "--lr", "lr_later": "--lr", "epochs_first": "--epochs", "epochs": "--epochs",
         "replay_memory": "--replay-memory"}


def default_weights() -> str:
    """'caffe' when `latent-replay fetch weights` has cached them, else 'random' (announced loudly)."""
    from ...models.fetch import cached_path

    try:
        return "caffe" if cached_path("caffe").is_file() else "random"
    except Exception:  # an unusable cache directory means: no cached weights
        return "random"


def _learner_dir(opts: StreamOptions) -> Path:
    return Path(opts.state) / "learner"


def _saved_state(opts: StreamOptions) -> Optional[Dict[str, Any]]:
    from ...runtime.state import StateError, load_state

    if opts.fresh:
        return None
    try:
        return load_state(_learner_dir(opts))
    except FileNotFoundError:
        return None
    except StateError as e:
        raise StreamError(f"{e}; {'or ' if e.previous else ''}start over with --fresh (it replaces the saved "
                          f"learner) or use another --state") from None
    except (OSError, ValueError, KeyError) as e:
        raise StreamError(f"the saved state in {_learner_dir(opts)} is unreadable ({e}); "
                          f"remove it or use another --state") from None


def resolve_artifacts(opts: StreamOptions, method: str, saved: Optional[Dict[str, Any]]):
    """(directory, manifest): --artifacts, or the export in STATE/artifacts, exported when missing."""
    from ...export.manifest import Manifest
    from ...runtime.workspace import ArtifactSpec, existing_artifacts
    from ..common import export_for

    layer = opts.latent_layer or (saved["meta"]["latent_layer"] if saved else None)
    classes = opts.classes or (int(saved["meta"]["classes"]) if saved else None)
    if opts.artifacts:
        manifest = Manifest.load(Path(opts.artifacts), verify=True)
        manifest.check_latent_layer(layer)
        return Path(opts.artifacts), manifest
    directory = Path(opts.state) / "artifacts"
    spec = ArtifactSpec(layer or ("pool6" if method == "cwr" else net.DEFAULT_LATENT_LAYER),
                        classes or net.DEFAULT_CLASSES, net.DEFAULT_INPUT_SIZE, opts.engine)
    manifest, _ = existing_artifacts(directory, spec)
    if manifest is not None:
        return directory, manifest
    if saved is not None:
        raise StreamError(f"{opts.state} holds a learner for {saved['meta']['latent_layer']} with "
                          f"{saved['meta']['classes']} classes but no matching artifacts; use another --state")
    opts.weights = opts.weights or default_weights()
    return directory, export_for(directory, spec, opts.weights, opts.seed, opts.preprocessing, announce=True,
                                 width=opts.width)


def make_config(opts: StreamOptions, method: str):
    from ...runtime.learn import LearnerConfig

    lr = opts.lr if opts.lr is not None else DEFAULT_LR[method]
    epochs = opts.epochs if opts.epochs is not None else DEFAULT_EPOCHS[method]
    try:
        return LearnerConfig.preset("pytorch", method=method, epochs_first=epochs, epochs=epochs,
                                    replay_memory=opts.replay_memory, seed=opts.seed,
                                    replay_shuffle=DEFAULT_REPLAY_SHUFFLE, **LearnerConfig.small_stream_settings(lr))
    except ValueError as e:
        raise StreamError(in_users_words(e, TYPED)) from None


def build_learner(opts: StreamOptions, artifacts: Path, manifest: Any, saved: Optional[Dict[str, Any]]):
    """The teacher's learner on its own engine, restored from the saved state if any."""
    from ...runtime.engine import Back
    from ...runtime.learn import Learner
    from ...runtime.replay import pool_for

    if saved is not None:
        from ...runtime.learn import LearnerConfig

        config = LearnerConfig.from_dict(saved["meta"]["config"])
        if opts.method and opts.method != config.method or opts.lr is not None or opts.epochs is not None:
            print(f"note: {opts.state} was trained with method {config.method}, lr {config.lr_later:g}, "
                  f"{config.epochs} epochs; keeping those", file=sys.stderr)
    else:
        config = make_config(opts, opts.method or "cwr")
    try:
        config.check_compatible(manifest.latent_layer)
    except ValueError as e:
        raise StreamError(str(e)) from None
    # Training runs beside the live loop: threads that busy-wait would steal its cores (spin=False),
    # and a CUDA-graph capture would forbid the live thread's CUDA calls while it runs (no graphs).
    back = Back(artifacts, manifest, opts.device, opts.train_threads, spin=False, engine=opts.engine, cuda_graph=False)
    pool = pool_for(back.device, config.replay_memory, tuple(manifest.latent_shape), config.storage, config.seed,
                    np.dtype(manifest.latent_dtype)) if config.uses_memory else None
    learner = Learner(back, config, pool)
    if saved is not None:
        try:
            learner.load_state_dict(saved)
        except (ValueError, KeyError) as e:
            raise StreamError(f"cannot resume from {opts.state}: {e}") from None
    return learner


def save_learner(opts: StreamOptions, learner: Any, book_meta: Dict[str, Any]) -> None:
    from ...runtime.state import save_state

    state = learner.state_dict()
    state["meta"][STREAM_META] = book_meta
    save_state(state, _learner_dir(opts))


def _book_from(saved: Optional[Dict[str, Any]], capacity: int, schedule: Optional[Schedule]) -> ClassBook:
    meta = (saved or {}).get("meta", {}).get(STREAM_META, {})
    book = ClassBook(capacity, meta.get("class_names", []), meta.get("trained", []), meta.get("frames", []))
    if schedule is not None:
        names = schedule.names()
        new = [n for n in names if n not in book.names]
        if len(book.names) + len(new) > capacity:
            raise StreamError(f"the schedule needs {len(book.names) + len(new)} classes but there are only "
                              f"{capacity} (--classes)")
        for name in names:
            book.index(name)
    return book


def _input_size(opts: StreamOptions) -> int:
    """The frame size of the artifacts the run will use (the export default if none exist yet)."""
    from ...export.manifest import Manifest

    try:
        return int(Manifest.load(Path(opts.artifacts or Path(opts.state) / "artifacts")).input["size"])
    except ValueError:
        return net.DEFAULT_INPUT_SIZE


OPENCV_WHEELS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")


def opencv_conflict() -> Optional[str]:
    """How to fix it, in one line, when more than one OpenCV wheel is installed (e.g. opencv-python for the
    window on top of the package's opencv-python-headless): they all install the same `cv2` module, so
    the last one installed is what runs and uninstalling either leaves a broken cv2. None otherwise."""
    from importlib import metadata

    found = []
    for name in OPENCV_WHEELS:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    if len(found) < 2:
        return None
    return (f"{' and '.join(found)} are installed together and share the cv2 module; keep one: "
            f"pip uninstall -y {' '.join(found)} && pip install opencv-python (the window; "
            f"opencv-python-headless for --headless only)")


def _check_display(opts: StreamOptions) -> None:
    if opts.headless:
        return
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise StreamError("no display (DISPLAY is not set): run with --headless (and --record/--log)")
    import cv2

    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_AUTOSIZE)
    except cv2.error:
        raise StreamError("this OpenCV has no window support (opencv-python-headless): run with --headless, or "
                          "`pip uninstall -y opencv-python-headless opencv-python && pip install opencv-python` for "
                          "the window") from None


def _check_args(opts: StreamOptions) -> None:
    for name, minimum in (("teach_frames", 1), ("smooth", 1), ("display_size", 1), ("classes", 2), ("threads", 0),
                          ("train_threads", 0)):
        check_at_least(getattr(opts, name), minimum, f"--{name.replace('_', '-')}")
    check_device(opts.device)
    if opts.schedule and not opts.headless:
        raise StreamError("--schedule drives the headless mode: add --headless")
    if opts.reconnect_seconds < 0 or opts.max_frames < 0:
        raise StreamError("--reconnect-seconds and --max-frames must be >= 0")


def _check_plan(opts: StreamOptions, method: str, saved: Optional[Dict[str, Any]]) -> None:
    """What would otherwise fail only after exporting: the learner settings (--lr, --epochs), the
    latent layer and its fit with the method, the --artifacts folder."""
    from ...export.manifest import Manifest

    layer = opts.latent_layer or (saved["meta"]["latent_layer"] if saved else None)
    if opts.artifacts:
        manifest = Manifest.load(Path(opts.artifacts))
        manifest.check_latent_layer(layer)
        layer = manifest.latent_layer
    layer = layer or ("pool6" if method == "cwr" else net.DEFAULT_LATENT_LAYER)
    try:
        net.check_latent_layer(layer)
    except ValueError as e:
        raise StreamError(str(e)) from None
    if saved is None:
        try:
            make_config(opts, method).check_compatible(layer)
        except ValueError as e:
            raise StreamError(str(e)) from None
