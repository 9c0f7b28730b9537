"""The user's own images as a continual-learning stream: `DIR/CLASS/*.png|jpg` (one session per
class) or `DIR/CLASS/SESSION/*` (sessions: recording sessions, viewpoint ranges...), planned like
CORe50's NICv2 (`plan.nicv2_plan`): batch 0 holds the first session of the first `first_classes`
classes (in name order), every other class-session is a batch of its own in a seeded order, or cut
into batches of `per_batch` images. The test set is `DIR/test/CLASS/...` when it exists, else a
seeded held-out fraction of every class-session. Class names are the folder names.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from .base import FrameBatch, Scenario, SourceError
from .images import IMAGE_SUFFIXES, Entry, ImageFiles
from .plan import nicv2_plan

TEST_FOLDER = "test"
DEFAULT_FIRST_CLASSES = 10  # as NICv2's first batch: 10 of the 50 objects
DEFAULT_TEST_FRACTION = 0.2
WHAT = "expected DIR/CLASS/*.png|jpg or DIR/CLASS/SESSION/*.png|jpg"

Unit = Tuple[int, int, int]  # (class, session, chunk)


def _natural(name: str) -> List[object]:
    """Sort key that puts obj1__5.png before obj1__10.png."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _images(folder: Path) -> List[str]:
    return sorted((p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith(".")), key=_natural)


def _subfolders(folder: Path) -> List[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: _natural(p.name))


@dataclass(frozen=True)
class FolderLayout:
    """What a folder holds: class names, and per class its sessions as (name, image paths relative to
    the root); the test folder's entries when it has one."""

    classes: List[str]
    sessions: List[List[Tuple[str, List[str]]]]
    test: Optional[List[Entry]]


