"""Continual learners on the exported back: naive, CWR*, AR1*, AR1*-free, cumulative.

One `Learner` drives every method; the methods differ only in a few switches read from
`LearnerConfig` (which parameters train, whether CWR* manages the output layer, whether SI
regularizes, where the minibatches come from). The pieces are small objects with their own state:

- `MinibatchPlan`: how many new and replayed patterns go into each minibatch (ALGORITHMS.md 5);
- `BrnSchedule`: r_max/d_max and the running-statistics rate per iteration (section 2);
- `Cwr`: consolidated weights and class counters of CWR* (section 3);
- `SynapticIntelligence`: SI importance and its use (section 4);
- `optim.SGD`: the update rule.

Per step: `Back.train_step` computes the loss, the gradients and the BRN batch statistics; the
learner applies SGD (plus the SI term) to its own numpy copy of the parameters, writes the changed
arrays back into the ORT state, and moves the BRN running mean/std by their exponential average.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .config import LearnerConfig
from .optim import SGD
from .state import STATE_META, load_state, save_state, state_dir

STATE_FORMAT = 1
BRN_EPS = 1e-5  # as the exported graph (models/graph.py BRN_EPS)


# ---------------------------------------------------------------------------------------------
# Minibatch composition
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MinibatchPlan:
    """Per-epoch layout: `iterations` minibatches of `new_per_mb` new + `replay_per_mb` replayed."""

    new_per_mb: int
    replay_per_mb: int
    iterations: int
    padded: int  # new patterns repeated to fill the last minibatch (no-memory case)


def plan_minibatches(n_new: int, n_mem: int, minibatch: int, pad: bool = True) -> MinibatchPlan:
    """ALGORITHMS.md section 5 / the PyTorch port.

    With a memory: `new = N // ((N + M) // mb)`, `replay = mb - new`, `N // new` iterations
    (NICv2-391: 300 + 1500 -> 21 + 107, 14 iterations). Without: plain minibatches of `mb` new
    patterns, the last one filled up by repeating patterns (the port's `pad_data`) when `pad`.
    """
    if n_new <= 0:
        raise ValueError("a training batch needs at least one pattern")
    if n_mem <= 0:
        if pad:
            iterations = -(-n_new // minibatch)
            return MinibatchPlan(minibatch, 0, iterations, iterations * minibatch - n_new)
        return MinibatchPlan(min(minibatch, n_new), 0, max(1, n_new // minibatch), 0)
    groups = (n_new + n_mem) // minibatch
    if groups == 0:  # everything fits in one minibatch smaller than `minibatch`
        return MinibatchPlan(n_new, n_mem, 1, 0)
    new = max(1, n_new // groups)
    return MinibatchPlan(new, max(0, minibatch - new), n_new // new, 0)


# ---------------------------------------------------------------------------------------------
# Batch Renormalization schedule
# ---------------------------------------------------------------------------------------------
class BrnSchedule:
    """r_max, d_max and the EMA rate of the running statistics, iteration by iteration.

    PyTorch ramp (port's BatchRenorm2D): on the first batch r_max/d_max start at 1/0 and after every
    training forward grow by `step * minibatch` while below their first-batch values (the port does
    not clamp, so the last increment may overshoot by less than one step). Caffe ramp: plain BN
    (1/0) for `warmup` iterations, then linear up to the first-batch values at `ramp_end`.
    Later batches: constant `brn_r_max`/`brn_d_max`.
    """

    def __init__(self, config: LearnerConfig) -> None:
        self.config = config
        self.r_max, self.d_max = 1.0, 0.0
        self.iteration = 0
        self.momentum = config.brn_momentum_first
        self.ramping = True

    def begin_batch(self, batch_index: int) -> None:
        c = self.config
        if batch_index == 0:
            self.r_max, self.d_max, self.iteration, self.ramping = 1.0, 0.0, 0, True
            self.momentum = c.brn_momentum_first
        else:
            self.r_max, self.d_max, self.ramping = c.brn_r_max, c.brn_d_max, False
            self.momentum = c.brn_momentum_later

    def current(self) -> Tuple[float, float]:
        c = self.config
        if self.ramping and c.brn_ramp == "caffe":
            if self.iteration < c.brn_warmup_iters:
                return 1.0, 0.0
            span = c.brn_ramp_end_iter - c.brn_warmup_iters
            frac = 1.0 if span <= 0 else min(1.0, (self.iteration - c.brn_warmup_iters) / span)
            return 1.0 + (c.brn_r_max_first - 1.0) * frac, c.brn_d_max_first * frac
        return self.r_max, self.d_max

    def advance(self, minibatch: int) -> None:
        self.iteration += 1
        if self.ramping and self.config.brn_ramp == "pytorch":
            inc = self.config.brn_ramp_step * minibatch
            if self.r_max < self.config.brn_r_max_first:
                self.r_max += inc
            if self.d_max < self.config.brn_d_max_first:
                self.d_max += inc

    def state(self) -> Dict[str, Any]:
        return {"r_max": self.r_max, "d_max": self.d_max, "iteration": self.iteration,
                "momentum": self.momentum, "ramping": self.ramping}

    def load(self, state: Mapping[str, Any]) -> None:
        self.r_max, self.d_max = float(state["r_max"]), float(state["d_max"])
        self.iteration, self.momentum = int(state["iteration"]), float(state["momentum"])
        self.ramping = bool(state["ramping"])


# ---------------------------------------------------------------------------------------------
# CWR*
# ---------------------------------------------------------------------------------------------
class Cwr:
    """CWR* on the output layer (ALGORITHMS.md section 3; the port's reset/consolidate_weights)."""

    def __init__(self, classes: int, features: int, unseen_rows: str = "trained") -> None:
        self.cw = np.zeros((classes, features), np.float32)
        self.past = np.zeros(classes, np.int64)
        self.unseen_rows = unseen_rows
        self.classes = np.zeros(0, np.int64)
        self.cur = np.zeros(classes, np.int64)

    def begin(self, new_labels: np.ndarray, memory_labels: np.ndarray) -> np.ndarray:
        """Record the batch's classes and counts (new + memory); return the reset output layer."""
        n = len(self.past)
        self.cur = (np.bincount(new_labels, minlength=n) + np.bincount(memory_labels, minlength=n))[:n]
        self.classes = np.flatnonzero(self.cur)
        head = np.zeros_like(self.cw)
        head[self.classes] = self.cw[self.classes]
        return head

    def consolidate(self, trained: np.ndarray) -> np.ndarray:
        """Fold the trained rows into `cw` (one scalar mean shift); return the inference layer."""
        cls = self.classes
        tw = trained.astype(np.float64)
        avg = tw[cls].mean()
        w = np.sqrt(self.past[cls] / self.cur[cls])[:, None]
        self.cw[cls] = ((self.cw[cls] * w + (tw[cls] - avg)) / (w + 1.0)).astype(np.float32)
        self.past[cls] += self.cur[cls]
        return self.inference_head(trained)

    def inference_head(self, trained: np.ndarray) -> np.ndarray:
        """`cw` for every class ever consolidated; other rows keep the trained values (as the port's
        set_consolidate_weights) or are zero."""
        head = trained.copy() if self.unseen_rows == "trained" else np.zeros_like(self.cw)
        seen = self.past > 0
        head[seen] = self.cw[seen]
        return head

    def state(self) -> Dict[str, np.ndarray]:
        return {"cwr/cw": self.cw.copy(), "cwr/past": self.past.copy()}

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.cw = np.array(arrays["cwr/cw"], np.float32)
        self.past = np.array(arrays["cwr/past"], np.int64)


# ---------------------------------------------------------------------------------------------
# Synaptic Intelligence
# ---------------------------------------------------------------------------------------------
class SynapticIntelligence:
    """SI importance over conv weights (normalization and output layer excluded).

    Per step `traj += g * (theta_after - theta_before)` (g: the gradient of the regularized loss,
    without weight decay, as in the port); per batch `omega += c * (-traj) / ((theta_end -
    theta_start)^2 + xi)`; `F = clip(omega, 0, clip)`; `theta* = theta_end`. Descent makes
    g * delta negative, so -traj, omega and F are >= 0 (negative omega is clipped to 0).
    Use: "penalty" adds `lambda * F * (theta - theta*)` to the gradient (the gradient of
    lambda/2 sum F (theta - theta*)^2); "scale" multiplies the gradient by `1 - F / clip`.
    """

    KEYS = ("omega", "F", "theta_star", "theta_start", "traj")

    def __init__(self, names: Sequence[str], params: Mapping[str, np.ndarray], config: LearnerConfig) -> None:
        self.names = list(names)
        self.config = config
        zeros = {n: np.zeros_like(params[n]) for n in self.names}
        self.omega = {n: z.copy() for n, z in zeros.items()}
        self.F = {n: z.copy() for n, z in zeros.items()}
        self.traj = {n: z.copy() for n, z in zeros.items()}
        self.theta_star = {n: params[n].copy() for n in self.names}
        self.theta_start = {n: params[n].copy() for n in self.names}

    def begin_batch(self, params: Mapping[str, np.ndarray]) -> None:
        for n in self.names:
            self.theta_start[n][...] = params[n]
            self.traj[n][...] = 0.0

    def regularize(self, params: Mapping[str, np.ndarray], grads: Dict[str, np.ndarray]) -> None:
        """Penalty mode: add lambda * F * (theta - theta*) to the gradients (a new array each)."""
        lam = self.config.si_lambda
        for n in self.names:
            if n in grads:
                grads[n] = grads[n] + lam * self.F[n] * (params[n] - self.theta_star[n])

    def grad_scales(self) -> Dict[str, np.ndarray]:
        """Scale mode: per-weight gradient factors 1 - F / clip (in [0, 1])."""
        return {n: (1.0 - self.F[n] / self.config.si_clip).astype(np.float32) for n in self.names}

    def accumulate(self, grads: Mapping[str, np.ndarray], before: Mapping[str, np.ndarray],
                   params: Mapping[str, np.ndarray]) -> None:
        for n, old in before.items():
            self.traj[n] += grads[n] * (params[n] - old)

    def end_batch(self, params: Mapping[str, np.ndarray]) -> None:
        c = self.config
        for n in self.names:
            delta = params[n] - self.theta_start[n]
            self.omega[n] += c.si_c * -self.traj[n] / (delta * delta + c.si_xi)
            self.F[n] = np.clip(self.omega[n], 0.0, c.si_clip).astype(np.float32)
            self.theta_star[n][...] = params[n]

    def state(self) -> Dict[str, np.ndarray]:
        return {f"si/{k}/{n}": getattr(self, k)[n].copy() for k in self.KEYS for n in self.names}

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        for k in self.KEYS:
            target = getattr(self, k)
            for n in self.names:
                target[n] = np.array(arrays[f"si/{k}/{n}"], np.float32)


# ---------------------------------------------------------------------------------------------
# The learner
# ---------------------------------------------------------------------------------------------
class Learner:
    """Trains the back batch by batch with the configured method; predicts with the eval model.

    `back`: an `engine.Back`. `pool`: any replay pool (host or CUDA) with the `ReplayPool`
    interface; one is created on the host when replay is on and none is given.
    """

    def __init__(self, back: Any, config: Optional[LearnerConfig] = None, pool: Any = None,
                 eval_batch: int = 256) -> None:
        self.back = back
        self.manifest = back.manifest
        self.config = config or LearnerConfig()
        self.config.check_compatible(self.manifest.latent_layer)
        self.classes = int(self.manifest.classes)
        self.head = self.manifest.head
        self.eval_batch = int(eval_batch)
        self.latent_shape = tuple(self.manifest.latent_shape)
        self.latent_dtype = np.dtype(self.manifest.latent_dtype)
        self.trainable: List[str] = list(back.trainable)
        self.carried: List[str] = list(back.carried)
        self.params: Dict[str, np.ndarray] = {n: np.array(back.get(n), np.float32)
                                              for n in self.trainable + self.carried}
        frozen = tuple(self.config.frozen_weights)
        self._always_frozen = [n for n in self.trainable if any(s in n for s in frozen)]
        self._train_all = [n for n in self.trainable if n not in self._always_frozen]
        self._stats = [(f"{l}/batch_mean", f"{l}/batch_var", f"{l}/running_mean", f"{l}/running_std")
                       for l in self.manifest.brn_layers]
        self.optim = SGD(self.config.lr_first, self.config.momentum, self.config.weight_decay,
                         lr_mult={self.head: self.config.head_lr_mult})
        features = self.params[self.head].shape[1]
        self.cwr = Cwr(self.classes, features, self.config.cwr_unseen_rows) if self.config.uses_cwr else None
        si_names = [n for n in self._train_all if n.endswith("/weight") and n != self.head]
        self.si = SynapticIntelligence(si_names, self.params, self.config) if self.config.uses_si else None
        self.brn = BrnSchedule(self.config)
        self.pool = pool if pool is not None else self._make_pool()
        self._on_device = hasattr(self.pool, "minibatch_ortvalue") and getattr(back, "device", "cpu") == "cuda"
        self._rng = np.random.default_rng([self.config.seed, 1])
        self._seen: Tuple[List[np.ndarray], List[np.ndarray]] = ([], [])  # cumulative: every pattern
        self.batches_trained = 0
        self.last_batch_index = -1

    @classmethod
    def open(cls, directory: Union[str, Path], config: Optional[LearnerConfig] = None, device: str = "auto",
             threads: int = 0, pool: Any = None) -> "Learner":
        """A learner on the artifacts in `directory` (the back is opened here)."""
        from .engine import Back

        return cls(Back(Path(directory), device=device, threads=threads), config, pool)

    def _make_pool(self) -> Any:
        if not self.config.uses_memory:
            return None
        from .pool import ReplayPool

        return ReplayPool(self.config.replay_memory, self.latent_shape, self.config.storage,
                          self.config.seed, self.latent_dtype)

    # -- training ----------------------------------------------------------------------------
    def train_batch(self, latents: np.ndarray, labels: np.ndarray, batch_index: int) -> Dict[str, Any]:
        """Train on one incremental batch (its cached latents) and update the replay memory."""
        t0 = time.perf_counter()
        latents, labels = self._check_batch(latents, labels)
        batch_index = int(batch_index)
        if batch_index < 0:
            raise ValueError(f"batch_index must be >= 0, got {batch_index}")
        active = self._begin_batch(batch_index, labels)
        if self.config.method == "cumulative":
            self._seen[0].append(latents)
            self._seen[1].append(labels)
            latents, labels = np.concatenate(self._seen[0]), np.concatenate(self._seen[1])
        n_mem = len(self.pool) if self.pool is not None else 0
        plan = plan_minibatches(len(latents), n_mem, self.config.minibatch, self.config.pad_without_replay)
        losses = self._run_epochs(latents, labels, plan, n_mem, active, self.config.epochs_for(batch_index))
        self._end_batch()
        if self.pool is not None and self.config.method != "cumulative":
            self.pool.insert_batch(latents, labels, batch_index)
        self.batches_trained += 1
        self.last_batch_index = batch_index
        return {"loss": float(np.mean(losses)), "time": time.perf_counter() - t0, "iterations": len(losses),
                "new_per_mb": plan.new_per_mb, "replay_per_mb": plan.replay_per_mb,
                "lr": self.optim.lr, "r_max": self.brn.current()[0], "d_max": self.brn.current()[1]}

    def _check_batch(self, latents: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        latents = np.asarray(latents)
        labels = np.asarray(labels)
        if latents.shape[1:] != self.latent_shape:
            raise ValueError(f"latents of shape {latents.shape[1:]} do not match the artifacts' latent layer "
                             f"{self.manifest.latent_layer!r} {self.latent_shape}")
        if self.latent_dtype == np.uint8 and latents.dtype != np.uint8:
            raise ValueError(f"latent layer 'data' takes uint8 frames, got {latents.dtype}")
        if labels.shape != (len(latents),) or len(latents) == 0:
            raise ValueError(f"{len(latents)} latents but labels of shape {labels.shape} (need one label each)")
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= self.classes:
            raise ValueError(f"labels must be integers in [0, {self.classes}), got {labels.min()}..{labels.max()}")
        return np.ascontiguousarray(latents, dtype=self.latent_dtype), labels.astype(np.int64)

    def _begin_batch(self, batch_index: int, labels: np.ndarray) -> List[str]:
        """Set lr, BRN phase, CWR* reset and SI start; return the parameters trained this batch."""
        if batch_index == 1:
            self.optim.reset()  # the port builds a new optimizer (lr_later) at batch 1
        self.optim.lr = self.config.lr(batch_index)
        self.brn.begin_batch(batch_index)
        if self.cwr is not None:
            memory_labels = self.pool.labels if self.pool is not None else np.zeros(0, np.int64)
            self._set(self.head, self.cwr.begin(labels, memory_labels))
        if self.si is not None:
            self.si.begin_batch(self.params)
            if self.config.si_mode == "scale":
                self.optim.grad_scale = self.si.grad_scales()
        if self.config.method == "cwr" and batch_index > 0:
            return [self.head]
        return list(self._train_all)

    def _end_batch(self) -> None:
        if self.cwr is not None:
            self._set(self.head, self.cwr.consolidate(self.params[self.head]))
        if self.si is not None:
            self.si.end_batch(self.params)

    def _run_epochs(self, latents: np.ndarray, labels: np.ndarray, plan: MinibatchPlan, n_mem: int,
                    active: List[str], epochs: int) -> List[float]:
        n = len(latents)
        # padding repeats patterns from the start (cycling when the batch is smaller than the padding)
        base = np.concatenate([np.arange(plan.padded, dtype=np.int64) % n, np.arange(n, dtype=np.int64)])
        order = self._rng.permutation(base)
        mem_order = self._memory_order(n_mem)
        size = plan.new_per_mb + plan.replay_per_mb
        x = np.empty((size,) + self.latent_shape, self.latent_dtype)
        y = np.empty(size, np.int64)
        losses: List[float] = []
        for epoch in range(epochs):
            if epoch and self.config.shuffle_each_epoch:
                order = self._rng.permutation(base)
            if epoch and self.config.replay_shuffle == "epoch":
                mem_order = self._memory_order(n_mem)
            for it in range(plan.iterations):
                idx = order[it * plan.new_per_mb:(it + 1) * plan.new_per_mb]
                k = len(idx)
                np.take(latents, idx, axis=0, out=x[:k])
                y[:k] = labels[idx]
                batch: Any = None
                if plan.replay_per_mb:
                    slots = mem_order[(it * plan.replay_per_mb + np.arange(plan.replay_per_mb)) % n_mem]
                    if self._on_device:  # CUDA pool + CUDA back: the minibatch never visits the host
                        batch, my = self.pool.minibatch_ortvalue(x[:k], slots)
                    else:
                        mx, my = self.pool.gather(slots)
                        x[k:k + len(slots)] = mx
                    y[k:k + len(slots)] = my
                    k += len(slots)
                losses.append(self._step(x[:k] if batch is None else batch, y[:k], active))
        return losses

    def _memory_order(self, n_mem: int) -> np.ndarray:
        """Slot order in which the memory is consumed: slot order (port) or shuffled."""
        if n_mem == 0 or self.config.replay_shuffle == "none":
            return np.arange(n_mem, dtype=np.int64)
        return self._rng.permutation(n_mem)

    def _step(self, x: Any, y: np.ndarray, active: List[str]) -> float:
        """One minibatch (numpy, or an OrtValue already on the device): forward/backward in ORT, update
        rule and BRN statistics in numpy."""
        r_max, d_max = self.brn.current()
        loss, stats = self.back.train_step(x, y, r_max, d_max)
        grads = {n: self.back.grad(n) for n in active}
        si = self.si
        before = None
        if si is not None:
            if self.config.si_mode == "penalty" and self.config.si_lambda:
                si.regularize(self.params, grads)
            before = {n: self.params[n].copy() for n in si.names if n in grads}
        self.optim.step(self.params, grads)
        if before is not None:
            si.accumulate(grads, before, self.params)
        for n in active:
            self.back.set(n, self.params[n])
        if not self.config.freeze_brn_stats:
            self._update_running_stats(stats)
        self.brn.advance(len(y))
        return loss

    def _update_running_stats(self, stats: Mapping[str, np.ndarray]) -> None:
        """Running mean and std move towards the batch mean and sqrt(var + eps) at rate m."""
        m = self.brn.momentum
        if not m:
            return
        for mean_out, var_out, mean_name, std_name in self._stats:
            mu, sigma = self.params[mean_name], self.params[std_name]
            mu += m * (stats[mean_out] - mu)
            sigma += m * (np.sqrt(stats[var_out] + BRN_EPS) - sigma)
            self.back.set(mean_name, mu)
            self.back.set(std_name, sigma)

    def _set(self, name: str, value: np.ndarray) -> None:
        self.params[name] = np.array(value, np.float32)
        self.back.set(name, self.params[name])

    # -- inference ---------------------------------------------------------------------------
    def logits(self, latents: np.ndarray) -> np.ndarray:
        latents = np.asarray(latents)
        if latents.shape[1:] != self.latent_shape:
            raise ValueError(f"latents of shape {latents.shape[1:]} do not match {self.latent_shape}")
        latents = np.ascontiguousarray(latents, dtype=self.latent_dtype)
        out = [self.back.logits(latents[i:i + self.eval_batch]) for i in range(0, len(latents), self.eval_batch)]
        return np.concatenate(out) if out else np.zeros((0, self.classes), np.float32)

    def predict(self, latents: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(predicted class, softmax probabilities) with the inference output layer."""
        z = self.logits(latents).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        return p.argmax(axis=1), p.astype(np.float32)

    def evaluate(self, latents: Union[np.ndarray, Iterable[Any]], labels: Optional[np.ndarray] = None) -> float:
        """Accuracy on an array of latents with `labels`, or on an iterable of latent chunks (with
        `labels` for all of them) or of (latents, labels) pairs (labels None)."""
        if isinstance(latents, np.ndarray):
            chunks: Iterable[Any] = [latents]
        else:
            chunks = latents
        preds, seen = [], []
        for chunk in chunks:
            if labels is None:
                chunk, chunk_labels = chunk
                seen.append(np.asarray(chunk_labels))
            preds.append(self.predict(chunk)[0])
        pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
        truth = np.asarray(labels) if labels is not None else np.concatenate(seen)
        if len(truth) != len(pred):
            raise ValueError(f"{len(pred)} predictions but {len(truth)} labels")
        return float(np.mean(pred == truth)) if len(truth) else 0.0

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """{"arrays": name -> ndarray, "meta": JSON-able dict}: everything needed to continue."""
        arrays: Dict[str, Any] = {f"param/{n}": v.copy() for n, v in self.params.items()}
        arrays.update({f"optim/{k}": v for k, v in self.optim.state_dict().items()})
        if self.cwr is not None:
            arrays.update(self.cwr.state())
        if self.si is not None:
            arrays.update(self.si.state())
        if self.pool is not None:
            arrays.update({f"pool/{k}": np.asarray(v) for k, v in self.pool.state_dict().items()})
        if self._seen[0]:
            arrays["seen/latents"] = np.concatenate(self._seen[0])
            arrays["seen/labels"] = np.concatenate(self._seen[1])
        meta = {
            "format": STATE_FORMAT,
            "config": self.config.to_dict(),
            "latent_layer": self.manifest.latent_layer,
            "classes": self.classes,
            "batches_trained": self.batches_trained,
            "last_batch_index": self.last_batch_index,
            "rng": self._rng.bit_generator.state,
            "brn": self.brn.state(),
            "optim_lr": self.optim.lr,
        }
        return {"arrays": arrays, "meta": meta}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        arrays, meta = state["arrays"], state["meta"]
        self._check_meta(meta)
        for n in self.params:
            self._set(n, arrays[f"param/{n}"])
        self.optim.load_state_dict({k[len("optim/"):]: arrays[k] for k in arrays if k.startswith("optim/")})
        self.optim.lr = float(meta["optim_lr"])
        if self.cwr is not None:
            self.cwr.load(arrays)
        if self.si is not None:
            self.si.load(arrays)
            if self.config.si_mode == "scale":
                self.optim.grad_scale = self.si.grad_scales()
        if self.pool is not None:
            self.pool.load_state_dict({k[len("pool/"):]: arrays[k] for k in arrays if k.startswith("pool/")})
        self._seen = ([np.asarray(arrays["seen/latents"])], [np.asarray(arrays["seen/labels"])]) \
            if "seen/latents" in arrays else ([], [])
        self.batches_trained = int(meta["batches_trained"])
        self.last_batch_index = int(meta["last_batch_index"])
        self._rng.bit_generator.state = meta["rng"]
        self.brn.load(meta["brn"])

    def _check_meta(self, meta: Mapping[str, Any]) -> None:
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(f"learner state format {meta.get('format')} is not supported (expected {STATE_FORMAT})")
        if meta["latent_layer"] != self.manifest.latent_layer or int(meta["classes"]) != self.classes:
            raise ValueError(f"the learner state was saved at latent layer {meta['latent_layer']!r} with "
                             f"{meta['classes']} classes; these artifacts are {self.manifest.latent_layer!r} "
                             f"with {self.classes}")
        saved = LearnerConfig.from_dict(meta["config"])
        if saved != self.config:
            diff = sorted(k for k, v in saved.to_dict().items() if self.config.to_dict()[k] != v)
            raise ValueError(f"the learner state was saved with other settings ({', '.join(diff)}); "
                             f"resume with the saved configuration (Learner.saved_config)")

    def save(self, directory: Union[str, Path]) -> None:
        """Write the state to `directory` atomically: a crash at any point leaves the previous
        state loadable (see `load`)."""
        save_state(self.state_dict(), Path(directory))

    def load(self, directory: Union[str, Path]) -> None:
        self.load_state_dict(load_state(Path(directory)))

    @staticmethod
    def saved_config(directory: Union[str, Path]) -> LearnerConfig:
        meta = json.loads((state_dir(Path(directory)) / STATE_META).read_text(encoding="utf-8"))
        return LearnerConfig.from_dict(meta["config"])
