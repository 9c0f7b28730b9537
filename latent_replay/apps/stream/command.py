"""`latent-replay stream`: the camera demo's command line and its run from start to saved state."""
from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import numpy as np

from ..common import add_weights_arguments
from .app import StreamApp
from .common import DEFAULT_EPOCHS, DEFAULT_LR, DEFAULT_MEMORY, StreamError
from .live import EventLog, LivePredictor, open_primed
from .options import StreamOptions
from .schedule import load_schedule
from .state import (STATE_MARKERS, _book_from, _check_args, _check_display, _check_plan, _input_size, _learner_dir,
                    _saved_state, build_learner, opencv_conflict, resolve_artifacts, save_learner)

GIL_SWITCH_S = 0.001  # see _run
METHODS = ("cwr", "ar1free", "ar1")


def stream_command(args: argparse.Namespace) -> int:
    return run_stream(StreamOptions.from_args(args))


def run_stream(opts: StreamOptions) -> int:
    """The whole session: checks, start-up, the live loop, and the saved state at the end."""
    from ...folders import FolderLock, check_folder, check_output_file
    from ...runtime.engine import Back, Front
    from ...runtime.state import check_replaceable
    from .teacher import Teacher

    _check_args(opts)
    conflict = opencv_conflict()
    if conflict:
        print(f"warning: {conflict}", file=sys.stderr)
    for option, path in (("--log", opts.log), ("--record", opts.record), ("--screenshot", opts.screenshot)):
        if path:  # written during or after the session: a place they cannot go is refused before the export
            check_output_file(path, option)
    schedule = load_schedule(opts.schedule) if opts.schedule else None
    from ..run.experiment import RUN_MARKERS
    from .web.session import prepare

    check_folder(Path(opts.state), STATE_MARKERS, "--state", "a stream state (no learner/ or artifacts/)",
                 others=[(RUN_MARKERS[:2], "the output folder of `latent-replay run`")])
    check_replaceable(_learner_dir(opts))
    saved = _saved_state(opts)
    method = opts.method or (saved["meta"]["config"]["method"] if saved else "cwr")
    _check_plan(opts, method, saved)
    _check_display(opts)  # no window support fails before any export
    listening = prepare(opts)  # the address, the token, the port bound: before anything is written
    try:
        source = open_primed(opts.source, _input_size(opts), opts.seed)  # a bad camera fails before any export
    except BaseException:
        if listening is not None:
            listening.close()
        raise
    try:
        with FolderLock(Path(opts.state), "--state"):
            artifacts, manifest = resolve_artifacts(opts, method, saved)
            learner = build_learner(opts, artifacts, manifest, saved)
            book = _book_from(saved, int(manifest.classes), schedule)
            live = Back(artifacts, manifest, opts.device, opts.threads, spin=False)  # eval only: the step engine
            live.load_parameters(learner.params)
            predictor = LivePredictor(Front(artifacts, manifest, opts.device, opts.threads, spin=False), live, book,
                                      opts.smooth)
            predictor.version = learner.batches_trained
            log = EventLog(opts.log)
            print(f"stream: {opts.source} -> {manifest.latent_layer} ({learner.config.method}), "
                  f"{len(book.known)} known classes, state {opts.state}", file=sys.stderr)
            _run(opts, source, predictor, learner, book, schedule, log, Teacher, listening, artifacts)
    finally:
        source.close()
        if listening is not None:
            listening.close()
    return 0


def _saver(opts: StreamOptions, book):
    """The teacher's save after each job: with the class book the job carries (as it is once the job is
    applied), else the book as it is."""
    def save(learner, job) -> None:
        meta = getattr(job, "book_meta", None)
        save_learner(opts, learner, meta if meta is not None else book.meta())
    return save


def _on_sigterm(app_ref):
    def handler(signum, frame) -> None:
        app = app_ref()
        print("SIGTERM: saving and stopping", file=sys.stderr, flush=True)
        if app is not None:
            app.quit = True
    return handler


