"""CORe50 NICv2 (79 / 196 / 391 batches) from the official filelists and core50_128x128 PNGs.

The filelists ship with the package (`latent_replay/data/nicv2_filelists.tar.xz`, CC BY 4.0, see
`CORE50_NOTICE.md`) and are read straight from the archive; a directory with the same layout
(`sIII_v2_<N>/run<R>/train_batch_XX_filelist.txt`, `test_filelist.txt`, `test_filelist_20.txt`)
may be given instead. The images are not shipped: download core50_128x128.zip from the CORe50 site.
"""
from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from .base import FrameBatch, Scenario, SourceError
from .images import Entry, ImageFiles

SCENARIOS = (391, 196, 79)
TEST_SETS = ("reduced", "full")
NUM_CLASSES = 50
CORE50_URL = "https://vlomonaco.github.io/core50/"
SHIPPED_FILELISTS = Path(__file__).resolve().parents[2] / "data" / "nicv2_filelists.tar.xz"
_CATEGORIES = ("plug_adapter", "mobile_phone", "scissor", "light_bulb", "can", "glass", "ball",
               "marker", "cup", "remote_control")
# Object names of core50_class_names.txt: label = 5 * category + instance.
CLASS_NAMES: List[str] = [f"{c}{k}" for c in _CATEGORIES for k in range(1, 6)]



@dataclass(frozen=True)
class Filelists:
    """Parsed lists of one scenario and run."""

    batches: Tuple[Tuple[Entry, ...], ...]
    test_full: Tuple[Entry, ...]
    test_reduced: Tuple[Entry, ...]


def _parse(text: str, where: str) -> Tuple[Entry, ...]:
    entries = []
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            path, label = parts[0], int(parts[1])
        except (IndexError, ValueError):
            raise SourceError(f"{where}, line {n}: expected '<path> <label>', got {line!r}") from None
        if not 0 <= label < NUM_CLASSES:
            raise SourceError(f"{where}, line {n}: label {label} out of range 0..{NUM_CLASSES - 1}")
        entries.append((path, label))
    return tuple(entries)


def _read_lists(source: Path, scenario: int, run: int) -> Dict[str, str]:
    """{relative name: text} of the files this scenario/run needs, from an archive or a folder."""
    prefix = f"sIII_v2_{scenario}/run{run}/"
    wanted = re.compile(rf"^(?:\./)?({re.escape(prefix)}[^/]+\.txt|test_filelist_20\.txt)$")
    texts: Dict[str, str] = {}
    if source.is_dir():
        for p in list((source / prefix).glob("*.txt")) + [source / "test_filelist_20.txt"]:
            if p.is_file():
                texts[p.relative_to(source).as_posix()] = p.read_text()
        return texts
    try:
        with tarfile.open(source) as tar:
            for member in tar:
                m = wanted.match(member.name)
                if m and member.isfile():
                    texts[m.group(1)] = tar.extractfile(member).read().decode()
    except (tarfile.TarError, OSError) as exc:
        raise SourceError(f"cannot read CORe50 filelists {source}: {exc}") from None
    return texts


@lru_cache(maxsize=8)
def load_filelists(source: str, scenario: int, run: int) -> Filelists:
    """Parse (and cache) the NICv2 lists of `scenario`/`run` from a .tar.xz or a directory."""
    src = Path(source)
    if not src.exists():
        raise SourceError(f"CORe50 filelists {src} not found (a nicv2_filelists.tar.xz or its unpacked folder)")
    texts = _read_lists(src, scenario, run)
    prefix = f"sIII_v2_{scenario}/run{run}/"
    batch_re = re.compile(rf"^{re.escape(prefix)}train_batch_(\d+)_filelist\.txt$")
    numbered = sorted((int(m.group(1)), name) for name in texts for m in [batch_re.match(name)] if m)
    if not numbered:
        raise SourceError(f"no NICv2-{scenario} run {run} batch lists in {src} (looked for {prefix})")
    if [n for n, _ in numbered] != list(range(len(numbered))):
        raise SourceError(f"NICv2-{scenario} run {run} in {src}: batch files are not numbered 0..{len(numbered) - 1}")
    batches = tuple(_parse(texts[name], f"{src}:{name}") for _, name in numbered)
    full = texts.get(prefix + "test_filelist.txt")
    reduced = texts.get("test_filelist_20.txt")
    return Filelists(batches,
                     _parse(full, f"{src}:{prefix}test_filelist.txt") if full is not None else (),
                     _parse(reduced, f"{src}:test_filelist_20.txt") if reduced is not None else ())


