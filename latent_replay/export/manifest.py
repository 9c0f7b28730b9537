"""The manifest: what an artifact directory holds, shared by the exporter and the runtime.

This is the only piece of `export` the runtime imports: it tells the runtime the latent layer and
shape, the input format, the parameter names and the files (with checksums) without any ONNX parsing.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

MANIFEST_NAME = "manifest.json"
ENGINES = ("step", "ort-training")  # engines a back can be written for (`Manifest.engines`)
FORMAT_VERSION = 2  # 2: the step-graph back (1: ORT training artifacts only)


class ManifestError(ValueError):
    """An artifact directory that is missing, incomplete or does not match what was asked for."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Manifest:
    """Everything the runtime needs to know about an exported front/back pair."""

    latent_layer: str
    latent_shape: Tuple[int, ...]
    latent_dtype: str  # "float32", or "uint8" for latent layer `data` (raw frames)
    classes: int
    input: Dict[str, object]  # layout, dtype, size, channel_order
    preprocessing: Dict[str, object]
    weights_source: str
    files: Dict[str, Dict[str, str]]  # role -> {"path": relative path, "sha256": ...}
    trainable: List[str]
    carried: List[str]  # BRN running statistics the runtime updates
    brn_layers: List[str]
    head: str
    versions: Dict[str, str]
    si_params: List[str] = field(default_factory=list)  # conv weights SI regularizes
    engines: List[str] = field(default_factory=lambda: ["step"])  # engines the back was written for
    cost: Dict[str, int] = field(default_factory=dict)
    # width, padding rule and activation (models.mobilenet_v1.Architecture); older exports: width 1.0, Caffe's
    architecture: Dict[str, object] = field(default_factory=lambda: {"width": 1.0, "padding": "symmetric",
                                                                     "activation": "relu"})
    # names of the outputs when the weights' own classifier was kept (e.g. --classes 1000 with ImageNet names)
    class_names: List[str] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        d = asdict(self)
        d["latent_shape"] = list(self.latent_shape)
        return json.dumps(d, indent=2, sort_keys=True)

    def save(self, directory: Path) -> None:
        (Path(directory) / MANIFEST_NAME).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: Path, verify: bool = False) -> "Manifest":
        """Read DIR/manifest.json; with `verify`, also check every file's SHA-256."""
        directory = Path(directory)
        path = directory / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"{directory} is not an artifact directory (no {MANIFEST_NAME}); "
                                f"create one with `latent-replay export --out {directory}`")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            d["latent_shape"] = tuple(d["latent_shape"])
            manifest = cls(**d)
        except (ValueError, TypeError, KeyError) as e:
            raise ManifestError(f"{path} is not a valid manifest ({e}); export the artifacts again") from e
        if manifest.format_version != FORMAT_VERSION:
            raise ManifestError(f"{directory} was exported by another version of latent-replay (artifact format "
                                f"{manifest.format_version}, this one reads {FORMAT_VERSION}); export the artifacts again")
        for role, entry in manifest.files.items():
            f = directory / entry["path"]
            if not f.exists():
                raise ManifestError(f"artifact {f} ({role}) is missing; export the artifacts again")
            if verify and f.is_file() and sha256_file(f) != entry["sha256"]:
                raise ManifestError(f"artifact {f} ({role}) does not match its checksum; export again")
        return manifest

    def path(self, directory: Path, role: str) -> Path:
        return Path(directory) / self.files[role]["path"]

    def check_latent_layer(self, latent_layer: Optional[str]) -> None:
        """Refuse a run configured for another latent layer than the one the artifacts were cut at."""
        if latent_layer is not None and latent_layer != self.latent_layer:
            raise ManifestError(
                f"the artifacts were exported at latent layer {self.latent_layer!r}, not {latent_layer!r}; "
                f"export again with --latent-layer {latent_layer}"
            )
