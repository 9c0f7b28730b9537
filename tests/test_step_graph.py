"""The standard-opset training step (export/step_graph.py) against PyTorch autograd in float64.

Gradients, batch statistics, the SGD/momentum/weight-decay update, the running statistics and the
SI terms of one step are compared with an independent float64 reference (tests/torch_oracle.py)
fed the same ReLU masks (a unit within rounding of zero cannot flip between the two). Tolerances:
relative to the largest value of each tensor; float32 arithmetic over a few layers stays below 1e-4.
Both layouts: Caffe's (width 1.0, padding 1, ReLU) and Keras's at width 0.75 (TF 'same' padding,
whose stride-2 layers pad 0 before and 1 after, and ReLU6), with the reference's geometry typed in
tests/mobilenet_spec.py.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from latent_replay.export import step_graph as sg
from latent_replay.models import graph as G
from latent_replay.models import mobilenet_v1 as net
from latent_replay.models.weights import TORCH_PREPROCESSING
from helpers import make_weights
import mobilenet_spec as mspec
import torch_oracle

TOL = 1e-4
CLASSES = 6
R_MAX, D_MAX, BRN_M = 1.25, 0.5, 0.1
KERAS = net.keras_architecture(0.75)
GEOMETRY = {net.DEFAULT_ARCH: mspec.LAYERS, KERAS: mspec.keras_layers(0.75)}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-12))


def setup(layer: str, n: int, seed: int = 0, arch: net.Architecture = net.DEFAULT_ARCH):
    """Arrays (running statistics moved away from the batch ones so that r and d clip; with ReLU6 a
    larger scale, so that it clips too), a latent minibatch and labels."""
    rng = np.random.default_rng(seed)
    arrays, _, _ = G.back_parameters(make_weights(3, arch=arch), layer, CLASSES)
    if arch.activation == "relu6":
        for name in arrays:
            if name.endswith("/gamma"):
                arrays[name] = arrays[name] * 2
    arrays[G.HEAD_WEIGHT] = (rng.standard_normal(arrays[G.HEAD_WEIGHT].shape) * 0.1).astype(np.float32)
    for name in list(arrays):
        if name.endswith("running_std"):
            arrays[name] = arrays[name] * rng.uniform(0.6, 1.6, arrays[name].shape).astype(np.float32)
        elif name.endswith("running_mean"):
            arrays[name] = arrays[name] + rng.normal(0, 0.3, arrays[name].shape).astype(np.float32)
    shape = net.latent_shape(layer, arch=arch)
    if layer == net.DATA:
        x = rng.integers(0, 256, (n,) + tuple(shape), dtype=np.uint8)
    else:
        x = np.maximum(rng.standard_normal((n,) + tuple(shape)), 0).astype(np.float32)
    return arrays, x, rng.integers(0, CLASSES, n).astype(np.int64)


def run_step(model: onnx.ModelProto, spec: sg.StepSpec, arrays, x, y, hyper, momenta=None, extra=None):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {G.LATENT_INPUT: x, sg.LABELS: y, sg.SGD_HYPER: hyper, sg.SI_LAMBDA: np.array(0.0, np.float32)}
    if spec.brn_layers:
        feeds.update({sg.R_MAX: np.array(R_MAX, np.float32), sg.D_MAX: np.array(D_MAX, np.float32),
                      sg.BRN_MOMENTUM: np.array(BRN_M, np.float32)})
    for name in spec.trainable:
        feeds[name] = arrays[name]
        feeds[sg.momentum_name(name)] = (momenta or {}).get(name, np.zeros_like(arrays[name]))
    for name in spec.carried:
        feeds[name] = arrays[name]
    for name in spec.si_params:  # SI off unless `extra` says otherwise
        s = sg.si_names(name)
        feeds.update({s["F"]: np.zeros_like(arrays[name]), s["theta_star"]: arrays[name],
                      s["scale"]: np.ones_like(arrays[name]), s["traj"]: np.zeros_like(arrays[name])})
    feeds.update(extra or {})
    names = {i.name for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    return dict(zip(outputs, session.run(None, {k: v for k, v in feeds.items() if k in names})))


def reference(layer: str, arrays, x, y, out, geometry=mspec.LAYERS):
    """Float64 forward/backward with the step's ReLU masks; returns the torch back (grads in .grad)."""
    model = torch_oracle.TorchBack(arrays, layer, geometry)
    masks = {}
    for l in model.layers:
        act = out[sg.ACTIVATION + l.name].reshape(l.out_channels, len(y), l.out_hw, l.out_hw).transpose(1, 0, 2, 3)
        passed = torch.from_numpy(((act > 0) & ~(l.relu6 & (act >= 6))).astype(np.float64))
        masks[l.name] = (passed, torch.from_numpy((act >= 6).astype(np.float64))) if l.relu6 else passed
    xt = torch_oracle.preprocess(x, make_weights(3)) if layer == net.DATA else torch.from_numpy(x)
    logits = model(xt.double(), True, R_MAX, D_MAX, masks=masks)
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
    loss.backward()
    return model, loss.item()


