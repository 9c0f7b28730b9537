"""Download pretrained weights into a cache, resumably, and keep only files that parse.

`latent-replay fetch weights [NAME] [--url URL] [--cache-dir DIR] [--force]` (apps/artifacts.py) calls
`fetch_weights`. A download goes to `<file>.part`; a broken one resumes with an
HTTP Range request (restarting cleanly if the server ignores it); the finished file is parsed and
validated before it is renamed into place, so the cache never holds a truncated or corrupt model.
"""
from __future__ import annotations

import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Tuple, Union

from .files import load_weights_file
from .weights import WeightsError

CHUNK = 1 << 16
TIMEOUT_S = 60


class KnownWeights(NamedTuple):
    """Where a named model lives, the file name it is cached under and the loader that checks it."""

    url: str
    filename: str
    check: str  # loader format used to verify the download: a file suffix understood by load_weights_file
    description: str
    width: Optional[float] = None  # the width multiplier the download must have (checked)
    top: Optional[bool] = None  # whether it must carry the ImageNet classifier (checked)


KNOWN_WEIGHTS: Dict[str, KnownWeights] = {
    # The seed's ImageNet-pretrained MobileNetV1 (README: "models/MobileNetV1.caffemodel";
    # experiments_configuration.py: init_weights_file "./models/X.caffemodel" with model "MobileNetV1").
    "caffe": KnownWeights(
        "https://raw.githubusercontent.com/lrzpellegrini/Latent-Replay/master/"
        "Project%20Source/models/MobileNetV1.caffemodel",
        "MobileNetV1.caffemodel", ".caffemodel",
        "MobileNetV1 (Caffe, ImageNet) shipped with the Latent Replay seed repository",
    ),
    "timm": KnownWeights(
        "https://huggingface.co/timm/mobilenetv1_100.ra4_e3600_r224_in1k/resolve/main/model.safetensors",
        "mobilenetv1_100.ra4_e3600_r224_in1k.safetensors", ".safetensors",
        "timm mobilenetv1_100.ra4_e3600_r224_in1k (PyTorch, ImageNet)",
    ),
}
DEFAULT_NAME = "caffe"

# keras.applications.MobileNet's published files: every width x input size, with or without the top
KERAS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
KERAS_SIZES = (128, 160, 192, 224)
KERAS_NAMES = "keras:WIDTH_SIZE[_no_top] (WIDTH 0.25/0.5/0.75/1.0, SIZE 128/160/192/224)"
_KERAS_NAME = re.compile(r"^keras:(0\.25|0\.50?|0\.75|1|1\.0)_(\d+)(_no_top)?$")
_KERAS_ALPHA_TEXT = {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}  # as Keras names its files


def keras_weights(width: float, size: int, top: bool = True) -> KnownWeights:
    """The Keras MobileNet file of `width` trained at `size` (keras.applications' name and URL)."""
    if width not in _KERAS_ALPHA_TEXT or size not in KERAS_SIZES:
        raise WeightsError(f"Keras publishes MobileNet at widths 0.25/0.5/0.75/1.0 and sizes "
                           f"{'/'.join(map(str, KERAS_SIZES))}, not width {width:g} at {size}")
    filename = f"mobilenet_{_KERAS_ALPHA_TEXT[width]}_{size}_tf{'' if top else '_no_top'}.h5"
    return KnownWeights(KERAS_BASE_URL + filename, filename, ".h5",
                        f"Keras MobileNet width {width:g}, {size}x{size}, ImageNet{'' if top else ', no top'}",
                        width=width, top=top)


def known_weights(name: str) -> Optional[KnownWeights]:
    """The known weights called `name` ('caffe', 'timm', 'keras:1.0_128', ...), or None."""
    if name in KNOWN_WEIGHTS:
        return KNOWN_WEIGHTS[name]
    match = _KERAS_NAME.match(name)
    if match:
        return keras_weights(float(match.group(1)), int(match.group(2)), top=match.group(3) is None)
    if name.startswith("keras:"):
        raise WeightsError(f"unknown Keras weights {name!r}; use {KERAS_NAMES}, e.g. keras:1.0_128")
    return None


