"""What a `latent-replay stream` session is asked to do: the typed options its modules read."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Optional

from .common import DEFAULT_MEMORY


@dataclass
class StreamOptions:
    """The command line of the stream demo (see `command.add_stream_command` for each option's meaning)."""

    source: str = "0"
    state: str = "stream-state"
    fresh: bool = False
    artifacts: Optional[str] = None
    latent_layer: Optional[str] = None
    method: Optional[str] = None
    classes: Optional[int] = None
    teach_frames: int = 100
    lr: Optional[float] = None
    epochs: Optional[int] = None
    replay_memory: int = DEFAULT_MEMORY
    smooth: int = 5
    headless: bool = False
    schedule: Optional[str] = None
    commands: bool = False
    log: Optional[str] = None
    record: Optional[str] = None
    record_fps: float = 15.0
    screenshot: Optional[str] = None
    screenshot_frame: int = -1
    display_size: int = 384
    max_frames: int = 0
    reconnect_seconds: float = 10.0
    device: str = "cpu"
    engine: str = "step"
    threads: int = 0
    train_threads: int = 1
    weights: Optional[str] = None
    preprocessing: Optional[str] = None
    seed: int = 0
    width: Optional[float] = None
    serve: Optional[str] = None  # [HOST:]PORT of the web page (stream --serve, latent-replay serve)
    serve_fps: float = 10.0
    token_file: Optional[str] = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "StreamOptions":
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})
