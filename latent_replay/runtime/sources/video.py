"""Live or recorded frames through OpenCV: a camera index, /dev/videoN, a GStreamer pipeline or a file."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Optional

import cv2
import numpy as np

from .base import SourceError


# FFmpeg, inside OpenCV's video backend, prints its own errors ("moov atom not found") to the C-level
# stderr, past OpenCV's log level. OpenCV reads this variable once, at its first use of FFmpeg in the
# process, and sets FFmpeg's log level from it: -8 is AV_LOG_QUIET. A value the user set is kept.
FFMPEG_LOG_LEVEL = ("OPENCV_FFMPEG_LOGLEVEL", "-8")


def _quiet_ffmpeg() -> None:
    os.environ.setdefault(*FFMPEG_LOG_LEVEL)


def quiet_opencv_logs() -> None:
    """Keep OpenCV's own warnings ("[ WARN] ... can't open/read file") and FFmpeg's messages out of the
    user's terminal for good: every failure they describe reaches the user as our own one-line error.
    Call it before the process first opens a video (capture or writer)."""
    _quiet_ffmpeg()
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    if log is not None:
        log.setLogLevel(log.LOG_LEVEL_ERROR)
    elif hasattr(cv2, "setLogLevel"):  # older builds: 3 = error
        cv2.setLogLevel(3)


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    _quiet_ffmpeg()  # for good: FFmpeg's level is set once per process
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    if log is None:
        yield
        return
    level = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        log.setLogLevel(level)


def center_crop_resize(frame: np.ndarray, size: int) -> np.ndarray:
    """The central square of `frame`, resized to size x size (uint8 BGR kept as is)."""
    h, w = frame.shape[:2]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    crop = frame[y:y + side, x:x + side]
    if side == size:
        return np.ascontiguousarray(crop)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


class VideoSource:
    """Frames from cv2.VideoCapture, center-cropped to a square of `input_size`.

    `spec`: "0" (camera index), "/dev/video0", a GStreamer pipeline (contains "!"), or a video file.
    """

    def __init__(self, spec: str, input_size: int = 128, width: Optional[int] = None,
                 height: Optional[int] = None, fps: Optional[float] = None) -> None:
        self.spec, self.input_size = str(spec).strip(), int(input_size)
        self._kind = self._classify(self.spec)
        with _quiet_opencv():  # OpenCV logs its own warnings; our SourceError says it better
            if self._kind == "camera":
                self._cap = cv2.VideoCapture(int(self.spec))
            elif self._kind == "gstreamer":
                self._cap = cv2.VideoCapture(self.spec, cv2.CAP_GSTREAMER)
            else:
                self._cap = cv2.VideoCapture(self.spec)
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(self._open_error())
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, width), (cv2.CAP_PROP_FRAME_HEIGHT, height),
                            (cv2.CAP_PROP_FPS, fps)):
            if value:
                self._cap.set(prop, value)
        self.frames_read = 0

    @staticmethod
    def _classify(spec: str) -> str:
        if spec.isdigit():
            return "camera"
        if "!" in spec:
            return "gstreamer"
        if spec.startswith("/dev/video"):
            return "device"
        return "file"

    def _open_error(self) -> str:
        if self._kind == "camera":
            return f"camera index {self.spec} does not exist or cannot be opened (try 0, or a /dev/videoN path)"
        if self._kind == "device":
            why = "does not exist" if not os.path.exists(self.spec) else "cannot be opened (busy or no permission?)"
            return f"camera device {self.spec} {why}"
        if self._kind == "gstreamer":
            return (f"cannot open GStreamer pipeline {self.spec!r} (is OpenCV built with GStreamer? "
                    "opencv-python-headless from PyPI is not)")
        if not os.path.isfile(self.spec):
            return f"cannot read video file {self.spec}: no such file"
        return f"cannot read video file {self.spec}: no OpenCV backend could decode it"

    @property
    def is_live(self) -> bool:
        """True for cameras and pipelines, False for video files."""
        return self._kind != "file"

    def read(self) -> Optional[np.ndarray]:
        """The next frame, uint8 (S, S, 3) BGR, or None at the end of the stream."""
        if self._cap is None:
            return None
        ok, frame = self._cap.read()
        if not ok or frame is None:
            return None
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        self.frames_read += 1
        return center_crop_resize(frame, self.input_size)

    def frames(self, limit: Optional[int] = None) -> Iterator[np.ndarray]:
        """Frames until the stream ends (or `limit` frames)."""
        n = 0
        while limit is None or n < limit:
            frame = self.read()
            if frame is None:
                return
            n += 1
            yield frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