def plain_sgd(spec: sg.StepSpec, lr: float = 0.05, momentum: float = 0.9, wd: float = 5e-4) -> np.ndarray:
    return np.tile(np.array([[lr, momentum, 1.0, wd]], np.float32), (len(spec.trainable), 1))


@pytest.mark.parametrize("layer,limit,arch", [
    ("pool6", sg.DW_MATRIX_LIMIT, net.DEFAULT_ARCH), ("conv6/dw", sg.DW_MATRIX_LIMIT, net.DEFAULT_ARCH),
    ("conv5_4/dw", sg.DW_MATRIX_LIMIT, net.DEFAULT_ARCH), ("conv5_4/dw", 0, net.DEFAULT_ARCH),
    ("conv4_1/dw", sg.DW_MATRIX_LIMIT, net.DEFAULT_ARCH), ("conv4_1/dw", 10 ** 9, net.DEFAULT_ARCH),
    ("pool6", sg.DW_MATRIX_LIMIT, KERAS), ("conv5_6/dw", sg.DW_MATRIX_LIMIT, KERAS),
    ("conv5_4/dw", sg.DW_MATRIX_LIMIT, KERAS), ("conv5_4/dw", 0, KERAS), ("conv4_1/dw", sg.DW_MATRIX_LIMIT, KERAS),
    ("conv4_1/dw", 10 ** 9, KERAS)],
    ids=["pool6", "conv6", "conv5_4-matrix", "conv5_4-slices", "conv4_1-slices", "conv4_1-matrix",
         "keras0.75-pool6", "keras0.75-conv5_6", "keras0.75-conv5_4-matrix", "keras0.75-conv5_4-slices",
         "keras0.75-conv4_1-slices", "keras0.75-conv4_1-matrix"])
def test_gradients_update_and_statistics_match_autograd(layer, limit, arch):
    """One step: loss, every gradient, batch statistics, running statistics and the momentum-SGD
    update (with a momentum carried in) equal float64 autograd + torch.optim.SGD. The back of
    conv5_4/dw and conv4_1/dw holds a stride-2 depthwise layer (conv5_6/dw, conv4_2/dw), padded
    0 before and 1 after in Keras's layout; its ReLU6 clips some units of every layer."""
    n = 4 if layer == "conv4_1/dw" else 10
    arrays, x, y = setup(layer, n, arch=arch)
    model, spec = sg.build_step(layer, CLASSES, TORCH_PREPROCESSING, gradients=True, dw_matrix_limit=limit,
                                arch=arch)
    rng = np.random.default_rng(1)
    momenta = {k: (rng.standard_normal(arrays[k].shape) * 0.01).astype(np.float32) for k in spec.trainable}
    # a larger step against ReLU6's larger scales: the float32 difference p' - p stays well above rounding
    lr = 0.5 if arch.activation == "relu6" else 0.05
    hyper = plain_sgd(spec, lr=lr)
    out = run_step(model, spec, arrays, x, y, hyper, momenta)
    if arch.activation == "relu6" and layer != "pool6":  # the clip is exercised, not only the ReLU
        assert all((out[sg.ACTIVATION + l] >= 6).mean() > 0.003 for l in spec.brn_layers)
    ref, loss = reference(layer, arrays, x, y, out, GEOMETRY[arch])
    assert abs(out[sg.LOSS] - loss) < 1e-5 * max(1.0, loss)
    for name in spec.trainable:
        g = ref.p(name).grad.numpy()
        assert rel_err(out[sg.GRAD + name], g) < TOL, name
        p = ref.p(name).detach().numpy()
        buf = momenta[name] * 0.9 + (g + 5e-4 * p)  # torch.optim.SGD with a carried momentum buffer
        assert rel_err(out[sg.momentum_name(name) + sg.NEXT], buf) < TOL, name
        assert rel_err(out[name + sg.NEXT] - arrays[name], -lr * buf) < TOL, name
    for l, (mean, var) in ref.batch_stats.items():
        assert rel_err(out[f"{l}/batch_mean"], mean) < TOL and rel_err(out[f"{l}/batch_var"], var) < TOL
        mu, sd = arrays[f"{l}/running_mean"], arrays[f"{l}/running_std"]
        assert rel_err(out[f"{l}/running_mean" + sg.NEXT] - mu, BRN_M * (mean - mu)) < TOL
        assert rel_err(out[f"{l}/running_std" + sg.NEXT] - sd, BRN_M * (np.sqrt(var + 1e-5) - sd)) < TOL


