"""The PyTorch side of the benchmark: eager MobileNetV1 (`torch_models.py`) running one NICv2-391
incremental batch in one of four variants, built from the same numpy arrays as the exported ONNX
pieces:

- `bn_fp32`: the PyTorch a user would write: fp32, `nn.BatchNorm2d` in the back (one fused kernel;
  plain batch normalization, no renormalization: a lower bound on what BRN costs in PyTorch);
- `bn_bf16`: the same under bf16 autocast with channels_last tensors (model, latents, memory);
- `brn`: the official port's elementwise Batch Renormalization (github vlomonaco/ar1-pytorch,
  `models/batch_renorm.py`: r, d detached, running mean/std moved by an EMA inside forward);
- `port`: `brn` run as `ar1free_lat_replay.py` runs it: the new frames preprocessed in numpy and
  pushed through the front *in every epoch* (the port caches latents only to fill the memory).

The first three compute the front once per frame, as this runtime does. Common to all (the port's
way): the front is frozen and runs in eval mode without an autograd graph; SGD with momentum and
weight decay over the trainable parameters; CWR* row reset and consolidation of the output layer;
the memory consumed in slot order in slices of `replay_per_mb`; the memory update by random
replacement after the batch. Step times are the back's forward, backward and update only.

torch is imported lazily: `available()` says whether it is there.
"""
from __future__ import annotations

import contextlib
import importlib.util
import time
from typing import Any, Dict, List, NamedTuple, Tuple

import numpy as np

from ...models import mobilenet_v1 as net
from ...models.weights import MobileNetWeights


class Variant(NamedTuple):
    label: str
    norm: str  # "brn" (elementwise, the port) or "bn" (nn.BatchNorm2d)
    bf16: bool = False  # bf16 autocast
    channels_last: bool = False
    front_every_epoch: bool = False  # the port: the front re-run on the new frames in every epoch


VARIANTS: Dict[str, Variant] = {
    "bn_fp32": Variant("PyTorch fp32, nn.BatchNorm2d (fused)", "bn"),
    "bn_bf16": Variant("PyTorch bf16 autocast + channels_last, nn.BatchNorm2d", "bn", bf16=True, channels_last=True),
    "brn": Variant("PyTorch fp32, elementwise BRN (port-style)", "brn"),
    "port": Variant("the port as written: BRN, front re-run every epoch", "brn", front_every_epoch=True),
}
BRN_LATER = {"momentum": 5e-5, "r_max": 1.25, "d_max": 0.5}  # later-batch BRN settings (port)
FRONT_CHUNK = 32  # frames per front call when the front runs once (as the runtime side does)


def available() -> Tuple[bool, str]:
    """(True, version) when torch can be imported, else (False, why)."""
    if importlib.util.find_spec("torch") is None:
        return False, "PyTorch is not installed (pip install .[bench]); the PyTorch comparison is skipped"
    try:
        import torch

        return True, torch.__version__
    except Exception as e:  # a broken install
        return False, f"PyTorch cannot be imported ({type(e).__name__}: {e}); the PyTorch comparison is skipped"


def set_threads(threads: int) -> None:
    from . import torch_models

    torch_models.set_threads(threads)


def front_latency(weights: MobileNetWeights, latent_layer: str, frames: np.ndarray, iters: int, warmup: int,
                  batch_sizes: List[int], repeats: int) -> Dict[str, Any]:
    """Eager PyTorch front (preprocessing included, as in the ONNX front): batch-1 latency and throughput."""
    import torch

    from . import torch_models as tm
    from .probes import latency, throughput

    front = tm.Front(weights, latent_layer)
    out: Dict[str, Any] = {}
    with torch.inference_mode():
        one = torch.from_numpy(frames[:1])
        out["latency_b1_s"] = latency(lambda: front(front.preprocess(one)), iters, warmup)
        out["throughput"] = {}
        for b in batch_sizes:
            x = torch.from_numpy(np.ascontiguousarray(np.resize(frames, (b,) + frames.shape[1:])))
            out["throughput"][str(b)] = throughput(lambda: front(front.preprocess(x)), b, repeats)
    return out


