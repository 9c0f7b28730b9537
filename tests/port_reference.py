"""An independent reference of the official PyTorch port's rules (the "port" preset), for the oracle
test `test_port_preset.py`.

Written from what the port's code does (vlomonaco/ar1-pytorch: ar1free_lat_replay.py, utils.py,
models/batch_renorm.py; read, not copied) and none of the learner's code: it extends the float64
reference of the paper's schedule (`reference_learner.py`: SGD, BRN forward/backward and ramp, SI)
and replaces what the port does differently:

1. CWR*'s class list is `set(train_y) | set(memory labels tensor)`: a set over a tensor keeps every
   element (a tensor hashes by identity), so the list holds the new batch's classes once and the
   label of every memory entry. `globavg` is the mean of the output rows indexed by that list (rows
   repeated), and the running average `saved = (saved * sqrt(past/cur) + (w - globavg)) /
   (sqrt(past/cur) + 1)` is applied once per list entry (`past` moves only after the batch; the
   first entry of a never-saved class sets `saved = w - globavg`).
2. BRN's running std starts at sqrt(running_var) of the pretrained BatchNorm, without eps; it then
   moves as everywhere (towards sqrt(biased var_B + eps) at the statistics rate).
3. The memory: batch 0 is padded to whole minibatches by prepending its first patterns (`pad_data`)
   and shuffled; the latents of every epoch-0 minibatch are collected (`cur_acts`) and the memory
   is drawn from them: `h = min(M // (i + 1), len(cur_acts))` of them at random; at batch 0 they
   become the memory (in the drawn order), later they overwrite h random entries (the memory never
   grows). Later batches: `cur_sz = N // ((N + M) // mb)` with M the configured size, `mb - cur_sz`
   replayed per minibatch, `N // cur_sz` iterations; the replayed part of iteration `it` is the slice
   `memory[it * r:(it + 1) * r]`, short or empty past its end. The patterns past the last whole
   minibatch (`N - it * cur_sz`) are never trained on and never stored.

The random draws follow this package's documented RNG use (the learner's `default_rng([seed, 1])`
shuffles the padded index list once per batch; the pool's `default_rng(seed)` draws the stored
patterns, then the overwritten entries), so that the arrays can be compared one to one.
Each rule can be switched back to the paper's (`rules`) to show that the test settings make it matter.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np
import torch

from reference_learner import HEAD, ReferenceLearner

PORT_RULES = ("cwr_per_entry", "std_without_eps", "share_from_configured_m", "short_slices", "store_epoch0",
              "memory_never_grows")


class PortReference(ReferenceLearner):
    """AR1*-free by the port's code (see the module docstring), in float64."""

    def __init__(self, initial: Mapping[str, np.ndarray], config, latent_layer: str, classes: int,
                 variances: Mapping[str, np.ndarray], rules=PORT_RULES) -> None:
        super().__init__(initial, config, latent_layer, classes)
        assert config.method == "ar1free" and not self.si
        self.rules = set(rules)
        for name in list(self.model.stats):
            if name.endswith("running_std"):
                layer = name[: -len("/running_std")]
                var = np.asarray(variances[layer], np.float64)
                eps = 0.0 if "std_without_eps" in self.rules else 1e-5
                self.model.stats[name] = torch.from_numpy(np.sqrt(var + eps))
        self.saved: Dict[int, np.ndarray] = {}
        self.mem_x: Optional[np.ndarray] = None

    @property
    def memory_size(self) -> int:
        return len(self.mem_y)

    def memory(self):
        return self.mem_x.copy(), self.mem_y.copy()

    def train_batch(self, x: np.ndarray, y: np.ndarray, i: int) -> None:
        c, mb = self.cfg, self.cfg.minibatch
        if self.new_optimizer(i):
            self.buf = {}
        lr, r_max, d_max, rate, ramp, epochs = self._schedule(i)

        # CWR* class list and reset
        if "cwr_per_entry" in self.rules:
            class_list = sorted(set(int(v) for v in y)) + [int(v) for v in self.mem_y]
        else:
            class_list = sorted(set(int(v) for v in y) | set(int(v) for v in self.mem_y))
        cur = np.bincount(np.concatenate([y, self.mem_y]).astype(np.int64), minlength=self.classes)
        with torch.no_grad():
            head = self.p(HEAD)
            head.zero_()
            for k, w in self.saved.items():
                if k in class_list:
                    head[k] = torch.from_numpy(w)

        # the batch's patterns and the minibatch layout
        n = len(x)
        if self.memory_size == 0:  # batch 0: pad_data, whole minibatches of new patterns
            missing = n % mb
            pad = (mb - missing) % mb
            take = np.concatenate([np.arange(pad) % n, np.arange(n)])
            new, replay, iterations = mb, 0, len(take) // mb
        else:
            m = c.replay_memory if "share_from_configured_m" in self.rules else self.memory_size
            new = n // ((n + m) // mb)
            replay = max(0, mb - new)
            iterations = n // new
            take = np.arange(n)
        order = take[self.rng.permutation(len(take))]
        xs, ys = x[order], y[order]

        for _ in range(epochs):
            for it in range(iterations):
                bx, by = xs[it * new:(it + 1) * new], ys[it * new:(it + 1) * new]
                if replay:
                    if "short_slices" in self.rules:
                        slots = np.arange(it * replay, min((it + 1) * replay, self.memory_size))
                    else:
                        slots = (it * replay + np.arange(replay)) % self.memory_size
                    bx = np.concatenate([bx, self.mem_x[slots]])
                    by = np.concatenate([by, self.mem_y[slots]])
                r_max, d_max = self._minibatch(i, bx, by, lr, r_max, d_max, rate, ramp, {}, {}, {})

        # CWR* consolidation over the class list (with repeats when the rule is on)
        tw = self.p(HEAD).detach().numpy().copy()
        globavg = tw[class_list].mean()
        for k in class_list:
            new_w = tw[k] - globavg
            if k in self.saved:
                wpast = np.sqrt(self.past[k] / cur[k])
                self.saved[k] = (self.saved[k] * wpast + new_w) / (wpast + 1.0)
            else:
                self.saved[k] = new_w
        for k, w in self.saved.items():
            tw[k] = w
        with torch.no_grad():
            self.p(HEAD).copy_(torch.from_numpy(tw))
        self.past += cur
        self.cw = np.zeros_like(self.cw)
        for k, w in self.saved.items():
            self.cw[k] = w

        # the memory
        if "store_epoch0" in self.rules:
            seen = iterations * new
            cand_x, cand_y = xs[:seen], ys[:seen]
        else:
            cand_x, cand_y = x, y
        self._store(cand_x, cand_y, i)

    def _store(self, cand_x: np.ndarray, cand_y: np.ndarray, i: int) -> None:
        cap = self.cfg.replay_memory
        h = min(cap // (i + 1), len(cand_x))
        src = self.pool_rng.choice(len(cand_x), h, replace=False)
        if self.mem_x is None:
            self.mem_x, self.mem_y = cand_x[src].copy(), cand_y[src].astype(np.int64)
            return
        if "memory_never_grows" in self.rules:
            assert h <= self.memory_size, "the port cannot draw more entries to replace than its memory has"
            slots = self.pool_rng.choice(self.memory_size, h, replace=False)
            self.mem_x[slots] = cand_x[src]
            self.mem_y[slots] = cand_y[src]
            return
        size = self.memory_size  # the paper's rule: empty slots first, then random filled ones
        n_empty = min(h, cap - size)
        filled = self.pool_rng.choice(size, h - n_empty, replace=False) if h - n_empty else np.zeros(0, np.int64)
        grown_x = np.concatenate([self.mem_x, np.zeros((n_empty,) + self.mem_x.shape[1:], self.mem_x.dtype)])
        grown_y = np.concatenate([self.mem_y, np.zeros(n_empty, np.int64)])
        slots = np.concatenate([np.arange(size, size + n_empty), filled]).astype(np.int64)
        grown_x[slots] = cand_x[src]
        grown_y[slots] = cand_y[src]
        self.mem_x, self.mem_y = grown_x, grown_y
