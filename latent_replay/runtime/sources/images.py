"""Image files -> frame batches: the decoding the CORe50 and folder sources share (threads, the
central square resized to the input, one clear error or a count for a file that does not decode)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .base import FrameBatch, SourceError
from .video import center_crop_resize, quiet_opencv_logs

Entry = Tuple[str, int]  # (path relative to the root, label)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class ImageFiles:
    """Decodes (relative path, label) entries under `root` into uint8 BGR frames of `input_size`."""

    def __init__(self, root: Path, input_size: int, workers: int = 4, skip_bad_images: bool = False,
                 what: str = "image") -> None:
        self.root, self.input_size = Path(root), int(input_size)
        self.workers, self.skip_bad_images, self.what = max(1, int(workers)), skip_bad_images, what
        self.bad_images = 0

    def read(self, rel: str) -> Optional[np.ndarray]:
        path = self.root / rel
        if not path.is_file():  # OpenCV would print a warning of its own for each
            return None
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        return None if img is None else center_crop_resize(img, self.input_size)

    def decode(self, entries: Sequence[Entry], name: str) -> FrameBatch:
        """The entries' frames, labels and paths; an unreadable file is a SourceError, or skipped and
        counted in `bad_images` with `skip_bad_images`."""
        quiet_opencv_logs()  # a corrupt image is reported by us, once, with its path
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="decode") as ex:
            images = list(ex.map(self.read, [p for p, _ in entries]))
        keep: List[int] = []
        for k, img in enumerate(images):
            if img is not None:
                keep.append(k)
                continue
            path = self.root / entries[k][0]
            why = "is missing" if not path.is_file() else "is corrupt or not an image"
            if not self.skip_bad_images:
                raise SourceError(f"{self.what} {path} {why} (pass --skip-bad-images to skip and count such images)")
            self.bad_images += 1
        s = self.input_size
        frames = np.stack([images[k] for k in keep]) if keep else np.zeros((0, s, s, 3), np.uint8)
        labels = np.array([entries[k][1] for k in keep], dtype=np.int64)
        return FrameBatch(frames, labels, name, [entries[k][0] for k in keep])
