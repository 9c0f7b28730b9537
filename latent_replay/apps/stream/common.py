"""The stream demo's error type and defaults, shared by its modules."""
from __future__ import annotations

from ..common import UserError

STREAM_META = "stream"  # key of the demo's own data (class names) in the learner state's meta
WINDOW = "latent-replay stream"
# Demo defaults (see docs/stream.md): one taught object is one small batch, so the presets' few
# epochs at lr 5e-5 (tuned for CORe50 with pretrained weights) learn too little. pool6 + CWR* trains
# only the 1024 x classes head: 60 epochs take ~0.1 s. Its rate: pool6 features share a large common
# component (random weights: norm ~35 against class differences ~1-2), along which the head's loss
# is hundreds of times steeper than along the directions that tell objects apart: at lr 0.03 the
# 2nd object's batch ended at loss 16.7; 0.005 for 60 epochs learns (docs/stream.md).
DEFAULT_LR = {"cwr": 0.005, "ar1free": 0.003, "ar1": 0.003}
DEFAULT_EPOCHS = {"cwr": 60, "ar1free": 8, "ar1": 8}
# A taught object's batch holds far fewer patterns than the memory: walked in slot order from slot 0
# in every epoch (the port's rule), its first slots would be replayed again and again and the others
# never (the 3rd object's batch replayed 68 slots: 60 of the 1st object, 8 of the 2nd). Shuffled
# every epoch, every stored pattern comes back over the epochs.
DEFAULT_REPLAY_SHUFFLE = "epoch"
DEFAULT_MEMORY = 1500
SYNTHETIC_PERIOD = 100  # frames per object of the synthetic source
# The synthetic source's nuisance (pose, lighting, background, hand), as `latent-replay run`'s
# synthetic stream: random weights, the demo's fallback, cannot separate the full CORe50-like
# nuisance (difficulty 1: a linear probe on their pool6 features tops out near 85%, CWR* ~60%).
SYNTHETIC_DIFFICULTY = 0.1

class StreamError(UserError):
    """A stream-demo input a user must fix (schedule, state, display)."""
