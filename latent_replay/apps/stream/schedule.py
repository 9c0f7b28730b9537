"""The headless schedule of the stream demo: when to teach what, and the ground truth to score."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from .common import StreamError


@dataclass(frozen=True)
class Segment:
    """Frames first..last (inclusive) showing the object `label`."""

    first: int
    last: int
    label: str

    def __contains__(self, frame: int) -> bool:
        return self.first <= frame <= self.last


@dataclass
class Schedule:
    teach: List[Segment] = field(default_factory=list)
    truth: List[Segment] = field(default_factory=list)
    classes: List[str] = field(default_factory=list)

    def truth_at(self, frame: int) -> Optional[str]:
        return next((s.label for s in self.truth if frame in s), None)

    def taught(self, frame: int) -> bool:
        return any(frame in s for s in self.teach)

    def last_frame(self) -> int:
        """The last frame the schedule says anything about (-1 for an empty one)."""
        return max((s.last for s in self.teach + self.truth), default=-1)

    def names(self) -> List[str]:
        """Every class name the schedule teaches, in order of first mention."""
        seen: Dict[str, None] = dict.fromkeys(self.classes)
        seen.update(dict.fromkeys(s.label for s in self.teach))
        return list(seen)


def _segments(data: Dict[str, Any], key: str, where: str) -> List[Segment]:
    items = data.get(key, [])
    if not isinstance(items, list):
        raise StreamError(f"{where}: '{key}' must be a list of {{\"frames\": [first, last], \"label\": name}}")
    out = []
    for n, item in enumerate(items):
        ctx = f"{where}: {key}[{n}]"
        if not isinstance(item, dict) or set(item) - {"frames", "label"}:
            raise StreamError(f"{ctx} must be an object with keys 'frames' and 'label', got {item!r}")
        frames, label = item.get("frames"), item.get("label")
        if (not isinstance(frames, list) or len(frames) != 2
                or not all(isinstance(f, int) and not isinstance(f, bool) for f in frames)):
            raise StreamError(f"{ctx}: 'frames' must be [first, last] (integers), got {frames!r}")
        if not 0 <= frames[0] <= frames[1]:
            raise StreamError(f"{ctx}: 'frames' {frames} must satisfy 0 <= first <= last")
        if not isinstance(label, str) or not label.strip():
            raise StreamError(f"{ctx}: 'label' must be a non-empty string, got {label!r}")
        out.append(Segment(frames[0], frames[1], label.strip()))
    return sorted(out, key=lambda s: s.first)


def parse_schedule(data: Any, where: str = "schedule") -> Schedule:
    """Validate a schedule object (see docs/stream.md); any problem -> one StreamError."""
    if not isinstance(data, dict):
        raise StreamError(f"{where}: the top level must be a JSON object with a 'teach' list")
    unknown = sorted(set(data) - {"teach", "truth", "classes"})
    if unknown:
        raise StreamError(f"{where}: unknown key(s) {', '.join(unknown)} (valid: teach, truth, classes)")
    classes = data.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) and c.strip() for c in classes) \
            or len(set(classes)) != len(classes):
        raise StreamError(f"{where}: 'classes' must be a list of distinct non-empty names, got {classes!r}")
    teach = _segments(data, "teach", where)
    for a, b in zip(teach, teach[1:]):
        if b.first <= a.last:
            raise StreamError(f"{where}: teach ranges {[a.first, a.last]} and {[b.first, b.last]} overlap")
    return Schedule(teach, _segments(data, "truth", where), [c.strip() for c in classes])


def load_schedule(path: str) -> Schedule:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise StreamError(f"cannot read schedule {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise StreamError(f"schedule {path} is not valid JSON: {e}") from None
    return parse_schedule(data, f"schedule {path}")