class TorchSide:
    """One PyTorch setup of a variant: frozen front, a fresh back on demand, the replay memory
    (`memory` post-ReLU patterns with labels, as after batch 0) and the training step."""

    def __init__(self, weights: MobileNetWeights, latent_layer: str, classes: int, variant: Variant, memory: int,
                 method: str, hyper: Dict[str, float]) -> None:
        import torch

        from . import data
        from . import torch_models as tm

        self.torch, self.tm = torch, tm
        self.weights, self.layer, self.classes, self.variant = weights, latent_layer, classes, variant
        self.method, self.hyper = method, hyper
        self.front = self.layout(tm.Front(weights, latent_layer))
        self.criterion = torch.nn.CrossEntropyLoss()
        shape = tuple(net.latent_shape(latent_layer, arch=weights.arch))
        self.rm_x = self.layout(torch.empty((memory,) + shape, dtype=torch.float32))
        self.rm_y = torch.zeros(memory, dtype=torch.int64)
        slots, j = data.memory_slots(memory), 0
        for x, y in data.memory_chunks(shape, memory):  # the same memory, slot by slot, as the pool holds it
            idx = torch.from_numpy(slots[j:j + len(x)])
            self.rm_x[idx] = torch.from_numpy(x)
            self.rm_y[idx] = torch.from_numpy(y)
            j += len(x)

    def layout(self, x):
        """channels_last for 4-d tensors and models of a channels_last variant; unchanged otherwise."""
        if self.variant.channels_last and (not isinstance(x, self.torch.Tensor) or x.dim() == 4):
            return x.to(memory_format=self.torch.channels_last)
        return x

    def autocast(self):
        if self.variant.bf16:
            return self.torch.autocast("cpu", dtype=self.torch.bfloat16)
        return contextlib.nullcontext()

    def new_back(self):
        """The back with the exported parameters, in training mode (CWR*: only the output layer trains)."""
        back = self.tm.Back(self.weights, self.layer, self.classes, dict(BRN_LATER), self.variant.norm)
        if self.method == "cwr":
            for prm in back.features.parameters():
                prm.requires_grad_(False)
        back = self.layout(back)
        back.train()
        return back

    def optimizer(self, back):
        h = self.hyper
        return self.torch.optim.SGD([p for p in back.parameters() if p.requires_grad], lr=h["lr"],
                                    momentum=h["momentum"], weight_decay=h["weight_decay"])

    def run_front(self, x):
        """Latents of preprocessed frames `x` (float32 NCHW): frozen front, no autograd graph."""
        with self.torch.no_grad(), self.autocast():
            return self.layout(self.front(self.layout(x)).float())

    def front_once(self, frames: np.ndarray):
        """Latents of uint8 NHWC frames, preprocessed in torch, in chunks of FRONT_CHUNK."""
        with self.torch.no_grad():
            x = self.torch.from_numpy(frames)
            return self.torch.cat([self.run_front(self.front.preprocess(x[i:i + FRONT_CHUNK]))
                                   for i in range(0, len(frames), FRONT_CHUNK)])

    def step(self, back, optimizer, x, y) -> float:
        """The back's forward, loss, backward and SGD update on one minibatch; the loss."""
        optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.criterion(back(x), y)
        loss.backward()
        optimizer.step()
        return float(loss.item())


def _replay(side: TorchSide, it: int, inject: int):
    return side.rm_x[it * inject:(it + 1) * inject], side.rm_y[it * inject:(it + 1) * inject]


