"""The PyTorch way: eager MobileNetV1 front + back as the official port (github vlomonaco/ar1-pytorch,
`ar1free_lat_replay.py`) runs one NICv2-391 incremental batch, built from the same numpy arrays as
the exported ONNX pieces.

What is the same as the port: the front is frozen (its parameters do not require grad), the back
uses Batch Renormalization as the port's `BatchRenorm2D` (r, d detached; running mean/std moved by
an EMA inside forward), SGD with momentum and weight decay over the trainable parameters, CWR* row
reset and consolidation of the output layer, the whole batch preprocessed once, the new frames
pushed through the front *in every epoch* (the port caches latents only to fill the memory), the
memory consumed in slot order in slices of `replay_per_mb`, and the memory update by random
replacement after the batch. Differences (both in the port's favour): the front's normalization
runs in eval mode (the port leaves the frozen BRN layers in train mode) and the front runs without
building an autograd graph (as in the port, since no input requires grad).

torch is imported lazily: `available()` says whether it is there.
"""
from __future__ import annotations

import importlib.util
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ...models import mobilenet_v1 as net
from ...models.weights import MobileNetWeights


def available() -> Tuple[bool, str]:
    """(True, version) when torch can be imported, else (False, why)."""
    if importlib.util.find_spec("torch") is None:
        return False, "PyTorch is not installed (pip install .[bench]); the PyTorch comparison is skipped"
    try:
        import torch

        return True, torch.__version__
    except Exception as e:  # a broken install
        return False, f"PyTorch cannot be imported ({type(e).__name__}: {e}); the PyTorch comparison is skipped"


def _modules():
    """Build the torch classes on first use (torch imported here, not at module import)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class BatchRenorm2D(nn.Module):
        """Batch Renormalization as the port's models/batch_renorm.py (running std, not var)."""

        def __init__(self, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, std: np.ndarray,
                     momentum: float, r_max: float, d_max: float, eps: float = 1e-5,
                     inc_step: float = 0.0, max_r_max: float = 1.25, max_d_max: float = 0.5) -> None:
            super().__init__()
            self.eps = eps
            self.momentum = momentum
            self.gamma = nn.Parameter(torch.tensor(gamma).view(1, -1, 1, 1))
            self.beta = nn.Parameter(torch.tensor(beta).view(1, -1, 1, 1))
            self.running_avg_mean = torch.tensor(mean).view(1, -1, 1, 1)
            self.running_avg_std = torch.tensor(std).view(1, -1, 1, 1)
            self.r_max, self.d_max = r_max, d_max
            self.inc_step, self.max_r_max, self.max_d_max = inc_step, max_r_max, max_d_max

        def forward(self, x):
            mean = torch.mean(x, dim=(0, 2, 3), keepdim=True)
            std = torch.sqrt(torch.var(x, dim=(0, 2, 3), keepdim=True, unbiased=False) + self.eps)
            if self.training:
                r = torch.clamp(std / self.running_avg_std, 1.0 / self.r_max, self.r_max).detach()
                d = torch.clamp((mean - self.running_avg_mean) / self.running_avg_std,
                                -self.d_max, self.d_max).detach()
                x = ((x - mean) * r) / std + d
                x = self.gamma * x + self.beta
                if self.r_max < self.max_r_max:
                    self.r_max += self.inc_step * x.shape[0]
                if self.d_max < self.max_d_max:
                    self.d_max += self.inc_step * x.shape[0]
                self.running_avg_mean = self.running_avg_mean + self.momentum * (mean.detach() - self.running_avg_mean)
                self.running_avg_std = self.running_avg_std + self.momentum * (std.detach() - self.running_avg_std)
                return x
            x = (x - self.running_avg_mean) / self.running_avg_std
            return self.gamma * x + self.beta

    def conv(layer: net.ConvLayer, weight: np.ndarray) -> nn.Conv2d:
        c = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.kernel // 2,
                      groups=layer.group, bias=False)
        with torch.no_grad():
            c.weight.copy_(torch.from_numpy(weight))
        return c

    class Front(nn.Module):
        """Frozen front: conv -> BatchNorm2d (eval) -> ReLU up to the latent layer (mean for pool6)."""

        def __init__(self, weights: MobileNetWeights, latent_layer: str) -> None:
            super().__init__()
            layers, _ = net.split_layers(latent_layer)
            mods: List[nn.Module] = []
            for layer in layers:
                p = weights.convs[layer.name]
                bn = nn.BatchNorm2d(layer.out_channels, eps=p.eps)
                with torch.no_grad():
                    bn.weight.copy_(torch.from_numpy(p.gamma))
                    bn.bias.copy_(torch.from_numpy(p.beta))
                    bn.running_mean.copy_(torch.from_numpy(p.mean))
                    bn.running_var.copy_(torch.from_numpy(p.var))
                mods += [conv(layer, p.weight), bn, nn.ReLU(inplace=True)]
            self.features = nn.Sequential(*mods)
            self.pool = latent_layer == net.POOL
            pre = weights.preprocessing
            self.flip = pre.channel_order == "RGB"  # frames arrive BGR (OpenCV order), as for the ONNX front
            self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1))
            for prm in self.parameters():
                prm.requires_grad_(False)
            self.eval()

        def preprocess(self, frames_uint8_nhwc):
            x = frames_uint8_nhwc.permute(0, 3, 1, 2).float()
            if self.flip:
                x = x.flip(1)
            return (x - self.mean) / self.std

        def forward(self, x):
            x = self.features(x)
            return x.mean((2, 3)) if self.pool else x

    class Back(nn.Module):
        """Trainable back: conv -> BatchRenorm2D -> ReLU, global average pool, mid_fc7 without bias."""

        def __init__(self, weights: MobileNetWeights, latent_layer: str, classes: int, brn: Dict[str, float]) -> None:
            super().__init__()
            _, layers = net.split_layers(latent_layer)
            mods: List[nn.Module] = []
            for layer in layers:
                p = weights.convs[layer.name]
                mods += [conv(layer, p.weight),
                         BatchRenorm2D(p.gamma, p.beta, p.mean, np.sqrt(p.var + p.eps).astype(np.float32), **brn),
                         nn.ReLU(inplace=True)]
            self.features = nn.Sequential(*mods)
            self.pool = latent_layer != net.POOL
            head, _, _ = weights.head_for(classes)
            self.output = nn.Linear(head.shape[1], classes, bias=False)
            with torch.no_grad():
                self.output.weight.copy_(torch.from_numpy(head))

        def forward(self, x):
            x = self.features(x)
            if self.pool:
                x = x.mean((2, 3))
            return self.output(x)

    return torch, F, Front, Back