@pytest.mark.parametrize("arch", [net.DEFAULT_ARCH, KERAS], ids=["caffe", "keras0.75"])
def test_data_layer_trains_the_whole_network_from_frames(arch):
    """Latent layer `data`: preprocessing and conv1 (its weight gradient, its padding) inside the step too."""
    arrays, x, y = setup(net.DATA, 3, arch=arch)
    model, spec = sg.build_step(net.DATA, CLASSES, TORCH_PREPROCESSING, gradients=True, arch=arch)
    out = run_step(model, spec, arrays, x, y, plain_sgd(spec))
    ref, loss = reference(net.DATA, arrays, x, y, out, GEOMETRY[arch])
    assert abs(out[sg.LOSS] - loss) < 1e-5 * max(1.0, loss)
    for name in ("conv1/weight", "conv1/gamma", "conv2_1/dw/weight", "conv6/sep/weight", G.HEAD_WEIGHT):
        assert rel_err(out[sg.GRAD + name], ref.p(name).grad.numpy()) < 10 * TOL, name


def test_r_and_d_are_constants_in_backprop():
    """The same step with r and d differentiated (not detached) gives other gradients, so the
    parity above would catch a graph that let gradients flow through r and d."""
    layer = "conv6/dw"
    arrays, x, y = setup(layer, 8, seed=5)
    model, spec = sg.build_step(layer, CLASSES, TORCH_PREPROCESSING, gradients=True)
    out = run_step(model, spec, arrays, x, y, plain_sgd(spec))
    ref = torch_oracle.TorchBack(arrays, layer)
    xt = torch.from_numpy(x).double()
    for l in ref.layers:
        n = l.name
        yv = torch_oracle.conv(l, xt, ref.p(f"{n}/weight"))
        mu, sigma = (ref.stats[f"{n}/running_{k}"].view(1, -1, 1, 1) for k in ("mean", "std"))
        bm = yv.mean((0, 2, 3), keepdim=True)
        bs = torch.sqrt(((yv - bm) ** 2).mean((0, 2, 3), keepdim=True) + 1e-5)
        r, d = torch.clamp(bs / sigma, 1 / R_MAX, R_MAX), torch.clamp((bm - mu) / sigma, -D_MAX, D_MAX)
        yv = ((yv - bm) / bs * r + d) * ref.p(f"{n}/gamma").view(1, -1, 1, 1) + ref.p(f"{n}/beta").view(1, -1, 1, 1)
        xt = torch.relu(yv)
    torch.nn.functional.cross_entropy(xt.mean((2, 3)) @ ref.p(G.HEAD_WEIGHT).t(), torch.from_numpy(y)).backward()
    assert rel_err(out[sg.GRAD + "conv6/sep/weight"], ref.p("conv6/sep/weight").grad.numpy()) > 1e-3


def test_frozen_rows_leave_parameter_and_momentum_untouched():
    """A parameter whose row is (lr 0, momentum 1, grad scale 0) keeps its value and its momentum
    bit for bit (torch semantics for a parameter without a gradient); the others move."""
    layer = "conv5_6/dw"
    arrays, x, y = setup(layer, 8)
    model, spec = sg.build_step(layer, CLASSES, TORCH_PREPROCESSING)
    hyper = plain_sgd(spec)
    frozen = spec.trainable.index("conv6/dw/weight")
    hyper[frozen] = (0.0, 1.0, 0.0, 0.0)
    momenta = {k: np.full(arrays[k].shape, 0.25, np.float32) for k in spec.trainable}
    out = run_step(model, spec, arrays, x, y, hyper, momenta)
    np.testing.assert_array_equal(out["conv6/dw/weight" + sg.NEXT], arrays["conv6/dw/weight"])
    np.testing.assert_array_equal(out[sg.momentum_name("conv6/dw/weight") + sg.NEXT], momenta["conv6/dw/weight"])
    assert not np.array_equal(out["conv6/sep/weight" + sg.NEXT], arrays["conv6/sep/weight"])


