"""One full incremental batch of AR1*-free with latent replay at conv5_4/dw against PyTorch.

The reference batch is written here with torch: the BRN back of `torch_oracle` (r, d detached),
torch.optim.SGD (momentum, weight decay) carrying the momentum of the previous batch, running
mean/std moved by their EMA, CWR* reset before and consolidation after, the minibatches
composed of new patterns (one shuffle per batch) and consecutive memory slices.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from latent_replay.export.exporter import export
from latent_replay.models import mobilenet_v1 as net
from latent_replay.runtime.learn import LearnerConfig
from latent_replay.runtime.engine import Back
from latent_replay.runtime.learn import Learner
from helpers import make_weights
import torch_oracle

LAYER = "conv5_4/dw"
CLASSES = 6
HEAD = f"{net.HEAD}/weight"


def latents(rng, n, shape):
    """Post-ReLU-like latents with a class-dependent mean so that the head learns something."""
    y = rng.integers(0, CLASSES, n)
    x = np.abs(rng.standard_normal((n,) + shape) + 0.3 * y.reshape(-1, 1, 1, 1) / CLASSES)
    return x.astype(np.float32), y.astype(np.int64)


def torch_batch(params, momenta, cw, past, new_x, new_y, mem_x, mem_y, order, cfg, plan):
    """The reference: returns (params after the batch with the inference head, cw, past)."""
    model = torch_oracle.TorchBack(params, LAYER)
    names = [n for n in params if not (n.endswith("running_mean") or n.endswith("running_std"))]
    # CWR* reset: classes of new batch + memory, counts of both.
    cur = np.bincount(np.concatenate([new_y, mem_y]), minlength=CLASSES)
    classes = np.flatnonzero(cur)
    with torch.no_grad():
        head = model.p(HEAD)
        head.zero_()
        head[classes] = torch.tensor(cw[classes], dtype=torch.float64)
    opt = torch.optim.SGD([model.p(n) for n in names], lr=cfg.lr_later, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    for n in names:
        opt.state[model.p(n)]["momentum_buffer"] = torch.tensor(momenta[n], dtype=torch.float64)
    m = cfg.brn_momentum_later
    for _ in range(cfg.epochs):
        for it in range(plan[2]):
            idx = order[it * plan[0]:(it + 1) * plan[0]]
            x = np.concatenate([new_x[idx], mem_x[it * plan[1]:(it + 1) * plan[1]]])
            y = np.concatenate([new_y[idx], mem_y[it * plan[1]:(it + 1) * plan[1]]])
            opt.zero_grad()
            logits = model(torch.tensor(x, dtype=torch.float64), True, cfg.brn_r_max, cfg.brn_d_max)
            torch.nn.functional.cross_entropy(logits, torch.tensor(y)).backward()
            opt.step()
            for layer, (bm, bv) in model.batch_stats.items():
                mu, sd = model.stats[f"{layer}/running_mean"], model.stats[f"{layer}/running_std"]
                model.stats[f"{layer}/running_mean"] = mu + m * (torch.tensor(bm) - mu)
                model.stats[f"{layer}/running_std"] = sd + m * (torch.sqrt(torch.tensor(bv) + 1e-5) - sd)
    out = {n: model.p(n).detach().numpy().copy() for n in names}
    out.update({k: v.numpy().copy() for k, v in model.stats.items()})
    # CWR* consolidation with one scalar average; unseen rows keep their trained values.
    tw = out[HEAD].astype(np.float64)
    avg = tw[classes].mean()
    cw, past = cw.astype(np.float64).copy(), past.copy()
    for c in classes:
        w = np.sqrt(past[c] / cur[c])
        cw[c] = (cw[c] * w + tw[c] - avg) / (w + 1)
        past[c] += cur[c]
    head = tw.copy()
    head[past > 0] = cw[past > 0]
    out[HEAD] = head
    return out, cw, past


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One thread for torch and ORT alike: no thread-pool spinning against each other on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    path = tmp_path_factory.mktemp("ar1") / "art"
    export(make_weights(3), LAYER, CLASSES, path)
    return path


def test_incremental_batch_matches_torch(artifacts):
    cfg = LearnerConfig.preset("pytorch", method="ar1free", replay="latent", replay_memory=60, minibatch=20,
                               epochs=1, epochs_first=1, lr_later=0.02, brn_momentum_later=0.1, seed=5)
    learner = Learner(Back(artifacts, device="cpu", threads=1), cfg)
    rng = np.random.default_rng(0)
    shape = net.latent_shape(LAYER)
    for b in range(2):  # batch 0 (ramp, lr_first) and batch 1 fill the memory and the momentum
        learner.train_batch(*latents(rng, 40, shape), b)
    assert len(learner.pool) == 60
    new_x, new_y = latents(rng, 40, shape)
    mem_x, mem_y = learner.pool.gather(np.arange(60))
    params = {n: v.copy() for n, v in learner.params.items()}
    momenta = {k[len("momentum/"):]: v for k, v in learner.optim.state_dict().items()}
    assert set(momenta) == set(learner.trainable)  # batch 1 trained every parameter of the back
    cw, past = learner.cwr.cw.copy(), learner.cwr.past.copy()
    shuffler = np.random.default_rng()
    shuffler.bit_generator.state = learner._rng.bit_generator.state
    order = shuffler.permutation(40)
    plan = (8, 12, 5)  # (40 + 60) // 20 = 5 groups: 8 new + 12 replayed, 40 // 8 = 5 iterations

    stats = learner.train_batch(new_x, new_y, 2)
    assert (stats["new_per_mb"], stats["replay_per_mb"], stats["iterations"]) == plan
    ref, ref_cw, ref_past = torch_batch(params, momenta, cw, past, new_x, new_y, mem_x, mem_y, order, cfg, plan)

    moved = 0.0
    for name, expected in ref.items():
        got = learner.params[name]
        np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0, err_msg=name)
        np.testing.assert_allclose(learner.back.get(name), got, atol=0, rtol=0, err_msg=name)
        moved = max(moved, float(np.abs(expected - params[name]).max()))
    assert moved > 1e-2  # the batch changed the parameters by far more than the tolerance
    np.testing.assert_allclose(learner.cwr.cw, ref_cw, atol=1e-3)
    np.testing.assert_array_equal(learner.cwr.past, ref_past)
    for layer in learner.manifest.brn_layers:  # running statistics moved measurably
        assert np.abs(ref[f"{layer}/running_std"] - params[f"{layer}/running_std"]).max() > 1e-3


def test_sgd_matches_torch_with_multipliers_and_frozen():
    """optim.SGD == torch.optim.SGD(momentum, weight_decay) with a per-parameter lr multiplier
    (a param group) and a frozen parameter (grad None: untouched, momentum included)."""
    from latent_replay.runtime.optim import SGD

    rng = np.random.default_rng(0)
    init = {n: rng.standard_normal(5).astype(np.float32) for n in ("a", "b", "frozen")}
    ours = {n: v.copy() for n, v in init.items()}
    opt = SGD(0.1, momentum=0.9, weight_decay=0.01, lr_mult={"b": 10.0}, frozen=["frozen"])
    t = {n: torch.tensor(v, dtype=torch.float64, requires_grad=n != "frozen") for n, v in init.items()}
    ref = torch.optim.SGD([{"params": [t["a"]]}, {"params": [t["b"]], "lr": 1.0}], lr=0.1, momentum=0.9,
                          weight_decay=0.01)
    for _ in range(4):
        grads = {n: rng.standard_normal(5).astype(np.float32) for n in init}
        opt.step(ours, grads)
        for n in ("a", "b"):
            t[n].grad = torch.tensor(grads[n], dtype=torch.float64)
        ref.step()
    for n in init:
        np.testing.assert_allclose(ours[n], t[n].detach().numpy(), rtol=1e-5, atol=1e-6)
    assert "frozen" not in opt.state_dict() and set(opt.state_dict()) == {"momentum/a", "momentum/b"}