def scan_folder(root: Path) -> FolderLayout:
    """Read the layout of `root` (SourceError when it does not hold a usable image tree)."""
    if not root.exists():
        raise SourceError(f"image folder {root} does not exist ({WHAT})")
    if not root.is_dir():
        raise SourceError(f"image folder {root} is not a folder ({WHAT})")
    classes, sessions = [], []
    for folder in _subfolders(root):
        if folder.name == TEST_FOLDER:
            continue
        loose, inner = _images(folder), _subfolders(folder)
        if loose and inner:
            raise SourceError(f"{folder} holds both images and session folders ({', '.join(p.name for p in inner[:3])}); "
                              f"put its images into session folders too")
        found = [("", [f"{folder.name}/{n}" for n in loose])] if loose else \
            [(s.name, [f"{folder.name}/{s.name}/{n}" for n in _images(s)]) for s in inner]
        found = [(name, paths) for name, paths in found if paths]
        if not found:
            raise SourceError(f"class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        classes.append(folder.name)
        sessions.append(found)
    if len(classes) < 2:
        raise SourceError(f"image folder {root} has {len(classes)} class folder(s), at least 2 are needed ({WHAT})")
    test = None
    if (root / TEST_FOLDER).is_dir():
        test = []
        for folder in _subfolders(root / TEST_FOLDER):
            if folder.name not in classes:
                raise SourceError(f"{folder} is a test class that the training folders do not have; name it like "
                                  f"one of {', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}")
            label = classes.index(folder.name)
            for base, dirs, files in sorted(os.walk(folder)):
                dirs.sort()
                rel = Path(base).relative_to(root)
                test += [((rel / f).as_posix(), label) for f in sorted(files, key=_natural)
                         if Path(f).suffix.lower() in IMAGE_SUFFIXES]
        if not test:
            raise SourceError(f"{root / TEST_FOLDER} holds no images; fill DIR/test/CLASS/ or remove it "
                              f"(a held-out fraction is then used)")
    return FolderLayout(classes, sessions, test)


class FolderScenario(Scenario):
    """Training batches and a test set from an image folder (see the module docstring).

    `seed` orders the batches (a run); `split_seed` draws the held-out test images, so that every
    run of an experiment is scored on the same test set."""

    def __init__(self, root: Union[str, os.PathLike], first_classes: Optional[int] = None,
                 per_batch: Optional[int] = None, test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0,
                 split_seed: int = 0, input_size: int = 128, workers: int = 4, skip_bad_images: bool = False) -> None:
        self.root = Path(root)
        layout = scan_folder(self.root)
        k = len(layout.classes)
        first = min(DEFAULT_FIRST_CLASSES, k) if first_classes is None else int(first_classes)
        if not 1 <= first <= k:
            raise SourceError(f"--first-classes must be 1..{k} (the folder has {k} classes), got {first}")
        if per_batch is not None and per_batch < 1:
            raise SourceError(f"--per-batch must be at least 1, got {per_batch}")
        if layout.test is None and not 0.0 < test_fraction < 1.0:
            raise SourceError(f"--test-fraction must be between 0 and 1, got {test_fraction}")
        self.num_classes, self.input_size = k, int(input_size)
        self.first_classes, self.per_batch, self.seed, self.split_seed = first, per_batch, seed, split_seed
        self.test_fraction = None if layout.test is not None else float(test_fraction)
        self._classes = layout.classes
        self._sessions = [[name for name, _ in found] for found in layout.sessions]
        self.name = f"folder-{self.root.resolve().name}-seed{seed}"
        self.images = ImageFiles(self.root, self.input_size, workers, skip_bad_images, "image")
        train, self._test = self._split(layout)
        self._units: Dict[Unit, List[Entry]] = {}
        for (c, s), entries in train.items():
            size = per_batch or max(len(entries), 1)
            for chunk, start in enumerate(range(0, len(entries), size)):
                self._units[(c, s, chunk)] = entries[start:start + size]
        empty = sorted({c for c in range(k)} - {c for c, _, _ in self._units})
        if empty:
            raise SourceError(f"class {layout.classes[empty[0]]!r} keeps no training image after the test split; "
                              f"give it more images or a smaller --test-fraction")
        batch0 = [min(u for u in self._units if u[0] == c) for c in range(first)]
        self._plan = nicv2_plan(list(self._units), batch0, seed)

    def _split(self, layout: FolderLayout) -> Tuple[Dict[Tuple[int, int], List[Entry]], List[Entry]]:
        """Training entries per (class, session) and the test entries."""
        train: Dict[Tuple[int, int], List[Entry]] = {}
        test: List[Entry] = list(layout.test or [])
        for c, found in enumerate(layout.sessions):
            for s, (_, paths) in enumerate(found):
                entries = [(p, c) for p in paths]
                if layout.test is None and len(entries) > 1:
                    n_test = max(1, int(round(self.test_fraction * len(entries))))
                    held = set(np.random.default_rng([self.split_seed, 5, c, s]).choice(len(entries), n_test,
                                                                                         replace=False).tolist())
                    test += [e for i, e in enumerate(entries) if i in held]
                    entries = [e for i, e in enumerate(entries) if i not in held]
                train[(c, s)] = entries
        return train, test

    # ---- what the stream holds ----------------------------------------------------------------
    @property
    def n_batches(self) -> int:
        return len(self._plan)

    @property
    def class_names(self) -> List[str]:
        return list(self._classes)

    @property
    def bad_images(self) -> int:
        return self.images.bad_images

    def batch_entries(self, i: int) -> List[Entry]:
        return [e for unit in self._plan[self._check_index(i)] for e in self._units[unit]]

    def describe(self) -> Dict[str, object]:
        """The plan as results.json records it: settings, and per batch its class-sessions and size."""
        def unit(u: Unit) -> Dict[str, object]:
            c, s, chunk = u
            d: Dict[str, object] = {"class": self._classes[c], "session": self._sessions[c][s] or None,
                                    "images": len(self._units[u])}
            return dict(d, chunk=chunk) if self.per_batch else d
        return {"kind": "folder", "root": str(self.root), "classes": self.class_names,
                "first_classes": self.first_classes, "per_batch": self.per_batch, "seed": self.seed,
                "test": "folder" if self.test_fraction is None else
                        {"held_out_fraction": self.test_fraction, "split_seed": self.split_seed},
                "test_images": len(self._test), "batches": [[unit(u) for u in batch] for batch in self._plan]}

    def test_labels(self) -> np.ndarray:
        return np.array([label for _, label in self._test], np.int64)

    def test_entries(self) -> List[Entry]:
        """The held-out (or DIR/test/) images and their labels, as (path, class) pairs."""
        return list(self._test)

    @property
    def test_size(self) -> int:
        return len(self._test)

    def load_batch(self, i: int) -> FrameBatch:
        return self.images.decode(self.batch_entries(i), f"{self.name}/batch{i:03d}")

    def test_set(self) -> FrameBatch:
        return self.images.decode(self._test, f"{self.name}/test")

    def iter_test(self, chunk: int = 512):
        for s in range(0, len(self._test), chunk):
            yield self.images.decode(self._test[s:s + chunk], f"{self.name}/test[{s}]")

    def batch_sizes(self) -> List[int]:
        return [len(self.batch_entries(i)) for i in range(self.n_batches)]
