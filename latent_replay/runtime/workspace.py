"""One workspace: the artifacts a learner trains, checked against what is asked; the front, engine,
replay pool and learner opened on them; and the one way frames become latents (training batches,
the test set in chunks, live frames).

Exporting artifacts needs the exporter and weights, which are the commands' business (`apps`): this
module only reads artifacts, so that the device library never depends on the workstation side.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Tuple

import numpy as np

from ..export.manifest import Manifest, ManifestError
from .engine import Back, Front
from .learn import Learner, LearnerConfig, LearnerHooks

ENCODE_CHUNK = 256  # frames per front call: bounds the front's working memory


@dataclass(frozen=True)
class ArtifactSpec:
    """What a learner needs of its artifacts."""

    latent_layer: str
    classes: int
    input_size: int
    engine: str = "step"

    def describe(self) -> str:
        return f"latent layer {self.latent_layer}, {self.classes} classes, {self.input_size}px"

    def mismatch(self, manifest: Manifest, at_least_classes: bool = False) -> Optional[str]:
        """Why `manifest` does not fit (None when it does). With `at_least_classes`, more classes than
        needed are fine (given artifacts may have spare outputs)."""
        if manifest.latent_layer != self.latent_layer:
            return f"they were exported at latent layer {manifest.latent_layer!r}, not {self.latent_layer!r}"
        if manifest.input["size"] != self.input_size:
            return f"they take {manifest.input['size']}px frames, not {self.input_size}px"
        if (manifest.classes < self.classes) if at_least_classes else (manifest.classes != self.classes):
            return f"they have {manifest.classes} classes, not {self.classes}"
        if self.engine not in manifest.engines:
            return f"they hold no artifacts for the {self.engine} engine"
        return None


def describe(manifest: Manifest) -> str:
    return (f"latent layer {manifest.latent_layer}, {manifest.classes} classes, {manifest.input['size']}px"
            + ("" if manifest.engines == ["step"] else f", engines {'+'.join(manifest.engines)}"))


def given_artifacts(directory: Path, spec: ArtifactSpec) -> Manifest:
    """Artifacts a user pointed at (--artifacts): verified, and fitting `spec` (ManifestError otherwise)."""
    manifest = Manifest.load(Path(directory), verify=True)
    why = spec.mismatch(manifest, at_least_classes=True)
    if why is not None:
        raise ManifestError(f"the artifacts in {directory} do not fit: {why}; export them again "
                            f"(`latent-replay export --latent-layer {spec.latent_layer} --classes {spec.classes} "
                            f"--input-size {spec.input_size}`)")
    return manifest


def existing_artifacts(directory: Path, spec: ArtifactSpec) -> Tuple[Optional[Manifest], Optional[str]]:
    """(manifest, None) when `directory` holds artifacts that fit; (None, None) when it holds none;
    (None, description) when it holds others."""
    try:
        manifest = Manifest.load(Path(directory))
    except ValueError:
        return None, None
    if spec.mismatch(manifest) is None:
        return manifest, None
    return None, describe(manifest)


def encode(front: Front, frames: np.ndarray, chunk: int = ENCODE_CHUNK) -> np.ndarray:
    """Frames through the frozen front, a chunk at a time."""
    if not len(frames):
        return np.zeros((0,) + tuple(front.manifest.latent_shape), np.dtype(front.manifest.latent_dtype))
    return np.concatenate([front(frames[i:i + chunk]) for i in range(0, len(frames), chunk)])


def encode_chunks(front: Front, batches: Iterable[Any]) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """(latents, labels) per frame batch of an iterable (a test set decoded chunk by chunk)."""
    for batch in batches:
        yield encode(front, batch.frames), batch.labels


@dataclass
class Opened:
    """A front and a learner on one set of artifacts."""

    front: Front
    learner: Learner


def open_learner(directory: Path, manifest: Manifest, config: LearnerConfig, device: str = "cpu",
                 threads: int = 0, spin: bool = True, engine: str = "step",
                 hooks: Sequence[LearnerHooks] = ()) -> Opened:
    """Front, back (engine), replay pool (on the back's device) and learner for `config`."""
    from .replay import pool_for

    front = Front(directory, manifest, device, threads, spin)
    back = Back(directory, manifest, device, threads, spin, engine=engine)
    pool = None
    if config.uses_memory:
        pool = pool_for(back.device, config.replay_memory, tuple(manifest.latent_shape), config.storage,
                         config.seed, np.dtype(manifest.latent_dtype))
    return Opened(front, Learner(back, config, pool, hooks=hooks))
