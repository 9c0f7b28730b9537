#!/usr/bin/env python
"""The real `latent-replay` command line with a camera the test steers (hardware we lack): `python
tests/web_camera.py stream --source camera ...` runs `latent_replay.cli` unchanged except that
`--source camera` opens `ShapeCamera`, which shows the object named in the file $CAMERA_FILE (0, 1
or 2: the disc, square and triangle of tests/test_stream.py) at $CAMERA_FPS frames a second.
"""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2  # noqa: E402

import latent_replay.apps.stream.live as live  # noqa: E402
from latent_replay.cli import main  # noqa: E402
from test_stream import draw  # noqa: E402


class ShapeCamera:
    is_live = False  # never stops

    def __init__(self, size: int) -> None:
        self.size, self.k, self.path = size, 0, Path(os.environ["CAMERA_FILE"])
        self.period = 1.0 / float(os.environ.get("CAMERA_FPS", "30"))
        self.obj, self.next_t, self.checked = 0, time.monotonic(), 0.0

    def read(self):
        now = time.monotonic()
        if now < self.next_t:
            time.sleep(self.next_t - now)
        self.next_t = max(self.next_t + self.period, time.monotonic() - self.period)
        if time.monotonic() - self.checked > 0.1:
            try:
                self.obj = int(self.path.read_text().strip() or 0)
            except (OSError, ValueError):
                pass
            self.checked = time.monotonic()
        self.k += 1
        return cv2.resize(draw(self.obj, self.k, 0), (self.size, self.size))

    def close(self) -> None:
        pass


_open = live.open_source


def open_source(spec, input_size, seed=0):
    return ShapeCamera(input_size) if spec == "camera" else _open(spec, input_size, seed)


live.open_source = open_source
if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