def _run(opts, source, predictor, learner, book, schedule, log, teacher_cls, listening=None, artifacts=None) -> None:
    """Run the loop with a teacher (and the web server); whatever happens, train what is queued, save,
    and close. SIGTERM (a service being stopped) ends the loop the same way as q or quit."""
    from .web.session import Serving

    app: Optional[StreamApp] = None
    teacher = teacher_cls(learner, lambda: app.frame_index if app else 0, _saver(opts, book))
    app = StreamApp(opts, source, predictor, teacher, book, schedule, log)
    serving = Serving(listening, app, opts, artifacts) if listening is not None else None
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm(lambda: app)) if main_thread else None
    switch = sys.getswitchinterval()
    # While the worker runs Python code, the live loop waits for the GIL after every ORT or OpenCV
    # call, up to the switch interval each time (5 ms by default): hand it over sooner.
    sys.setswitchinterval(GIL_SWITCH_S)
    try:
        if serving is not None:
            serving.start()
        app.run()
    finally:
        sys.setswitchinterval(switch)
        app.control.fail_pending("the session is stopping")
        if app.held:
            print(f"stopped with learning paused: {len(app.held)} collected batch(es) not trained", file=sys.stderr)
        if app.collecting is not None:
            print(f"stopped while collecting '{app.collecting.name}' ({len(app.collecting.latents)}/"
                  f"{app.collecting.wanted} frames): not trained", file=sys.stderr)
        teacher.close(wait=True)
        app.apply_updates()
        save_learner(opts, learner, book.meta())
        app.close()
        summary = app.summary()
        log.write("summary", **summary)
        log.close()
        if opts.screenshot and app.last_view is not None:
            _write_image(opts.screenshot, app.last_view)
        if serving is not None:
            serving.stop()
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    acc = summary["accuracy"]
    print(f"{summary['frames']} frames, {summary['trainings']} trainings, known: "
          f"{', '.join(summary['known_classes']) or 'none'}; latency {summary['latency_ms_mean']:.1f} ms mean"
          + (f"; accuracy on {summary['evaluated_frames']} untaught frames {100 * acc:.1f}%" if acc is not None else ""))