def warm_steps(side: TorchSide, frames: np.ndarray, labels: np.ndarray, new: int, inject: int,
               repeats: int) -> List[float]:
    """One warm-up step on a new + replayed minibatch, then `repeats` timed ones (back only)."""
    torch = side.torch
    back = side.new_back()
    opt = side.optimizer(back)
    lat_mem, y_mem = _replay(side, 0, inject)
    x = torch.cat((side.front_once(frames[:new]), lat_mem))
    y = torch.cat((torch.from_numpy(labels[:new].astype(np.int64)), y_mem))
    times = []
    for i in range(1 + repeats):
        t0 = time.perf_counter()
        side.step(back, opt, x, y)
        if i:
            times.append(time.perf_counter() - t0)
    return times


def train_batch(side: TorchSide, frames: np.ndarray, labels: np.ndarray, epochs: int, plan: Any,
                rng: np.random.Generator) -> Dict[str, Any]:
    """One later incremental batch (index 1) as ar1free_lat_replay.py trains it for i > 0, timed;
    `rng` draws the memory update."""
    from . import data

    torch = side.torch
    t_batch = time.perf_counter()
    port = side.variant.front_every_epoch
    if port:  # the port preprocesses the whole batch once in numpy (float32 NCHW)
        train_x = torch.from_numpy(side.weights.preprocessing.apply(frames))
    else:
        train_x = side.front_once(frames)
    front_s = 0.0 if port else time.perf_counter() - t_batch
    train_y = labels.astype(np.int64)
    cwr = Consolidation(side, train_y)
    back = side.new_back()
    cwr.reset(back)
    perm = torch.from_numpy(data.new_order(len(train_y)))  # shuffle_in_unison, in the learner's order
    train_x, train_y_t = side.layout(train_x[perm]), torch.from_numpy(train_y)[perm]
    optimizer = side.optimizer(back)
    new, inject = plan.new_per_mb, plan.replay_per_mb
    per_step: List[float] = []
    losses: List[float] = []
    cur_acts: List[Any] = []
    for ep in range(epochs):
        for it in range(plan.iterations):
            lat = train_x[it * new:(it + 1) * new]
            if port:
                t0 = time.perf_counter()
                lat = side.run_front(lat)
                front_s += time.perf_counter() - t0
            if ep == 0:
                cur_acts.append(lat.detach().clone())
            lat_mem, y_mem = _replay(side, it, inject)
            x = torch.cat((lat, lat_mem))
            y = torch.cat((train_y_t[it * new:(it + 1) * new], y_mem))
            t0 = time.perf_counter()
            losses.append(side.step(back, optimizer, x, y))
            per_step.append(time.perf_counter() - t0)
    cwr.consolidate(back)
    _update_memory(side, torch.cat(cur_acts), train_y_t, rng, port)
    cwr.install(back)
    batch_s = time.perf_counter() - t_batch
    return {"batch_s": batch_s, "front_s": front_s, "train_s": batch_s - front_s,
            "front_frames": int(epochs * plan.iterations * new) if port else len(frames),
            "per_step": per_step, "loss": float(np.mean(losses)), "losses": losses,
            "head_fingerprint": data.fingerprint(back.output.weight.detach().numpy()),
            "trained_parameters": int(sum(p.numel() for p in back.parameters() if p.requires_grad))}


class Consolidation:
    """CWR* on the output layer, the port's way: rows of the classes in the batch reset from the
    consolidated weights, trained, then folded back (one scalar mean over the trained rows)."""

    def __init__(self, side: TorchSide, train_y: np.ndarray) -> None:
        self.torch = side.torch
        classes = side.classes
        self.saved = np.zeros(0, np.float32)  # the consolidated weights: zero before the first reset
        self.past = np.zeros(classes, np.int64)
        self.cur = np.bincount(np.concatenate([train_y, side.rm_y.numpy()]), minlength=classes)[:classes]
        self.classes = np.flatnonzero(self.cur)

    def reset(self, back) -> None:
        with self.torch.no_grad():  # reset_weights: output rows from the consolidated weights, others zero
            w = back.output.weight
            self.saved = np.zeros(tuple(w.shape), np.float32)
            w.zero_()
            w[self.classes] = self.torch.from_numpy(self.saved[self.classes])

    def consolidate(self, back) -> None:
        w = back.output.weight.detach().numpy()
        avg = np.mean(w[self.classes])
        for c in self.classes:
            wpast = np.sqrt(self.past[c] / self.cur[c])
            self.saved[c] = (self.saved[c] * wpast + (w[c] - avg)) / (wpast + 1)
        self.past[self.classes] += self.cur[self.classes]

    def install(self, back) -> None:
        with self.torch.no_grad():  # set_consolidate_weights
            back.output.weight[self.classes] = self.torch.from_numpy(self.saved[self.classes])