class Core50Scenario(Scenario):
    """CORe50 NICv2-`scenario`, run `run`: training batches in the official order and a test set."""

    def __init__(self, root: Union[str, os.PathLike], scenario: int = 391, run: int = 0,
                 test_set: str = "reduced", filelists: Optional[Union[str, os.PathLike]] = None,
                 skip_bad_images: bool = False, workers: int = 4, input_size: int = 128) -> None:
        if scenario not in SCENARIOS:
            raise SourceError(f"unknown NICv2 scenario {scenario}; choose one of {', '.join(map(str, SCENARIOS))}")
        if test_set not in TEST_SETS:
            raise SourceError(f"unknown test set {test_set!r}; choose 'reduced' (every 20th frame) or 'full'")
        root = Path(root)
        if (root / "core50_128x128").is_dir():
            root = root / "core50_128x128"
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "not found"
            raise SourceError(f"CORe50 image folder {root} {what}; download core50_128x128.zip from "
                              f"{CORE50_URL} and unzip it, then pass the folder that holds core50_128x128/ "
                              f"(its s1..s11)")
        self.root = root
        self.scenario, self.run, self.test_kind = scenario, run, test_set
        self.name = f"core50-nicv2-{scenario}-run{run}"
        self.num_classes = NUM_CLASSES
        self.input_size = int(input_size)
        self.images = ImageFiles(root, self.input_size, workers, skip_bad_images, "CORe50 image")
        self.lists = load_filelists(str(Path(filelists or SHIPPED_FILELISTS).resolve()), scenario, run)
        test = self.lists.test_reduced if test_set == "reduced" else self.lists.test_full
        if not test:
            raise SourceError(f"the {test_set} test list is missing from {filelists or SHIPPED_FILELISTS}")
        self._test = test
        self._checked = False

    def check_images(self, sample: int = 5) -> None:
        """Raise SourceError if the folder does not hold CORe50 (the first few listed images of the
        first batch and the test set are all missing): one clear error before any decoding, instead
        of an unreadable-image error per listed image. Done before the first decode, and by the
        runner before it writes anything."""
        if self._checked:
            return
        listed = [p for p, _ in self.lists.batches[0][:sample]] if self.lists.batches else []
        listed += [p for p, _ in self._test[:sample]]
        missing = [p for p in listed if not (self.root / p).is_file()]
        if listed and len(missing) == len(listed):
            raise SourceError(f"{self.root} does not hold the CORe50 images ({self.root / missing[0]} and the other "
                              f"first listed images are missing); download core50_128x128.zip from {CORE50_URL}, "
                              f"unzip it and pass the folder that holds core50_128x128/")
        self._checked = True

    @property
    def n_batches(self) -> int:
        return len(self.lists.batches)

    @property
    def class_names(self) -> List[str]:
        return list(CLASS_NAMES)

    def test_labels(self) -> np.ndarray:
        return np.array([label for _, label in self._test], np.int64)

    @property
    def test_size(self) -> int:
        return len(self._test)

    @property
    def bad_images(self) -> int:
        return self.images.bad_images

    def _decode(self, entries: Tuple[Entry, ...], name: str) -> FrameBatch:
        self.check_images()
        return self.images.decode(entries, name)

    def load_batch(self, i: int) -> FrameBatch:
        return self._decode(self.lists.batches[self._check_index(i)], f"{self.name}/batch{i:03d}")

    def test_set(self) -> FrameBatch:
        return self._decode(self._test, f"{self.name}/test-{self.test_kind}")

    def iter_test(self, chunk: int = 512) -> Iterator[FrameBatch]:
        """The test set decoded chunk by chunk (the full set is 2.2 GB decoded at 128x128)."""
        for s in range(0, len(self._test), chunk):
            yield self._decode(self._test[s:s + chunk], f"{self.name}/test-{self.test_kind}[{s}]")
