"""The learner: one loop that trains the back batch by batch, with the components a method uses.

Per incremental batch: set the learning rate and the BRN phase (`brn.py`), reset the output layer
for CWR* (`cwr.py`) and hand SI its importance (`si.py`); run the minibatches (`replay.py`), each a
single engine step that does the forward/backward and the whole update; consolidate CWR*, update
SI's importance, and add the batch to the replay memory. Which components run is read from the
method table (`methods.py`); hooks (`hooks.py`) let other pieces watch the loop.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ...export.format import momentum_name
from ...models.graph import BRN_EPS
from ..state import STATE_META, load_state, save_state, state_dir
from .brn import BrnSchedule
from .config import LearnerConfig
from .cwr import Cwr
from .hooks import LearnerHooks
from .replay import epoch0_patterns, minibatches, new_order, plan_minibatches, plan_port
from .si import SynapticIntelligence

STATE_FORMAT = 2  # 2: momentum of every parameter, engine-side SI trajectory


class Learner:
    """Trains the back batch by batch with the configured method; predicts with the eval graph.

    `back`: an engine (`runtime.engine.Back`). `pool`: any replay pool (host or CUDA) with the
    `ReplayPool` interface; one is created on the host when replay is on and none is given.
    """

    def __init__(self, back: Any, config: Optional[LearnerConfig] = None, pool: Any = None,
                 eval_batch: int = 256, hooks: Sequence[LearnerHooks] = ()) -> None:
        self.back = back
        self.manifest = back.manifest
        self.config = config or LearnerConfig()
        self.config.check_compatible(self.manifest.latent_layer)
        self.method = self.config.method_spec
        self.classes = int(self.manifest.classes)
        self.head = self.manifest.head
        self.eval_batch = int(eval_batch)
        self.latent_shape = tuple(self.manifest.latent_shape)
        self.latent_dtype = np.dtype(self.manifest.latent_dtype)
        self.trainable: List[str] = list(back.trainable)
        self.carried: List[str] = list(back.carried)
        frozen = tuple(self.config.frozen_weights)
        self._train_all = [n for n in self.trainable if not any(s in n for s in frozen)]
        self.cwr = (Cwr(self.classes, back.shape(self.head)[1], self.config.cwr_unseen_rows, self.config.cwr_class_list)
                    if self.method.cwr else None)
        self.si: Optional[SynapticIntelligence] = None
        if self.method.si:
            back.enable_si()
            names = [n for n in back.si_params if n in self._train_all]
            self.si = SynapticIntelligence(names, back.parameters(names), self.config)
        self.brn = BrnSchedule(self.config)
        self.pool = pool if pool is not None else self._make_pool()
        # A pool that assembles minibatches as OrtValues on the engine's device (the CUDA pool)
        # hands them over without a trip through the host.
        self._on_device = (hasattr(self.pool, "minibatch_ortvalue")
                           and getattr(self.pool, "ort_device", None) == getattr(back, "device", "cpu"))
        self._rng = np.random.default_rng([self.config.seed, 1])
        self._seen: Tuple[List[np.ndarray], List[np.ndarray]] = ([], [])  # cumulative: every pattern
        self.hooks: List[LearnerHooks] = list(hooks)
        self.batches_trained = 0
        self.last_batch_index = -1
        self.lr = self.config.lr_first
        self._last_brn = self.brn.current()  # r_max, d_max of the last step (reported per batch)

    def _make_pool(self) -> Any:
        if not self.config.uses_memory:
            return None
        from ..replay import ReplayPool

        return ReplayPool(self.config.replay_memory, self.latent_shape, self.config.storage,
                          self.config.seed, self.latent_dtype)

    @property
    def params(self) -> Dict[str, np.ndarray]:
        """Host copies of the back's parameters and carried statistics."""
        return self.back.parameters()

    # -- training ----------------------------------------------------------------------------
    def train_batch(self, latents: np.ndarray, labels: np.ndarray, batch_index: int) -> Dict[str, Any]:
        """Train on one incremental batch (its cached latents) and update the replay memory."""
        t0 = time.perf_counter()
        latents, labels = self._check_batch(latents, labels)
        batch_index = int(batch_index)
        if batch_index < 0:
            raise ValueError(f"batch_index must be >= 0, got {batch_index}")
        if self.batches_trained == 0 and self.config.brn_std_start == "sqrt_var":
            self._running_std_without_eps()
        self._begin_batch(batch_index, labels)
        if self.method.cumulative:
            self._seen[0].append(latents)
            self._seen[1].append(labels)
            latents, labels = np.concatenate(self._seen[0]), np.concatenate(self._seen[1])
        port = self.config.replay_rules == "port"
        n_mem = len(self.pool) if self.pool is not None else 0
        if port:
            plan = plan_port(len(latents), n_mem, self.config.replay_memory, self.config.minibatch,
                             self.config.pad_without_replay)
        else:
            plan = plan_minibatches(len(latents), n_mem, self.config.minibatch, self.config.pad_without_replay)
        epochs = self.config.epochs_for(batch_index)
        for hook in self.hooks:
            hook.begin_batch(self, batch_index, plan, plan.iterations * epochs)
        order = new_order(len(latents), plan, self._rng)
        losses = [self._step(x, y) for x, y in minibatches(latents, labels, plan, self.pool, epochs, self._rng,
                                                           self.config, self._on_device, order)]
        self._end_batch()
        if self.pool is not None and not self.method.cumulative:
            if port:  # the port stores what its epoch-0 minibatches held; the memory keeps its first size
                kept = epoch0_patterns(order, plan)
                self.pool.insert_batch(latents[kept], labels[kept], batch_index, grow=False)
            else:
                self.pool.insert_batch(latents, labels, batch_index)
        self.batches_trained += 1
        self.last_batch_index = batch_index
        r_max, d_max = self._last_brn
        stats = {"loss": float(np.mean(losses)), "time": time.perf_counter() - t0, "iterations": len(losses),
                 "new_per_mb": plan.new_per_mb, "replay_per_mb": plan.replay_per_mb, "lr": self.lr,
                 "r_max": r_max, "d_max": d_max}
        for hook in self.hooks:
            hook.end_batch(self, batch_index, stats)
        return stats

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

    def active_parameters(self, batch_index: int) -> List[str]:
        """The parameters trained in batch `batch_index` (the others are frozen for it)."""
        if self.method.head_only_later and batch_index > 0:
            return [self.head]
        return list(self._train_all)

    def _running_std_without_eps(self) -> None:
        """The port's start of the BRN running std: sqrt(var) of the pretrained statistics, without
        the eps the export adds (its running std is sqrt(var + eps), eps 1e-5 as in the PyTorch
        weights). Done once, before the first batch."""
        for name in self.carried:
            if name.endswith("/running_std"):
                std = self.back.get(name).astype(np.float64)
                self.back.set(name, np.sqrt(np.maximum(std * std - BRN_EPS, 0.0)).astype(np.float32))

    def _begin_batch(self, batch_index: int, labels: np.ndarray) -> None:
        """Learning rate, BRN phase, CWR* reset and SI's importance for this batch."""
        c = self.config
        if batch_index == 1:
            self.back.zero_momentum()  # the port builds a new optimizer (lr_later) at batch 1
        self.lr = c.lr(batch_index)
        self.brn.begin_batch(batch_index)
        active = self.active_parameters(batch_index)
        rates = {n: self.lr * (c.head_lr_mult if n == self.head else 1.0) for n in active}
        self.back.configure(active, rates, c.momentum, c.weight_decay,
                            0.0 if c.freeze_brn_stats else self.brn.momentum,
                            self.si.penalty_weight if self.si is not None else 0.0)
        if self.cwr is not None:
            memory_labels = self.pool.labels if self.pool is not None else np.zeros(0, np.int64)
            self.back.set(self.head, self.cwr.begin(labels, memory_labels))
        if self.si is not None:
            self.si.start(self.back)

    def _end_batch(self) -> None:
        if self.cwr is not None:
            self.back.set(self.head, self.cwr.consolidate(self.back.get(self.head)))
        if self.si is not None:
            self.si.finish(self.back)

    def _step(self, x: Any, y: np.ndarray) -> float:
        """One minibatch (numpy, or an OrtValue already on the device): the whole update in the engine."""
        for hook in self.hooks:
            hook.before_step(self)
        r_max, d_max = self._last_brn = self.brn.current()
        loss = self.back.step(x, y, r_max, d_max)
        self.brn.advance(len(y))
        for hook in self.hooks:
            hook.after_step(self, loss)
        return loss

    def forget_class(self, label: int) -> Dict[str, Any]:
        """Forget one class: its output row is zeroed (with CWR*, its consolidated row and its count
        too, so a later teaching of that output starts as if it had never been trained), its replay
        patterns are dropped, and its patterns leave the cumulative data. The layers below the output
        that AR1*/AR1*-free trained keep their changes (they are shared by all classes); SI's
        importance stays. Returns {"patterns_dropped": n}."""
        label = int(label)
        if not 0 <= label < self.classes:
            raise ValueError(f"class {label} out of range 0..{self.classes - 1}")
        head = np.array(self.back.get(self.head), np.float32)
        head[label] = 0.0
        self.back.set(self.head, head)
        if self.cwr is not None:
            self.cwr.cw[label] = 0.0
            self.cwr.past[label] = 0
        dropped = self.pool.drop_class(label) if self.pool is not None else 0
        if self._seen[0]:
            latents, labels = np.concatenate(self._seen[0]), np.concatenate(self._seen[1])
            keep = labels != label
            self._seen = ([latents[keep]], [labels[keep]])
        return {"patterns_dropped": int(dropped)}

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
        chunks: Iterable[Any] = [latents] if isinstance(latents, np.ndarray) else latents
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
        arrays: Dict[str, Any] = {f"param/{n}": v for n, v in self.back.parameters().items()}
        arrays.update({f"optim/{momentum_name(n)}": self.back.get(momentum_name(n)) for n in self.trainable})
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
            "lr": self.lr,
        }
        for hook in self.hooks:
            hook.state(self, meta)
        return {"arrays": arrays, "meta": meta}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        arrays, meta = state["arrays"], state["meta"]
        self._check_meta(meta)
        for n in self.trainable + self.carried:
            self.back.set(n, arrays[f"param/{n}"])
        for n in self.trainable:
            self.back.set(momentum_name(n), arrays[f"optim/{momentum_name(n)}"])
        self.lr = float(meta["lr"])
        if self.cwr is not None:
            self.cwr.load(arrays)
        if self.si is not None:
            self.si.load(arrays)
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
            raise ValueError(f"learner state format {meta.get('format')} is not supported (expected {STATE_FORMAT}); "
                             f"it was saved by another version of latent-replay: start afresh")
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