def _update_memory(side: TorchSide, acts: Any, train_y: Any, rng: np.random.Generator, port: bool) -> None:
    """Random replacement of half the memory (batch index 1) by latents of this batch; the port
    replaces pattern by pattern, a user with one indexed assignment."""
    memory = len(side.rm_y)
    h = min(memory // 2, acts.size(0))
    idx_cur = side.torch.from_numpy(rng.choice(acts.size(0), h, replace=False))
    add_x, add_y = acts[idx_cur], train_y[:acts.size(0)][idx_cur]
    slots = rng.choice(memory, h, replace=False)
    if port:
        for j, idx in enumerate(slots):
            side.rm_x[idx] = add_x[j].clone()
            side.rm_y[idx] = add_y[j].clone()
    else:
        slots_t = side.torch.from_numpy(slots)
        side.rm_x[slots_t] = add_x
        side.rm_y[slots_t] = add_y


def incremental_batch(weights: MobileNetWeights, latent_layer: str, classes: int, frames: np.ndarray,
                      labels: np.ndarray, memory: int, epochs: int, step_repeats: int = 2,
                      variant: str = "port", minibatch: int = 128, lr: float = 5e-5, momentum: float = 0.9,
                      weight_decay: float = 5e-4, method: str = "ar1free", seed: int = 0) -> Dict[str, Any]:
    """One later incremental batch (index 1) in `variant` (see VARIANTS), timed, after a warm-up
    step on a separate minibatch; the memory holds `memory` post-ReLU patterns with labels
    (`data.memory_chunks`, placed as the runtime's pool places them)."""
    from ...runtime.learn.replay import plan_minibatches
    from .probes import peak_rss_mb, percentiles, rss_mb

    v = VARIANTS[variant]
    rng = np.random.default_rng(seed)
    side = TorchSide(weights, latent_layer, classes, v, memory, method,
                     {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
    plan = plan_minibatches(len(frames), memory, minibatch)
    rss_setup = rss_mb()
    step_times = warm_steps(side, frames, labels, plan.new_per_mb, plan.replay_per_mb, step_repeats)
    res = train_batch(side, frames, labels, epochs, plan, rng)
    per_step = res.pop("per_step")
    res.update({
        "variant": variant, "label": v.label, "norm": v.norm, "bf16": v.bf16, "channels_last": v.channels_last,
        "front_every_epoch": v.front_every_epoch,
        "iterations": len(per_step), "new_per_mb": plan.new_per_mb, "replay_per_mb": plan.replay_per_mb,
        "step_s": percentiles(step_times or per_step),
        "step_s_source": "separate minibatch after warm-up" if step_times else "the batch's own steps",
        "batch_step_s": percentiles(per_step),
        "rss_after_setup_mb": rss_setup, "peak_rss_mb": peak_rss_mb(),
        "memory_bytes": int(side.rm_x.numel() * side.rm_x.element_size() + side.rm_y.numel() * 8),
        "versions": {"torch": side.torch.__version__},
        "notes": ("front recomputed for the new frames in every epoch, as the port does; " if v.front_every_epoch
                  else "front once per frame; ") + "front BN in eval mode; denormals flushed to zero",
    })
    return res