def set_threads(threads: int) -> None:
    """Same thread count as ONNX Runtime; denormals flushed to zero (random weights produce some,
    which slow x86 float math several-fold; pretrained weights rarely do)."""
    import torch

    torch.set_num_threads(int(threads))
    torch.set_flush_denormal(True)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


def front_latency(weights: MobileNetWeights, latent_layer: str, frames: np.ndarray, iters: int, warmup: int,
                  batch_sizes: List[int], repeats: int) -> Dict[str, Any]:
    """Eager PyTorch front (preprocessing included, as in the ONNX front): batch-1 latency and throughput."""
    from .probes import latency, throughput

    torch, _, Front, _ = _modules()
    front = Front(weights, latent_layer)
    out: Dict[str, Any] = {}
    with torch.inference_mode():
        one = torch.from_numpy(frames[:1])
        out["latency_b1_s"] = latency(lambda: front(front.preprocess(one)), iters, warmup)
        out["throughput"] = {}
        for b in batch_sizes:
            x = torch.from_numpy(np.ascontiguousarray(np.resize(frames, (b,) + frames.shape[1:])))
            out["throughput"][str(b)] = throughput(lambda: front(front.preprocess(x)), b, repeats)
    return out


def _preprocess_numpy(frames: np.ndarray, weights: MobileNetWeights) -> np.ndarray:
    """The port preprocesses the whole batch once in numpy (float32 NCHW)."""
    return weights.preprocessing.apply(frames)