@pytest.mark.parametrize("mode", ["penalty", "scale"])
def test_si_terms_match_a_numpy_reference(mode):
    """The SI variant: penalty lambda * F * (p - p*) added to the gradient (penalty mode) or the
    gradient scaled by a per-weight factor (scale mode), and traj += g' * (p' - p)."""
    layer = "conv6/dw"
    arrays, x, y = setup(layer, 8)
    grads_model, spec = sg.build_step(layer, CLASSES, TORCH_PREPROCESSING, gradients=True)
    model, si_spec = sg.build_step(layer, CLASSES, TORCH_PREPROCESSING, si=True)
    assert si_spec.si_params == ["conv6/sep/weight"]
    rng = np.random.default_rng(3)
    hyper, lam = plain_sgd(spec, momentum=0.0), 50.0 if mode == "penalty" else 0.0
    extra = {sg.SI_LAMBDA: np.array(lam, np.float32)}
    expected = {}
    grads = run_step(grads_model, spec, arrays, x, y, hyper)
    for name in si_spec.si_params:
        s = sg.si_names(name)
        p = arrays[name].astype(np.float64)
        F = rng.uniform(0, 1e-3, p.shape)
        star = p + rng.normal(0, 0.05, p.shape)
        scale = rng.uniform(0, 1, p.shape) if mode == "scale" else np.ones(p.shape)
        traj = rng.normal(0, 1e-4, p.shape)
        extra.update({s["F"]: F.astype(np.float32), s["theta_star"]: star.astype(np.float32),
                      s["scale"]: scale.astype(np.float32), s["traj"]: traj.astype(np.float32)})
        g = grads[sg.GRAD + name] + lam * F * (p - star)
        new = p - 0.05 * (g + 5e-4 * p) * scale
        expected[name] = (new, traj + g * (new - p))
    out = run_step(model, si_spec, arrays, x, y, hyper, extra=extra)
    for name, (new, traj) in expected.items():
        assert rel_err(out[name + sg.NEXT] - arrays[name], new - arrays[name]) < TOL
        assert rel_err(out[sg.si_names(name)["traj"] + sg.NEXT], traj) < TOL
    # the penalty matters at this lambda: without it the update differs by far more than TOL
    if mode == "penalty":
        plain = run_step(model, si_spec, arrays, x, y, hyper, extra={**extra, sg.SI_LAMBDA: np.array(0.0, np.float32)})
        assert rel_err(plain["conv6/sep/weight" + sg.NEXT] - arrays["conv6/sep/weight"],
                       expected["conv6/sep/weight"][0] - arrays["conv6/sep/weight"]) > 100 * TOL


def test_step_graph_is_standard_opset_17_with_a_dynamic_batch():
    """Only ai.onnx operators, IR 8 / opset 17 (loads in onnxruntime >= 1.16); the same graph trains
    minibatches of different sizes."""
    model, spec = sg.build_step("conv5_6/dw", CLASSES, TORCH_PREPROCESSING, si=True)
    assert model.ir_version == 8 and [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert all(node.domain in ("", "ai.onnx") for node in model.graph.node)
    arrays, x, y = setup("conv5_6/dw", 9)
    hyper = plain_sgd(spec)
    for n in (9, 4):
        out = run_step(model, spec, arrays, x[:n], y[:n], hyper)
        assert np.isfinite(out[sg.LOSS]) and out["conv6/sep/weight" + sg.NEXT].shape == arrays["conv6/sep/weight"].shape


@pytest.mark.parametrize("arch", [net.DEFAULT_ARCH, net.keras_architecture(0.25)], ids=["caffe", "keras0.25"])
@pytest.mark.parametrize("layer", net.LATENT_LAYERS)
def test_every_latent_layer_exports_a_step_that_learns(layer, arch):
    """Generated from the layer table: for each of the 15 latent layers the step graph builds, runs
    (64 px input, 2 patterns) and lowers the loss of the same minibatch by a step, in both layouts."""
    size = 64
    model, spec = sg.build_step(layer, CLASSES, TORCH_PREPROCESSING, input_size=size, arch=arch)
    arrays, _, _ = G.back_parameters(make_weights(3, input_size=size, arch=arch), layer, CLASSES, size)
    rng = np.random.default_rng(0)
    shape = (2,) + tuple(net.latent_shape(layer, size, arch))
    x = rng.integers(0, 256, shape, dtype=np.uint8) if layer == net.DATA else \
        np.maximum(rng.standard_normal(shape), 0).astype(np.float32)
    y = np.array([1, 4], np.int64)
    first = run_step(model, spec, arrays, x, y, plain_sgd(spec, lr=0.01, momentum=0.0, wd=0.0))
    moved = {k[:-len(sg.NEXT)]: v for k, v in first.items() if k.endswith(sg.NEXT)}
    second = run_step(model, spec, {**arrays, **moved}, x, y, plain_sgd(spec, lr=0.0, momentum=0.0, wd=0.0))
    assert second[sg.LOSS] < first[sg.LOSS]
