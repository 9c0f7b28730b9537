"""Download pretrained weights into a cache, resumably, and keep only files that parse.

`latent-replay fetch weights [NAME] [--url URL] [--cache-dir DIR] [--force]` (apps/artifacts.py) calls
`fetch_weights`. A download goes to `<file>.part`; a broken one resumes with an
HTTP Range request (restarting cleanly if the server ignores it); the finished file is parsed and
validated before it is renamed into place, so the cache never holds a truncated or corrupt model.
"""
from __future__ import annotations

import http.client
import os
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


def default_cache_dir() -> Path:
    """$LATENT_REPLAY_CACHE, else ~/.cache/latent-replay."""
    env = os.environ.get("LATENT_REPLAY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "latent-replay"


def cached_path(name: str, cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """Where the known weights `name` are (or would be) cached."""
    if name not in KNOWN_WEIGHTS:
        raise WeightsError(f"unknown weights {name!r}; known: {', '.join(KNOWN_WEIGHTS)}, or pass --url")
    return Path(cache_dir or default_cache_dir()) / KNOWN_WEIGHTS[name].filename


def _resolve(name_or_url: str, url: Optional[str]) -> Tuple[str, str, str]:
    """(url, cache file name, verification suffix) for a known name or a plain URL."""
    if name_or_url in KNOWN_WEIGHTS:
        known = KNOWN_WEIGHTS[name_or_url]
        return url or known.url, known.filename, known.check
    source = url or name_or_url
    if "://" not in source:
        raise WeightsError(f"unknown weights {name_or_url!r}; known: {', '.join(KNOWN_WEIGHTS)}, or pass a URL")
    filename = Path(urllib.parse.unquote(urllib.parse.urlparse(source).path)).name
    if not filename:
        raise WeightsError(f"cannot tell a file name from URL {source}; pass a URL that ends in a file name")
    return source, filename, Path(filename).suffix


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


def _verify(part: Path, suffix: str, url: str) -> None:
    try:
        load_weights_file(part, suffix=suffix)
    except WeightsError as e:
        part.unlink()
        raise WeightsError(
            f"the file downloaded from {url} is not usable weights and was deleted ({e}); "
            f"check the URL or try again"
        ) from None


def fetch_weights(name_or_url: str = DEFAULT_NAME, cache_dir: Optional[Union[str, Path]] = None,
                  url: Optional[str] = None, progress: bool = True, force: bool = False) -> Path:
    """Download known weights (or any URL) into the cache and return the verified file's path."""
    source, filename, suffix = _resolve(name_or_url, url)
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
    _verify(part, suffix, source)
    os.replace(part, target)
    return target
