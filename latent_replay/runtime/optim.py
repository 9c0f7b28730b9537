"""The update rule the runtime applies to the back (ORT's optimizers have no momentum/weight decay).

`SGD` is torch.optim.SGD with momentum and weight decay (no dampening, no Nesterov), in numpy and in
place: `d = g + wd * p; d *= scale; buf = m * buf + d (buf = d on the first step); p -= lr * mult * buf`.
`scale` is the optional per-parameter gradient scale of the Caffe SI variant (weight decay
included). A parameter without a gradient this step (frozen) is left alone, momentum included, as
torch does for parameters whose `.grad` is None.
"""
from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional, Set

import numpy as np

MOMENTUM_PREFIX = "momentum/"


class SGD:
    """SGD with momentum and weight decay over named numpy arrays."""

    def __init__(self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 lr_mult: Optional[Mapping[str, float]] = None, frozen: Iterable[str] = ()) -> None:
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.lr_mult: Dict[str, float] = dict(lr_mult or {})
        self.frozen: Set[str] = set(frozen)
        self.grad_scale: Dict[str, np.ndarray] = {}
        self._buf: Dict[str, np.ndarray] = {}
        self._tmp: Dict[str, np.ndarray] = {}

    def reset(self) -> None:
        """Forget the momentum (as creating a new torch optimizer does)."""
        self._buf.clear()

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
        """Update `params[name]` in place for every name in `grads` that is not frozen."""
        for name, g in grads.items():
            if name not in self.frozen:
                self._update(name, params[name], g)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        d = self._tmp.get(name)
        if d is None or d.shape != p.shape:
            d = self._tmp[name] = np.empty_like(p)
        if self.weight_decay:
            np.multiply(p, self.weight_decay, out=d)
            d += g
        else:
            d[...] = g
        scale = self.grad_scale.get(name)
        if scale is not None:
            d *= scale
        if self.momentum:
            buf = self._buf.get(name)
            if buf is None:
                buf = self._buf[name] = d.copy()
            else:
                buf *= self.momentum
                buf += d
            d[...] = buf
        d *= self.lr * self.lr_mult.get(name, 1.0)
        p -= d

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, np.ndarray]:
        return {MOMENTUM_PREFIX + name: buf.copy() for name, buf in self._buf.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self._buf = {k[len(MOMENTUM_PREFIX):]: np.array(v, dtype=np.float32)
                     for k, v in state.items() if k.startswith(MOMENTUM_PREFIX)}