def incremental_batch(weights: MobileNetWeights, latent_layer: str, classes: int, frames: np.ndarray,
                      labels: np.ndarray, memory: int, epochs: int, step_repeats: int = 2,
                      minibatch: int = 128, lr: float = 5e-5, momentum: float = 0.9, weight_decay: float = 5e-4,
                      method: str = "ar1free", seed: int = 0) -> Dict[str, Any]:
    """One later incremental batch (index 1) the port's way, timed; the memory holds `memory`
    post-ReLU patterns with labels. Returns times (batch, per step, front share) and counts."""
    from ...runtime.learn.replay import plan_minibatches
    from .probes import peak_rss_mb, percentiles, rss_mb

    torch, F, Front, Back = _modules()
    rng = np.random.default_rng(seed)
    brn = {"momentum": 5e-5, "r_max": 1.25, "d_max": 0.5}  # later-batch BRN settings (port)
    front = Front(weights, latent_layer)
    back = Back(weights, latent_layer, classes, brn)
    if method == "cwr":  # CWR*: only the output layer trains after the first batch
        for prm in back.features.parameters():
            prm.requires_grad_(False)
    shape = net.latent_shape(latent_layer)
    rm_x = torch.empty((memory,) + tuple(shape), dtype=torch.float32)
    for i in range(0, memory, 100):  # post-ReLU-like patterns, filled in chunks (no big temporary)
        n = min(100, memory - i)
        rm_x[i:i + n] = torch.from_numpy(np.maximum(rng.standard_normal((n,) + tuple(shape), dtype=np.float32), 0))
    rm_y = torch.from_numpy(rng.integers(0, classes, memory).astype(np.int64))
    saved_cw = torch.zeros_like(back.output.weight)
    past = np.zeros(classes, np.int64)
    criterion = torch.nn.CrossEntropyLoss()
    plan = plan_minibatches(len(frames), memory, minibatch)
    new, inject = plan.new_per_mb, plan.replay_per_mb
    rss_setup = rss_mb()

    def make_optimizer():
        return torch.optim.SGD([p for p in back.parameters() if p.requires_grad], lr=lr, momentum=momentum,
                               weight_decay=weight_decay)

    def step(optimizer, x_mb, lat_mb, y_mb, collect: Optional[list], timing: Dict[str, float]):
        optimizer.zero_grad()
        t0 = time.perf_counter()
        with torch.no_grad():  # frozen front: no graph (as in the port, no input requires grad)
            lat = front(x_mb)
        timing["front"] += time.perf_counter() - t0
        if collect is not None:
            collect.append(lat.detach().clone())
        logits = back(torch.cat((lat, lat_mb), 0))
        _, pred = torch.max(logits, 1)
        correct = int((pred == y_mb).sum())
        loss = criterion(logits, y_mb)
        loss_value = loss.item()
        loss.backward()
        optimizer.step()
        return loss_value, correct

    # -- one train step on a new+replayed minibatch (after a warm-up step), the update included --
    x_all = torch.from_numpy(_preprocess_numpy(frames[:new], weights))
    y_step = torch.cat((torch.from_numpy(labels[:new].astype(np.int64)), rm_y[:inject]))
    back.train()
    scratch = {"front": 0.0}
    opt = make_optimizer()
    step_times = []
    for i in range(1 + step_repeats):
        t0 = time.perf_counter()
        step(opt, x_all, rm_x[:inject], y_step, None, scratch)
        if i:
            step_times.append(time.perf_counter() - t0)
    # restore the starting point so that the batch below starts from the exported parameters
    back = Back(weights, latent_layer, classes, brn)
    if method == "cwr":
        for prm in back.features.parameters():
            prm.requires_grad_(False)

    # -- the incremental batch, as ar1free_lat_replay.py does it for i > 0 --
    t_batch = time.perf_counter()
    train_x = _preprocess_numpy(frames, weights)
    train_y = labels.astype(np.int64)
    cur = np.bincount(np.concatenate([train_y, rm_y.numpy()]), minlength=classes)[:classes]
    cur_class = np.flatnonzero(cur)
    back.train()
    with torch.no_grad():  # reset_weights: output rows from the consolidated weights, others zero
        back.output.weight.zero_()
        back.output.weight[cur_class] = saved_cw[cur_class]
    perm = rng.permutation(len(train_x))  # shuffle_in_unison
    train_x, train_y = train_x[perm], train_y[perm]
    train_x_t = torch.from_numpy(train_x)
    train_y_t = torch.from_numpy(train_y)
    optimizer = make_optimizer()
    timing = {"front": 0.0}
    per_step: List[float] = []
    losses = []
    cur_acts: List[Any] = []
    for ep in range(epochs):
        for it in range(plan.iterations):
            t0 = time.perf_counter()
            start, end = it * new, (it + 1) * new
            lat_mb = rm_x[it * inject:(it + 1) * inject]
            y_mb = torch.cat((train_y_t[start:end], rm_y[it * inject:(it + 1) * inject]), 0)
            loss, _ = step(optimizer, train_x_t[start:end], lat_mb, y_mb, cur_acts if ep == 0 else None, timing)
            losses.append(loss)
            per_step.append(time.perf_counter() - t0)
    # consolidate_weights (CWR*): one scalar mean over the trained rows
    with torch.no_grad():
        w = back.output.weight
        avg = torch.mean(w[cur_class])
        for c in cur_class:
            wpast = np.sqrt(past[c] / cur[c])
            saved_cw[c] = (saved_cw[c] * wpast + (w[c] - avg)) / (wpast + 1)
        past[cur_class] += cur[cur_class]
    acts = torch.cat(cur_acts, 0)
    h = min(memory // 2, acts.size(0))  # batch index 1
    idx_cur = rng.choice(acts.size(0), h, replace=False)
    add_x, add_y = acts[idx_cur], train_y_t[:acts.size(0)][idx_cur]
    for j, idx in enumerate(rng.choice(memory, h, replace=False)):  # the port's per-pattern replace loop
        rm_x[idx] = add_x[j].clone()
        rm_y[idx] = add_y[j].clone()
    with torch.no_grad():  # set_consolidate_weights
        back.output.weight[cur_class] = saved_cw[cur_class]
    batch_s = time.perf_counter() - t_batch
    return {
        "batch_s": batch_s,
        "front_s": timing["front"],
        "front_frames": int(epochs * plan.iterations * new),
        "iterations": len(per_step),
        "new_per_mb": new, "replay_per_mb": inject,
        "step_s": percentiles(step_times or per_step),
        "step_s_source": "separate minibatch after warm-up" if step_times else "the batch's own steps",
        "batch_step_s": percentiles(per_step),
        "loss": float(np.mean(losses)),
        "rss_after_setup_mb": rss_setup,
        "peak_rss_mb": peak_rss_mb(),
        "memory_bytes": int(rm_x.numel() * rm_x.element_size() + rm_y.numel() * rm_y.element_size()),
        "notes": "front recomputed for the new frames in every epoch, as the port does; front BN in eval mode; "
                 "denormals flushed to zero (torch.set_flush_denormal)",
    }