def known_names() -> str:
    """The known weight names, for help texts and messages."""
    return ", ".join(list(KNOWN_WEIGHTS) + [KERAS_NAMES])


def default_cache_dir() -> Path:
    """$LATENT_REPLAY_CACHE, else ~/.cache/latent-replay."""
    env = os.environ.get("LATENT_REPLAY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "latent-replay"


def cached_path(name: str, cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """Where the known weights `name` are (or would be) cached."""
    known = known_weights(name)
    if known is None:
        raise WeightsError(f"unknown weights {name!r}; known: {known_names()}, or pass --url")
    return Path(cache_dir or default_cache_dir()) / known.filename


def _resolve(name_or_url: str, url: Optional[str]) -> Tuple[str, str, KnownWeights]:
    """(url, cache file name, what the file must be) for a known name or a plain URL."""
    known = known_weights(name_or_url)
    if known is not None:
        return url or known.url, known.filename, known
    source = url or name_or_url
    if "://" not in source:
        raise WeightsError(f"unknown weights {name_or_url!r}; known: {known_names()}, or pass a URL")
    filename = Path(urllib.parse.unquote(urllib.parse.urlparse(source).path)).name
    if not filename:
        raise WeightsError(f"cannot tell a file name from URL {source}; pass a URL that ends in a file name")
    return source, filename, KnownWeights(source, filename, Path(filename).suffix, source)


def _open(url: str, offset: int):
    request = urllib.request.Request(url, headers={"User-Agent": "latent-replay"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)


def _resumed(response, offset: int) -> bool:
    """Whether the server honoured our Range request (206 from `offset`); else it sent the whole file."""
    content_range = response.headers.get("Content-Range", "")
    return offset > 0 and response.status == 206 and content_range.startswith(f"bytes {offset}-")


def _download(url: str, part: Path, progress: bool) -> None:
    """Fetch `url` into `part`, continuing an existing partial file when the server allows it."""
    from tqdm import tqdm

    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not offset:  # 416: our .part is not a prefix the server recognises
            raise
        part.unlink()
        offset, response = 0, _open(url, 0)
    with response:
        if not _resumed(response, offset):
            offset = 0  # server ignored Range: start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with open(part, "ab" if offset else "wb") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=part.name[:-5], disable=not progress,
        ) as bar:
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        raise OSError(f"got {part.stat().st_size} of {total} bytes")


def _mismatch(weights, known: KnownWeights) -> Optional[str]:
    """Why parsed weights are not the ones `known` names (None when they are)."""
    if known.width is not None and weights.arch.width != known.width:
        return f"it is a width-{weights.arch.width:g} MobileNet, not {known.width:g}"
    if known.top is not None and (weights.head_weight is not None) != known.top:
        return "it has an ImageNet classifier, which the no-top file must not" if known.top is False else \
            "it has no ImageNet classifier"
    return None


def _verify(part: Path, known: KnownWeights, url: str) -> None:
    try:
        why = _mismatch(load_weights_file(part, suffix=known.check), known)
        if why is not None:
            raise WeightsError(f"{why} ({known.description} was asked for)")
    except WeightsError as e:
        part.unlink()
        raise WeightsError(
            f"the file downloaded from {url} is not usable weights and was deleted ({e}); "
            f"check the URL or try again"
        ) from None


def fetch_weights(name_or_url: str = DEFAULT_NAME, cache_dir: Optional[Union[str, Path]] = None,
                  url: Optional[str] = None, progress: bool = True, force: bool = False) -> Path:
    """Download known weights (or any URL) into the cache and return the verified file's path."""
    source, filename, known = _resolve(name_or_url, url)
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    target = folder / filename
    if target.is_file() and not force:
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"cannot create cache folder {folder}: {e.strerror or e}; pass --cache-dir") from None
    part = folder / (filename + ".part")
    if force and part.exists():
        part.unlink()
    try:
        _download(source, part, progress)
    except urllib.error.HTTPError as e:
        raise WeightsError(f"download of {source} failed: HTTP {e.code} {e.reason}; check the URL") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        fix = f"run the command again to resume from {part.name}" if part.exists() else "check the network and URL"
        raise WeightsError(f"download of {source} failed ({reason}); {fix}") from None
    _verify(part, known, source)
    os.replace(part, target)
    return target
