"""Drawing the stream demo's overlay with OpenCV: prediction, speed, classes, teaching progress."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
BAR = 22  # height of one text line in pixels at scale 1
GREEN, YELLOW, WHITE, GREY, ORANGE = (80, 220, 80), (60, 220, 240), (255, 255, 255), (170, 170, 170), (40, 160, 255)
KEY_HELP = "t: teach a new object   1-9: teach class N again   q: quit"


@dataclass
class OverlayInfo:
    """Everything the overlay shows for one frame."""

    label: Optional[str]
    confidence: float
    fps: float
    latency_ms: float
    known: int
    capacity: int
    collecting: Optional[Tuple[str, int, int]] = None  # (name, collected, wanted)
    training: Optional[Tuple[str, float]] = None  # (name, fraction done)
    queued: int = 0
    typing: Optional[str] = None  # the class name being typed after 't'
    message: str = ""
    help: bool = True


def _text(img: np.ndarray, text: str, org: Tuple[int, int], scale: float, colour: Tuple[int, int, int],
          thickness: int = 1) -> None:
    """Text with a dark outline, readable on any background."""
    cv2.putText(img, text, org, FONT, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, FONT, scale, colour, thickness, cv2.LINE_AA)


def _progress_bar(img: np.ndarray, y: int, fraction: float, colour: Tuple[int, int, int], scale: float) -> None:
    w = img.shape[1]
    x0, x1, h = int(8 * scale), w - int(8 * scale), max(4, int(6 * scale))
    cv2.rectangle(img, (x0, y), (x1, y + h), (60, 60, 60), -1)
    cv2.rectangle(img, (x0, y), (x0 + int((x1 - x0) * max(0.0, min(1.0, fraction))), y + h), colour, -1)


def render(frame: np.ndarray, info: OverlayInfo, size: int = 384) -> np.ndarray:
    """The frame scaled to `size` x `size` with a header (prediction) and a footer (status)."""
    scale = size / 384.0
    line = int(BAR * scale)
    img = cv2.resize(frame, (size, size), interpolation=cv2.INTER_LINEAR)
    header = np.zeros((int(2.2 * line), size, 3), np.uint8)
    footer = np.zeros((int(3.4 * line), size, 3), np.uint8)
    if info.label is None:
        _text(header, "nothing learned yet" if info.known == 0 else "?", (int(8 * scale), int(1.45 * line)),
              0.8 * scale, GREY, max(1, int(2 * scale)))
    else:
        colour = GREEN if info.confidence >= 0.6 else YELLOW
        _text(header, f"{info.label}  {100 * info.confidence:.0f}%", (int(8 * scale), int(1.45 * line)),
              0.8 * scale, colour, max(1, int(2 * scale)))
    status = f"{info.fps:.1f} fps  {info.latency_ms:.1f} ms  classes {info.known}/{info.capacity}"
    _text(footer, status, (int(8 * scale), int(0.8 * line)), 0.5 * scale, WHITE)
    _text(footer, _activity(info), (int(8 * scale), int(1.75 * line)), 0.5 * scale, ORANGE)
    if info.collecting is not None:
        _progress_bar(footer, int(2.0 * line), info.collecting[1] / max(1, info.collecting[2]), ORANGE, scale)
    elif info.training is not None:
        _progress_bar(footer, int(2.0 * line), info.training[1], GREEN, scale)
    bottom = info.typing is not None and f"class name: {info.typing}_  (Enter: start, Esc: cancel)" \
        or info.message or (KEY_HELP if info.help else "")
    _text(footer, bottom, (int(8 * scale), int(3.1 * line)), 0.42 * scale, GREY)
    return np.concatenate([header, img, footer])


def _activity(info: OverlayInfo) -> str:
    parts = []
    if info.collecting is not None:
        name, got, wanted = info.collecting
        parts.append(f"collecting '{name}' {got}/{wanted}")
    if info.training is not None:
        parts.append(f"training '{info.training[0]}' {100 * info.training[1]:.0f}%")
    if info.queued:
        parts.append(f"{info.queued} queued")
    return "  ".join(parts) or "predicting"
