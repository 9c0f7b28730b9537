"""A built-in CORe50-like stream, drawn with OpenCV on the fly (no download, deterministic per seed).

- Objects (classes): distinct combinations of shape, colour and texture (stripes, dots, checker,
  rings, plain), each rendered once on a small patch.
- Sessions: a background (two-colour gradient plus muted clutter), a lighting (gain and white
  balance), a preferred pose (position, scale) and, in some sessions, a "hand" occluding the object.
- A frame of (object, session, k): the object patch rotated as it turns in the hand (angle grows
  with k), squashed to mimic out-of-plane rotation, scaled and moved with jitter, composited on
  the session background, lit, with sensor noise.
- Batch 0 holds `first_classes` objects of session 0 (as NICv2's first batch holds 10 of 50);
  every later batch is one (object, session) pair of the training sessions, in a seeded random
  order. The test set is the held-out sessions of all objects.

Every frame is seeded by (seed, object, session, k), so any batch can be regenerated alone.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import cv2
import numpy as np

from ..errors import SettingError
from .base import FrameBatch, Scenario, SourceError
from .plan import nicv2_plan

SHAPES = ("circle", "square", "triangle", "star", "ellipse", "cross")
TEXTURES = ("plain", "striped", "dotted", "checkered", "ringed")
_HUE_NAMES = ((0, "red"), (15, "orange"), (30, "yellow"), (45, "lime"), (60, "green"),
              (75, "teal"), (90, "cyan"), (105, "azure"), (120, "blue"), (135, "violet"),
              (150, "magenta"), (165, "pink"), (180, "red"))
_PATCH = 96  # side of the rendered object patch


def _hsv_to_bgr(h: float, s: float, v: float) -> Tuple[int, int, int]:
    px = np.array([[[h % 180, s, v]]], dtype=np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(px, cv2.COLOR_HSV2BGR)[0, 0])


def _hue_name(h: float) -> str:
    return min(_HUE_NAMES, key=lambda t: abs(t[0] - h))[1]


def _shape_mask(shape: str, size: int) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    c, r = size // 2, int(size * 0.42)
    if shape == "circle":
        cv2.circle(m, (c, c), r, 255, -1, cv2.LINE_AA)
    elif shape == "square":
        cv2.rectangle(m, (c - r * 3 // 4, c - r * 3 // 4), (c + r * 3 // 4, c + r * 3 // 4), 255, -1)
    elif shape == "ellipse":
        cv2.ellipse(m, (c, c), (r, r // 2), 0, 0, 360, 255, -1, cv2.LINE_AA)
    elif shape == "cross":
        w = r // 3
        cv2.rectangle(m, (c - r, c - w), (c + r, c + w), 255, -1)
        cv2.rectangle(m, (c - w, c - r), (c + w, c + r), 255, -1)
    else:
        n, inner = (3, 1.0) if shape == "triangle" else (5, 0.45)
        angles = np.arange(2 * n if shape == "star" else n) * np.pi / (n if shape == "star" else n / 2.0)
        radii = np.where(np.arange(len(angles)) % 2, r * inner, r) if shape == "star" else np.full(n, r)
        pts = np.stack([c + radii * np.sin(angles), c - radii * np.cos(angles)], 1)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 255, cv2.LINE_AA)
    return m


def _texture(kind: str, size: int, base: Tuple[int, ...], second: Tuple[int, ...], step: int) -> np.ndarray:
    img = np.empty((size, size, 3), np.uint8)
    img[:] = base
    if kind == "striped":
        for x in range(-size, 2 * size, step * 2):
            cv2.line(img, (x, 0), (x + size, size), second, step, cv2.LINE_AA)
    elif kind == "dotted":
        for y in range(step // 2, size, step * 2):
            for x in range(step // 2 + (y // (2 * step) % 2) * step, size, step * 2):
                cv2.circle(img, (x, y), max(2, step // 2), second, -1, cv2.LINE_AA)
    elif kind == "checkered":
        yy, xx = np.mgrid[:size, :size] // step
        img[(yy + xx) % 2 == 1] = second
    elif kind == "ringed":
        for r in range(step, size, step * 2):
            cv2.circle(img, (size // 2, size // 2), r, second, max(2, step // 2), cv2.LINE_AA)
    return img


class SyntheticScenario(Scenario):
    """CORe50-like continual stream drawn with OpenCV; see the module docstring.

    Defaults: 10 classes, batch 0 = 5 classes x 60 frames of session 0, then one (object, session)
    batch of 60 frames for each remaining pair of the 3 training sessions (26 batches in all;
    `n_batches` keeps a prefix), test = 1 held-out session x 10 classes x 30 frames, 128x128.
    """

    def __init__(self, n_batches: Optional[int] = None, classes: int = 10, seed: int = 0, input_size: int = 128,
                 first_classes: int = 5, train_sessions: int = 3, test_sessions: int = 1,
                 frames_per_batch: int = 60, test_frames: int = 30, noise: float = 4.0,
                 difficulty: float = 1.0) -> None:
        if classes < 2 or not 1 <= first_classes <= classes:
            raise SourceError(f"need classes >= 2 and 1 <= first_classes <= classes, got {classes}, {first_classes}")
        if train_sessions < 1 or test_sessions < 1 or test_frames < 1:
            raise SourceError("sessions and frame counts must be >= 1")
        # The parameters a command passes on from its options: a SettingError names them.
        if frames_per_batch < 1:
            raise SettingError("frames_per_batch", f"must be at least 1, got {frames_per_batch}")
        if not 0.0 <= difficulty <= 1.0:
            raise SettingError("difficulty", f"must be in [0, 1], got {difficulty}")
        if input_size < 16:
            raise SettingError("input_size", f"must be at least 16, got {input_size}")
        first = [(c, 0) for c in range(first_classes)]
        plan = nicv2_plan([(c, s) for s in range(train_sessions) for c in range(classes)], first, seed)
        pairs = [unit for batch in plan[1:] for unit in batch]
        n_batches = len(pairs) + 1 if n_batches is None else int(n_batches)
        if not 1 <= n_batches <= len(pairs) + 1:
            raise SettingError("n_batches", f"must be 1..{len(pairs) + 1} for {classes} classes and "
                                            f"{train_sessions} training sessions, got {n_batches}")
        self.seed, self.input_size, self.num_classes = seed, int(input_size), classes
        self.first_classes, self.train_sessions, self.test_sessions = first_classes, train_sessions, test_sessions
        self.frames_per_batch, self.test_frames, self.noise = frames_per_batch, test_frames, noise
        # 1: full CORe50-like nuisance (pose, lighting, background, hand); smaller values shrink every
        # nuisance towards a centred object on a mid-grey background, so that weak (random) features
        # still separate the objects across sessions.
        self.difficulty = float(difficulty)
        self.name = f"synthetic-{classes}c-{n_batches}b-seed{seed}"
        # Every training pair is used when n_batches allows; otherwise a prefix of the seeded order.
        self._later = pairs[: n_batches - 1]
        self._objects = [self._make_object(c) for c in range(classes)]
        self._sessions = [self._make_session(s) for s in range(train_sessions + test_sessions)]
        self._noise = np.random.default_rng([seed, 4]).standard_normal(
            (16, self.input_size, self.input_size, 3), dtype=np.float32) * np.float32(noise)

    @classmethod
    def miniature(cls, **overrides: Any) -> "SyntheticScenario":
        """A tiny stream for tests: 4 classes, 2 in batch 0, 5 batches of 8 frames, 64x64."""
        kw = dict(n_batches=5, classes=4, first_classes=2, train_sessions=2, test_sessions=1,
                  frames_per_batch=8, test_frames=6, input_size=64)
        kw.update(overrides)
        return cls(**kw)

    # ---- appearance ----------------------------------------------------------------------------
    def _make_object(self, c: int) -> dict:
        rng = np.random.default_rng([self.seed, 0, c])
        hue_offset = np.random.default_rng([self.seed, 0]).uniform(0, 180)
        hue = (hue_offset + c * 180.0 / self.num_classes) % 180
        shape = SHAPES[(c * 7 + self.seed) % len(SHAPES)]
        texture = TEXTURES[(c + c // len(SHAPES) + self.seed) % len(TEXTURES)]
        base = _hsv_to_bgr(hue, rng.uniform(170, 255), rng.uniform(170, 240))
        second = _hsv_to_bgr(hue + rng.uniform(-12, 12), rng.uniform(60, 255), rng.choice([rng.uniform(30, 90), 255]))
        patch = _texture(texture, _PATCH, base, second, int(rng.integers(6, 12)))
        return {"patch": patch, "mask": _shape_mask(shape, _PATCH),
                "name": f"{_hue_name(hue)} {texture} {shape}"}

    def _make_session(self, s: int) -> dict:
        rng = np.random.default_rng([self.seed, 1, s])
        n = self.input_size
        c0, c1 = (np.array(_hsv_to_bgr(rng.uniform(0, 180), rng.uniform(0, 45), rng.uniform(60, 220)),
                           np.float32) for _ in range(2))
        t = np.linspace(0, 1, n, dtype=np.float32)
        ramp = t[:, None] if rng.random() < 0.5 else t[None, :]
        bg = (c0 * (1 - ramp[..., None]) + c1 * ramp[..., None]).astype(np.uint8)
        bg = np.ascontiguousarray(np.broadcast_to(bg, (n, n, 3)))
        for _ in range(int(rng.integers(3, 8))):  # muted clutter
            colour = _hsv_to_bgr(rng.uniform(0, 180), rng.uniform(0, 45), rng.uniform(40, 230))
            p, q = rng.integers(0, n, 2), rng.integers(n // 10, n // 3, 2)
            if rng.random() < 0.5:
                cv2.rectangle(bg, tuple(int(v) for v in p), tuple(int(v) for v in p + q), colour, -1)
            else:
                cv2.circle(bg, tuple(int(v) for v in p), int(q[0]) // 2, colour, -1, cv2.LINE_AA)
        bg = cv2.GaussianBlur(bg, (0, 0), n / 128.0)
        return {"bg": bg, "gain": rng.uniform(0.65, 1.25), "tint": rng.uniform(0.92, 1.08, 3).astype(np.float32),
                "centre": rng.uniform(0.4, 0.6, 2) * n, "scale": rng.uniform(0.4, 0.6),
                "hand": rng.random() < 0.5, "spin": rng.uniform(2, 8) * rng.choice([-1, 1])}

    def frame(self, c: int, s: int, k: int) -> np.ndarray:
        """Frame k of object c in session s: uint8 (S, S, 3) BGR."""
        rng = np.random.default_rng([self.seed, 2, c, s, k])
        obj, ses, n, d = self._objects[c], self._sessions[s], self.input_size, self.difficulty
        angle = (ses["spin"] * k + rng.uniform(-10, 10)) * d
        base_scale = 0.7 + (ses["scale"] - 0.7) * d
        scale = base_scale * n / _PATCH * (1 + (rng.uniform(0.85, 1.15) - 1) * d)
        squash = np.cos(rng.uniform(-1.0, 1.0) * d)  # out-of-plane rotation
        centre = n / 2 + (ses["centre"] - n / 2 + rng.normal(0, 0.05 * n, 2)) * d
        m = cv2.getRotationMatrix2D((_PATCH / 2, _PATCH / 2), angle, scale)
        m[0, :2] *= squash
        m[:, 2] = centre - m[:, :2] @ np.array([_PATCH / 2, _PATCH / 2])
        patch = cv2.warpAffine(obj["patch"], m, (n, n), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(obj["mask"], m, (n, n), flags=cv2.INTER_LINEAR).astype(np.float32) / 255
        bg = ses["bg"] if d == 1 else (ses["bg"].astype(np.float32) * d + 128 * (1 - d)).astype(np.uint8)
        img = cv2.blendLinear(patch, bg, alpha, 1 - alpha)
        if ses["hand"] and rng.random() < d:  # a skin-coloured hand holding the object from below
            hx, hy = int(centre[0] + rng.normal(0, 0.05 * n)), int(centre[1] + 0.22 * n)
            cv2.ellipse(img, (hx, hy), (int(0.16 * n), int(0.1 * n)), rng.uniform(-30, 30), 0, 360,
                        _hsv_to_bgr(10, 110, 200), -1, cv2.LINE_AA)
        gain = 1 + (ses["gain"] * rng.uniform(0.9, 1.1) - 1) * d
        tint = 1 + (ses["tint"] - 1) * np.float32(d)
        out = img.astype(np.float32) * (np.float32(gain) * tint)  # white balance
        tile = self._noise[int(rng.integers(len(self._noise)))]  # sensor noise from a seeded bank
        out += tile[:: int(rng.choice([-1, 1]))]
        return np.clip(out, 0, 255).astype(np.uint8)

    def _frames(self, items: List[Tuple[int, int, int]], name: str) -> FrameBatch:
        frames = np.stack([self.frame(c, s, k) for c, s, k in items])
        return FrameBatch(frames, np.array([c for c, _, _ in items], np.int64), name)

    # ---- scenario interface --------------------------------------------------------------------
    @property
    def n_batches(self) -> int:
        return 1 + len(self._later)

    @property
    def class_names(self) -> List[str]:
        return [o["name"] for o in self._objects]

    def batch_content(self, i: int) -> List[Tuple[int, int]]:
        """(object, session) pairs of training batch i."""
        self._check_index(i)
        return [(c, 0) for c in range(self.first_classes)] if i == 0 else [self._later[i - 1]]

    def load_batch(self, i: int) -> FrameBatch:
        f = self.frames_per_batch
        items = [(c, s, k) for c, s in self.batch_content(i) for k in range(f)]
        return self._frames(items, f"{self.name}/batch{i:03d}")

    def test_set(self) -> FrameBatch:
        sessions = range(self.train_sessions, self.train_sessions + self.test_sessions)
        items = [(c, s, k) for s in sessions for c in range(self.num_classes) for k in range(self.test_frames)]
        return self._frames(items, f"{self.name}/test")
