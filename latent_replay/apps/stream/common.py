"""The stream demo's error type and defaults, shared by its modules."""
from __future__ import annotations

from ..common import UserError

STREAM_META = "stream"  # key of the demo's own data (class names) in the learner state's meta
WINDOW = "latent-replay stream"
# Demo defaults (see docs/stream.md): one taught object is one small batch, so the presets' few
# epochs at lr 5e-5 (tuned for CORe50 with pretrained weights) learn too little. pool6 + CWR* trains
# only the 1024 x classes head: many epochs cost milliseconds.
DEFAULT_LR = {"cwr": 0.03, "ar1free": 0.003, "ar1": 0.003}
DEFAULT_EPOCHS = {"cwr": 50, "ar1free": 8, "ar1": 8}
DEFAULT_MEMORY = 1500
SYNTHETIC_PERIOD = 100  # frames per object of the synthetic source


class StreamError(UserError):
    """A stream-demo input a user must fix (schedule, state, display)."""