def _write_image(path: str, image: np.ndarray) -> None:
    import cv2

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(path, image, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise StreamError(f"cannot write image {path}")


def add_stream_command(sub: argparse._SubParsersAction) -> None:
    """`stream` (the demo) and `serve` (the same with a board service's defaults)."""
    p = sub.add_parser(
        "stream", help="live demo: predict from a camera and learn new objects on the fly",
        description="Predict every frame of a camera (or video file, GStreamer pipeline, synthetic objects) "
                    "while teaching new objects: press t and type a name (or 1-9 for a known class) to collect "
                    "--teach-frames frames; the batch trains in the background and the new weights are swapped "
                    "in when done. --headless with --schedule runs a scripted session and logs it. The learner "
                    "lives in --state and is saved after every batch and on exit. --weights defaults to the "
                    "cached caffe weights (`latent-replay fetch weights`), else random.")
    _add_arguments(p, serve=False)
    p = sub.add_parser(
        "serve", help="the stream demo as a board service: headless, the web page on, the camera reconnected",
        description="`latent-replay stream --serve` with a service's defaults: no window, the web page at --serve "
                    "(default 127.0.0.1:8080; 0.0.0.0:PORT for the network, with the access token), a camera "
                    "that stops retried for ever, SIGTERM saves and stops. See the README for a systemd unit.")
    _add_arguments(p, serve=True)


def _add_arguments(p: argparse.ArgumentParser, serve: bool) -> None:
    p.add_argument("--source", default="0",
                   help="camera index (default 0), /dev/videoN, a GStreamer pipeline (ending in appsink), a video "
                        "file, or synthetic[:N] for the built-in synthetic objects")
    p.add_argument("--state", default="stream-state",
                   help="folder with the learner state (and the exported artifacts); default ./stream-state. "
                        "Must be new, empty or a state folder of this demo")
    p.add_argument("--fresh", action="store_true",
                   help="start over: ignore the learner saved in --state (it is replaced at the first save)")
    p.add_argument("--artifacts", help="reuse exported artifacts instead of exporting into STATE/artifacts")
    p.add_argument("--latent-layer", "--latent_layer", dest="latent_layer", default=None,
                   help="latent layer when exporting (default pool6 for cwr, conv5_4/dw for ar1free/ar1)")
    p.add_argument("--method", choices=METHODS, default=None,
                   help="cwr (CWR*, head only, default), ar1free (AR1*-free) or ar1 (AR1* with SI)")
    p.add_argument("--classes", type=int, default=None, help="class capacity when exporting (default 50)")
    p.add_argument("--teach-frames", type=int, default=100, help="frames collected per teaching (default 100)")
    p.add_argument("--lr", type=float, default=None,
                   help=f"learning rate of every batch (default {DEFAULT_LR['cwr']} for cwr, "
                        f"{DEFAULT_LR['ar1free']} for ar1free/ar1)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs per batch (default {DEFAULT_EPOCHS['cwr']} for cwr, {DEFAULT_EPOCHS['ar1free']} "
                        f"for ar1free/ar1)")
    p.add_argument("--replay-memory", type=int, default=DEFAULT_MEMORY,
                   help=f"replay memory size in patterns (default {DEFAULT_MEMORY})")
    p.add_argument("--smooth", type=int, default=5, help="frames the prediction is averaged over (default 5)")
    p.add_argument("--headless", action="store_true", default=serve,
                   help="no window (for boards without a display, and tests)" + ("; always on for serve" if serve else ""))
    p.add_argument("--serve", nargs="?", const="127.0.0.1:8080", default="127.0.0.1:8080" if serve else None,
                   metavar="[HOST:]PORT",
                   help="serve the live view and the controls over HTTP (default 127.0.0.1:8080; "
                        "0.0.0.0:PORT for every interface; port 0 picks a free one); needs pip install "
                        "\"latent-replay[web]\"")
    p.add_argument("--serve-fps", type=float, default=10.0, help="frames a second sent to the page (default 10)")
    p.add_argument("--token-file", help="the access token of the page and API (first line, >= 16 URL-safe "
                                        "characters); default: a new random token, printed at start in the link")
    p.add_argument("--schedule", help="JSON file: what to teach at which frames, and ground truth (headless)")
    p.add_argument("--commands", action="store_true",
                   help="headless without schedule: read command lines from stdin: teach NAME, more NAME, rename OLD -> NEW, forget NAME, pause, resume, save, quit")
    p.add_argument("--log", help="write a JSON-lines log: one line per frame, per training, and a summary")
    p.add_argument("--record", help="write the frames with the overlay to this video (mp4v)")
    p.add_argument("--record-fps", type=float, default=15.0, help="frame rate of --record (default 15)")
    p.add_argument("--screenshot", help="write a frame with the overlay to this PNG (for the README)")
    p.add_argument("--screenshot-frame", type=int, default=-1,
                   help="which frame --screenshot shows (default -1: the last one)")
    p.add_argument("--display-size", type=int, default=384, help="side of the shown image in pixels (default 384)")
    p.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (default 0: no limit)")
    p.add_argument("--reconnect-seconds", type=float, default=math.inf if serve else 10.0,
                   help="how long to retry a camera that stops delivering frames (default "
                        + ("for ever)" if serve else "10)"))
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="execution provider (default cpu)")
    p.add_argument("--engine", choices=["step", "ort-training"], default="step",
                   help="training engine: step (default, any onnxruntime) or ort-training (needs onnxruntime-training)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads of the live loop (0: all cores)")
    p.add_argument("--train-threads", type=int, default=1,
                   help="ONNX Runtime threads of the background training (default 1, leaves cores to the loop)")
    add_weights_arguments(p)
    p.set_defaults(handler=stream_command, weights=None)
