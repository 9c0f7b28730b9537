"""The back's training step as one standard-opset ONNX graph (ai.onnx, opset 17): forward with Batch
Renormalization, softmax cross-entropy, a hand-derived backward pass and the momentum-SGD update.

Any onnxruntime (CPU, CUDA, a Jetson build) runs it as an ordinary InferenceSession: no training
build. Every parameter and every piece of training state is a graph input, and its updated value a
graph output named `<input>.next`, so that the runtime keeps them on the session's device and
feeds each step's outputs to the next step (ping-pong buffers).

Layout: activations are kept channel-major, shape (C, N*H*W). A 1x1 convolution is then one Gemm
in each direction (forward, input gradient, weight gradient) with no transposes. A 3x3 depthwise
convolution on a small map is a batched MatMul with a per-channel (HW x HWo) matrix built from its
9 taps and constant 0/1 shift tensors; on a larger map it is a sum of 9 shifted slices.

Batch Renormalization (r, d constants in backprop) and ReLU are folded per channel so that each
full-size tensor is read as few times as possible:
    forward   yc = y - mu_B,  z = yc * A + B,  out = relu(z),   A = gamma r / sigma_B, B = gamma d + beta
    backward  dz = dout * [out > 0],  S1 = sum dz,  S2 = sum dz * yc
              dy = A dz + K2 yc + K3,  K2 = -A S2 / (M sigma_B^2),  K3 = -A S1 / M
              dgamma = r S2 / sigma_B + d S1,  dbeta = S1
The running mean and std move by their exponential average inside the graph (rate `brn_momentum`).

Update (torch.optim.SGD semantics, one row of `sgd_hyper` = [lr, momentum, grad_scale, weight_decay]
per trainable parameter, in the order of `trainable`):
    g' = g + si_lambda * F * (p - theta*)          (SI penalty, the `si` variant only)
    d  = (g' + wd p) * grad_scale [* si_scale]
    buf' = momentum * buf + d,   p' = p - lr * buf'
A parameter with lr 0, momentum 1 and grad_scale 0 is untouched, its momentum included (a frozen
parameter, or CWR*'s head-only phase). The `si` variant also accumulates the SI trajectory
`traj' = traj + g' * (p' - p)` for every conv weight.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..models import graph as G
from ..models import mobilenet_v1 as net
from ..models.weights import Preprocessing
from .format import (ACTIVATION, BRN_MOMENTUM, D_MAX, GRAD, HYPER_COLUMNS, LABELS, LOSS, NEXT, R_MAX, SGD_HYPER,  # noqa: F401
                     SI_LAMBDA, momentum_name, si_names)

# A depthwise layer uses the (HW x HWo) matrix form while HW * HWo stays at most this (8x8 -> 8x8).
DW_MATRIX_LIMIT = 64 * 64


def si_parameters(latent_layer: str, input_size: int = net.DEFAULT_INPUT_SIZE) -> List[str]:
    """The weights SI regularizes: every conv weight of the back (normalization and head excluded)."""
    _, back = net.split_layers(latent_layer, input_size)
    return [G.param_names(l.name)["weight"] for l in back]


@dataclass
class StepSpec:
    """What one generated step graph holds (names in input order)."""

    trainable: List[str]
    carried: List[str]
    brn_layers: List[str]
    si: bool
    si_params: List[str] = field(default_factory=list)

    @property
    def state_inputs(self) -> List[str]:
        """Every tensor that is an input and comes back as `<name>.next`."""
        names = list(self.trainable) + [momentum_name(p) for p in self.trainable] + list(self.carried)
        if self.si:
            names += [si_names(p)["traj"] for p in self.si_params]
        return names


class _Builder:
    """A thin layer over `models.graph._Graph`: unique value names, constants by value."""

    def __init__(self) -> None:
        self.g = G._Graph()
        self._used: set = set()

    def op(self, op_type: str, inputs: Sequence[str], name: str, outputs: int = 1, **attrs):
        """Add a node; returns its output name (a list of names when `outputs` > 1)."""
        base, k = name, 1
        while name in self._used or name in self.g.inits:
            k += 1
            name = f"{base}#{k}"
        self._used.add(name)
        outs = [name] if outputs == 1 else [f"{name}:{i}" for i in range(outputs)]
        self.g.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def shape(self, *dims: int) -> str:
        return self.ints("shape/" + "_".join(str(d) for d in dims), dims)

    def ints(self, name: str, values: Sequence[int]) -> str:
        return self.g.const(name, np.array(values, np.int64))

    def index(self, k: int) -> str:
        return self.g.const(f"index/{k}", np.array(k, np.int64))

    def scalar(self, value: float) -> str:
        return self.g.const(f"const/{value!r}", np.array(value, np.float32))

    def input(self, name: str, elem: int, shape: Sequence) -> str:
        self._used.add(name)
        self.g.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def output(self, value: str, name: str, elem: int = TensorProto.FLOAT, shape: Optional[Sequence] = None) -> None:
        if value != name:
            self.g.nodes.append(helper.make_node("Identity", [value], [name], name=f"output/{name}"))
        self.g.outputs.append(helper.make_tensor_value_info(name, elem, shape))


# A backward closure: gradient of the layer output -> gradient of the layer input (None: not needed).
Backward = Callable[[str], Optional[str]]


class StepGraph:
    """Builds the step graph of the back for one latent layer (see the module docstring)."""

    def __init__(self, latent_layer: str, classes: int, preprocessing: Preprocessing,
                 input_size: int = net.DEFAULT_INPUT_SIZE, input_order: str = "BGR", si: bool = False,
                 gradients: bool = False, dw_matrix_limit: int = DW_MATRIX_LIMIT) -> None:
        """`gradients` adds every gradient (`grad/<param>`) and layer output (`act/<layer>`, shape
        (C, N*H*W)) as outputs, for tests; `dw_matrix_limit` chooses the depthwise formulation."""
        net.check_latent_layer(latent_layer)
        if classes < 2:
            raise ValueError(f"the class count must be at least 2, got {classes}")
        self.latent_layer, self.classes = latent_layer, classes
        self.preprocessing, self.input_size, self.input_order = preprocessing, input_size, input_order
        self.si, self.gradients, self.dw_matrix_limit = si, gradients, dw_matrix_limit
        _, self.layers = net.split_layers(latent_layer, input_size)
        self.b = _Builder()
        self.tape: List[Backward] = []
        self.grads: Dict[str, str] = {}
        self.batch_stats: List[Tuple[str, str, str]] = []  # (layer, mean value, var value)
        self.activations: List[Tuple[str, str]] = []  # (layer, its output), channel-major
        self.trainable: List[str] = []
        self.carried: List[str] = []
        for layer in self.layers:
            p = G.param_names(layer.name)
            self.trainable += [p["weight"], p["gamma"], p["beta"]]
            self.carried += [p["running_mean"], p["running_std"]]
        self.trainable.append(G.HEAD_WEIGHT)
        self.si_params = si_parameters(latent_layer, input_size) if si else []

    # -- the whole graph ----------------------------------------------------------------------
    def build(self) -> Tuple[onnx.ModelProto, StepSpec]:
        b = self.b
        F = TensorProto.FLOAT
        shape = ["batch"] + list(net.latent_shape(self.latent_layer, self.input_size))
        latent_elem = TensorProto.UINT8 if self.latent_layer == net.DATA else F
        latent = b.input(G.LATENT_INPUT, latent_elem, shape)
        labels = b.input(LABELS, TensorProto.INT64, ["batch"])
        for name in self.trainable:
            b.input(name, F, self._param_shape(name))
        for name in self.trainable:
            b.input(momentum_name(name), F, self._param_shape(name))
        for name in self.carried:
            b.input(name, F, [self._channels(name)])
        if self.layers:
            b.input(R_MAX, F, [])
            b.input(D_MAX, F, [])
            b.input(BRN_MOMENTUM, F, [])
            self.r_min = b.op("Reciprocal", [R_MAX], "brn/r_min")
            self.d_min = b.op("Neg", [D_MAX], "brn/d_min")
        b.input(SGD_HYPER, F, [len(self.trainable), len(HYPER_COLUMNS)])
        if self.si:
            b.input(SI_LAMBDA, F, [])
            for p in self.si_params:
                for key in ("F", "theta_star", "scale", "traj"):
                    b.input(si_names(p)[key], F, self._param_shape(p))

        n = b.op("Shape", [labels], "batch/shape")
        n_float = b.op("Cast", [n], "batch/n", to=F)
        self.inv_n = b.op("Reciprocal", [n_float], "batch/inv_n")  # shape (1,)

        x = self._input(latent)
        for layer in self.layers:
            x = self._layer(layer, x)
        logits_grad, loss = self._pool_head_loss(x, labels)
        grad = logits_grad
        for backward in reversed(self.tape):
            grad = backward(grad) if grad is not None else None

        b.output(loss, LOSS, F, [])
        for layer, mean, var in self.batch_stats:
            c = self._channels(G.param_names(layer)["running_mean"])
            b.output(mean, f"{layer}/batch_mean", F, [c])
            b.output(var, f"{layer}/batch_var", F, [c])
        if self.gradients:  # for tests: every gradient, and every layer's output (its ReLU mask)
            for name in self.trainable:
                b.output(self.grads[name], GRAD + name, F, self._param_shape(name))
            for layer, value in self.activations:
                b.output(value, ACTIVATION + layer, F, [self._channels(G.param_names(layer)["gamma"]), "pixels"])
        self._update()
        spec = StepSpec(list(self.trainable), list(self.carried), [l.name for l in self.layers], self.si,
                        list(self.si_params))
        return b.g.model(f"mobilenet_v1_back_step_{self.latent_layer.replace('/', '_')}"), spec

    def _param_shape(self, name: str) -> List[int]:
        if name == G.HEAD_WEIGHT:
            return [self.classes, net.conv_layers(self.input_size)[-1].out_channels]
        layer = next(l for l in self.layers if name.startswith(l.name + "/"))
        if name.endswith("/weight"):
            return list(layer.weight_shape)
        return [layer.out_channels]

    def _channels(self, name: str) -> int:
        return next(l.out_channels for l in self.layers if name.startswith(l.name + "/"))

    # -- input --------------------------------------------------------------------------------
    def _input(self, latent: str) -> str:
        """The latent input in the channel-major layout: (C, N*H*W), or (N, 1024) at pool6."""
        b = self.b
        if self.latent_layer == net.POOL:
            return latent
        if self.latent_layer == net.DATA:
            pre = self.preprocessing
            x = b.op("Cast", [latent], "data/float", to=TensorProto.FLOAT)
            if self.input_order != pre.channel_order:
                x = b.op("Gather", [x, b.ints("data/channel_swap", [2, 1, 0])], "data/reordered", axis=3)
            mean = b.g.const("data/mean", np.asarray(pre.mean, np.float32))
            inv_std = b.g.const("data/inv_std", (1.0 / np.asarray(pre.std, np.float32)).astype(np.float32))
            x = b.op("Mul", [b.op("Sub", [x, mean], "data/centered"), inv_std], "data/scaled")
            x = b.op("Transpose", [x], "data/cnhw", perm=[3, 0, 1, 2])
            c = 3
        else:
            x = b.op("Transpose", [latent], "latent/cnhw", perm=[1, 0, 2, 3])
            c = net.latent_shape(self.latent_layer, self.input_size)[0]
        return b.op("Reshape", [x, b.shape(c, -1)], "latent/cm")

    # -- one conv block -----------------------------------------------------------------------
    def _layer(self, layer: net.ConvLayer, x: str) -> str:
        first = not self.tape
        if layer.kind == "sep":
            y = self._sep(layer, x, need_dx=not first)
        elif layer.kind == "dw":
            if layer.in_hw ** 2 * layer.out_hw ** 2 <= self.dw_matrix_limit:
                y = self._dw_matrix(layer, x, need_dx=not first)
            else:
                y = self._dw_slices(layer, x, need_dx=not first)
        else:
            y = self._conv1(layer, x)
        return self._brn_relu(layer, y)

    def _sep(self, layer: net.ConvLayer, x: str, need_dx: bool) -> str:
        """1x1 convolution: Y (Co, M) = W (Co, Ci) @ X (Ci, M)."""
        b, n = self.b, layer.name
        wname = G.param_names(n)["weight"]
        w = b.op("Reshape", [wname, b.shape(layer.out_channels, layer.in_channels)], f"{n}/w2d")
        y = b.op("MatMul", [w, x], f"{n}/conv")

        def backward(dy: str) -> Optional[str]:
            dw = b.op("Gemm", [dy, x], f"{n}/dw2d", transB=1)
            self.grads[wname] = b.op("Reshape", [dw, b.shape(*layer.weight_shape)], f"{n}/grad_weight")
            return b.op("Gemm", [w, dy], f"{n}/dx", transA=1) if need_dx else None
        self.tape.append(backward)
        return y

    def _shift_matrix(self, layer: net.ConvLayer) -> np.ndarray:
        """(9, HW * HWo) 0/1: tap k of output pixel o reads input pixel p (padding 1)."""
        h, ho, s = layer.in_hw, layer.out_hw, layer.stride
        m = np.zeros((9, h * h, ho * ho), np.float32)
        for i in range(3):
            for j in range(3):
                for oy in range(ho):
                    for ox in range(ho):
                        iy, ix = s * oy + i - 1, s * ox + j - 1
                        if 0 <= iy < h and 0 <= ix < h:
                            m[i * 3 + j, iy * h + ix, oy * ho + ox] = 1.0
        return m.reshape(9, -1)

    def _dw_matrix(self, layer: net.ConvLayer, x: str, need_dx: bool) -> str:
        """Depthwise 3x3 as Y (C, N, HWo) = X (C, N, HW) @ M (C, HW, HWo), M = W (C, 9) @ S (9, HW*HWo)."""
        b, n = self.b, layer.name
        c, hw, hwo = layer.in_channels, layer.in_hw ** 2, layer.out_hw ** 2
        wname = G.param_names(n)["weight"]
        shifts = self._shift_matrix(layer)
        s = b.g.const(f"{n}/shifts", shifts)
        taps = b.op("Reshape", [wname, b.shape(c, 9)], f"{n}/taps")
        mat = b.op("Reshape", [b.op("MatMul", [taps, s], f"{n}/m_flat"), b.shape(c, hw, hwo)], f"{n}/m")
        x3 = b.op("Reshape", [x, b.shape(c, -1, hw)], f"{n}/x3")
        y3 = b.op("MatMul", [x3, mat], f"{n}/y3")
        y = b.op("Reshape", [y3, b.shape(c, -1)], f"{n}/conv")

        def backward(dy: str) -> Optional[str]:
            dy3 = b.op("Reshape", [dy, b.shape(c, -1, hwo)], f"{n}/dy3")
            # dM (C, HW, HWo) = X3^T dY3; transpose the smaller of the two operands
            if hwo < hw:
                dmt = b.op("MatMul", [b.op("Transpose", [dy3], f"{n}/dy3t", perm=[0, 2, 1]), x3], f"{n}/dmt")
                st = b.g.const(f"{n}/shifts_t", shifts.reshape(9, hw, hwo).transpose(2, 1, 0).reshape(hwo * hw, 9).copy())
                dtaps = b.op("MatMul", [b.op("Reshape", [dmt, b.shape(c, hwo * hw)], f"{n}/dmt2d"), st], f"{n}/dtaps")
            else:
                dm = b.op("MatMul", [b.op("Transpose", [x3], f"{n}/x3t", perm=[0, 2, 1]), dy3], f"{n}/dm")
                st = b.g.const(f"{n}/shifts_t", shifts.T.copy())
                dtaps = b.op("MatMul", [b.op("Reshape", [dm, b.shape(c, hw * hwo)], f"{n}/dm2d"), st], f"{n}/dtaps")
            self.grads[wname] = b.op("Reshape", [dtaps, b.shape(*layer.weight_shape)], f"{n}/grad_weight")
            if not need_dx:
                return None
            mt = b.op("Transpose", [mat], f"{n}/mt", perm=[0, 2, 1])
            dx3 = b.op("MatMul", [dy3, mt], f"{n}/dx3")
            return b.op("Reshape", [dx3, b.shape(c, -1)], f"{n}/dx")
        self.tape.append(backward)
        return y

    def _taps(self, layer: net.ConvLayer, padded: str, tag: str) -> List[str]:
        """The 9 (C, N, Ho, Wo) windows of a padded (C, N, H+2, W+2) map that tap (i, j) reads."""
        b, n, s, ho = self.b, layer.name, layer.stride, layer.out_hw
        out = []
        for i in range(3):
            for j in range(3):
                starts = b.ints(f"{n}/tap_starts_{i}{j}", [i, j])
                ends = b.ints(f"{n}/tap_ends_{i}{j}", [i + s * (ho - 1) + 1, j + s * (ho - 1) + 1])
                out.append(b.op("Slice", [padded, starts, ends, b.ints("axes/hw", [2, 3]), b.ints(f"steps/{s}", [s, s])],
                                f"{n}/{tag}{i}{j}"))
        return out

    def _dw_slices(self, layer: net.ConvLayer, x: str, need_dx: bool) -> str:
        """Depthwise 3x3 on a large map: Y = sum over taps k of w[:, k] * window_k(X)."""
        b, n = self.b, layer.name
        c, h, ho = layer.in_channels, layer.in_hw, layer.out_hw
        wname = G.param_names(n)["weight"]
        pads = b.ints("pads/hw1", [0, 0, 1, 1, 0, 0, 1, 1])
        x4 = b.op("Reshape", [x, b.shape(c, -1, h, h)], f"{n}/x4")
        xp = b.op("Pad", [x4, pads], f"{n}/xpad")
        taps = b.op("Transpose", [b.op("Reshape", [wname, b.shape(c, 9)], f"{n}/taps_c9")], f"{n}/taps_9c", perm=[1, 0])
        taps = b.op("Reshape", [taps, b.shape(9, c, 1, 1, 1)], f"{n}/taps_9c111")
        per_tap = b.op("Split", [taps, b.ints("split/nine", [1] * 9)], f"{n}/tap", outputs=9, axis=0)
        per_tap = [b.op("Reshape", [t, b.shape(c, 1, 1, 1)], f"{n}/w{k}") for k, t in enumerate(per_tap)]
        windows = self._taps(layer, xp, "win")
        acc = None
        for k in range(9):
            term = b.op("Mul", [windows[k], per_tap[k]], f"{n}/term{k}")
            acc = term if acc is None else b.op("Add", [acc, term], f"{n}/acc{k}")
        y = b.op("Reshape", [acc, b.shape(c, -1)], f"{n}/conv")

        def backward(dy: str) -> Optional[str]:
            dy4 = b.op("Reshape", [dy, b.shape(c, -1, ho, ho)], f"{n}/dy4")
            sums = []
            for k in range(9):
                prod = b.op("Mul", [dy4, windows[k]], f"{n}/dwprod{k}")
                sums.append(b.op("ReduceSum", [prod, b.ints("axes/nhw", [1, 2, 3])], f"{n}/dwsum{k}", keepdims=0))
            stacked = b.op("Concat", [b.op("Unsqueeze", [s_, b.ints("axes/one", [1])], f"{n}/dwcol{k}")
                                      for k, s_ in enumerate(sums)], f"{n}/dtaps", axis=1)
            self.grads[wname] = b.op("Reshape", [stacked, b.shape(*layer.weight_shape)], f"{n}/grad_weight")
            if not need_dx:
                return None
            up = dy4
            if layer.stride == 2:  # zero-insertion: dY[a, b] lands at (2a, 2b) of an (H, W) map
                six = b.op("Reshape", [dy4, b.shape(c, -1, ho, 1, ho, 1)], f"{n}/dy6")
                six = b.op("Pad", [six, b.ints("pads/zero_insert", [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1])],
                           f"{n}/dy6pad")
                up = b.op("Reshape", [six, b.shape(c, -1, 2 * ho, 2 * ho)], f"{n}/dyup")
                if h > 2 * ho:  # odd input side: the last row/column gets no output
                    extra = h - 2 * ho
                    up = b.op("Pad", [up, b.ints(f"pads/end{extra}", [0, 0, 0, 0, 0, 0, extra, extra])], f"{n}/dyup_odd")
            upp = b.op("Pad", [up, pads], f"{n}/dyuppad")
            acc2 = None
            for i in range(3):
                for j in range(3):
                    starts = b.ints(f"{n}/back_starts_{i}{j}", [2 - i, 2 - j])
                    ends = b.ints(f"{n}/back_ends_{i}{j}", [2 - i + h, 2 - j + h])
                    win = b.op("Slice", [upp, starts, ends, b.ints("axes/hw", [2, 3])], f"{n}/bwin{i}{j}")
                    term = b.op("Mul", [win, per_tap[i * 3 + j]], f"{n}/bterm{i}{j}")
                    acc2 = term if acc2 is None else b.op("Add", [acc2, term], f"{n}/bacc{i}{j}")
            return b.op("Reshape", [acc2, b.shape(c, -1)], f"{n}/dx")
        self.tape.append(backward)
        return y

    def _conv1(self, layer: net.ConvLayer, x: str) -> str:
        """The full 3x3 convolution on the raw input (latent layer `data`): im2col by 9 windows + Gemm.
        Its input needs no gradient."""
        b, n = self.b, layer.name
        h = layer.in_hw
        wname = G.param_names(n)["weight"]
        x4 = b.op("Reshape", [x, b.shape(layer.in_channels, -1, h, h)], f"{n}/x4")
        xp = b.op("Pad", [x4, b.ints("pads/hw1", [0, 0, 1, 1, 0, 0, 1, 1])], f"{n}/xpad")
        windows = [b.op("Unsqueeze", [w, b.ints("axes/one", [1])], f"{n}/col{k}")
                   for k, w in enumerate(self._taps(layer, xp, "win"))]
        cols = b.op("Reshape", [b.op("Concat", windows, f"{n}/cols5", axis=1), b.shape(layer.in_channels * 9, -1)],
                    f"{n}/cols")
        w = b.op("Reshape", [wname, b.shape(layer.out_channels, layer.in_channels * 9)], f"{n}/w2d")
        y = b.op("MatMul", [w, cols], f"{n}/conv")

        def backward(dy: str) -> Optional[str]:
            dw = b.op("Gemm", [dy, cols], f"{n}/dw2d", transB=1)
            self.grads[wname] = b.op("Reshape", [dw, b.shape(*layer.weight_shape)], f"{n}/grad_weight")
            return None
        self.tape.append(backward)
        return y

    # -- Batch Renormalization + scale/shift + ReLU -------------------------------------------
    def _brn_relu(self, layer: net.ConvLayer, y: str) -> str:
        b, n = self.b, layer.name
        p = G.param_names(n)
        c = layer.out_channels
        col = b.shape(c, 1)
        axes = b.ints("axes/cols", [1])
        mu_b = b.op("ReduceMean", [y], f"{n}/mu_b", axes=[1], keepdims=1)  # opset 17: axes attribute  # (C, 1)
        yc = b.op("Sub", [y, mu_b], f"{n}/yc")
        var_b = b.op("ReduceMean", [b.op("Mul", [yc, yc], f"{n}/yc2")], f"{n}/var_b", axes=[1], keepdims=1)
        eps = b.scalar(G.BRN_EPS)
        sigma_b = b.op("Sqrt", [b.op("Add", [var_b, eps], f"{n}/var_eps")], f"{n}/sigma_b")
        mu = b.op("Reshape", [p["running_mean"], col], f"{n}/mu")
        sigma = b.op("Reshape", [p["running_std"], col], f"{n}/sigma")
        r = b.op("Clip", [b.op("Div", [sigma_b, sigma], f"{n}/r_raw"), self.r_min, R_MAX], f"{n}/r")
        d = b.op("Clip", [b.op("Div", [b.op("Sub", [mu_b, mu], f"{n}/d_shift"), sigma], f"{n}/d_raw"),
                          self.d_min, D_MAX], f"{n}/d")
        gamma = b.op("Reshape", [p["gamma"], col], f"{n}/gamma2d")
        beta = b.op("Reshape", [p["beta"], col], f"{n}/beta2d")
        gr = b.op("Mul", [gamma, r], f"{n}/gamma_r")
        a = b.op("Div", [gr, sigma_b], f"{n}/A")
        shift = b.op("Add", [b.op("Mul", [gamma, d], f"{n}/gamma_d"), beta], f"{n}/B")
        out = b.op("Relu", [self._affine(yc, a, shift, c, f"{n}/z")], n)
        flat = b.shape(c)
        self.activations.append((n, out))
        self.batch_stats.append((n, b.op("Reshape", [mu_b, flat], f"{n}/batch_mean"),
                                 b.op("Reshape", [var_b, flat], f"{n}/batch_var")))
        self._running_stats(layer, mu_b, sigma_b)

        def backward(dout: str) -> str:
            # 0/1 mask of the ReLU: out >= 0, so min(out * 3e38, 1) is 0 exactly at 0 and 1 for every
            # normal positive float (denormals are flushed to zero by the session); Sign is ~8x slower
            big = b.scalar(3e38)
            mask = b.op("Clip", [b.op("Mul", [out, big], f"{n}/out_big"), b.scalar(0.0), b.scalar(1.0)], f"{n}/mask")
            dz = b.op("Mul", [dout, mask], f"{n}/dz")
            s1 = b.op("ReduceSum", [dz, axes], f"{n}/s1", keepdims=1)
            s2 = b.op("ReduceSum", [b.op("Mul", [dz, yc], f"{n}/dz_yc"), axes], f"{n}/s2", keepdims=1)
            inv_m = b.op("Mul", [self.inv_n, b.scalar(1.0 / layer.out_hw ** 2)], f"{n}/inv_m")
            k3 = b.op("Neg", [b.op("Mul", [b.op("Mul", [a, s1], f"{n}/a_s1"), inv_m], f"{n}/a_s1_m")], f"{n}/k3")
            k2 = b.op("Neg", [b.op("Div", [b.op("Mul", [b.op("Mul", [a, s2], f"{n}/a_s2"), inv_m], f"{n}/a_s2_m"),
                                          b.op("Mul", [sigma_b, sigma_b], f"{n}/var_b_eps")], f"{n}/a_s2_mv")],
                      f"{n}/k2")
            dgamma = b.op("Add", [b.op("Mul", [r, b.op("Div", [s2, sigma_b], f"{n}/s2_sigma")], f"{n}/r_s2"),
                                  b.op("Mul", [d, s1], f"{n}/d_s1")], f"{n}/dgamma2d")
            self.grads[p["gamma"]] = b.op("Reshape", [dgamma, flat], f"{n}/grad_gamma")
            self.grads[p["beta"]] = b.op("Reshape", [s1, flat], f"{n}/grad_beta")
            return b.op("Add", [self._affine(dz, a, k3, c, f"{n}/dz_a_k3"), b.op("Mul", [yc, k2], f"{n}/yc_k2")],
                        f"{n}/dy")
        self.tape.append(backward)
        return out

    def _affine(self, x: str, scale: str, shift: str, c: int, name: str) -> str:
        """x * scale + shift per channel of a (C, M) tensor, in one pass: BatchNormalization in
        inference mode with mean 0, variance 1 and epsilon 0 (the CUDA provider runs it too; its
        training mode is the one it refuses)."""
        b = self.b
        flat = b.shape(c)
        zero = b.g.const(f"{name}/bn_zero", np.zeros(c, np.float32))  # a layer's own constants (ORT's BN kernels
        one = b.g.const(f"{name}/bn_one", np.ones(c, np.float32))  # have misbehaved with shared ones)
        y = b.op("BatchNormalization", [b.op("Reshape", [x, b.shape(1, c, -1)], f"{name}/x3"),
                                        b.op("Reshape", [scale, flat], f"{name}/scale"),
                                        b.op("Reshape", [shift, flat], f"{name}/shift"), zero, one],
                 f"{name}/affine", epsilon=0.0)
        return b.op("Reshape", [y, b.shape(c, -1)], f"{name}/2d")

    def _running_stats(self, layer: net.ConvLayer, mu_b: str, sigma_b: str) -> None:
        """mu' = mu + m (mu_B - mu), sigma' = sigma + m (sigma_B - sigma), as graph outputs."""
        b, n = self.b, layer.name
        p = G.param_names(n)
        flat = b.shape(layer.out_channels)
        for name, batch in ((p["running_mean"], mu_b), (p["running_std"], sigma_b)):
            step = b.op("Mul", [b.op("Sub", [b.op("Reshape", [batch, flat], f"{name}/batch"), name], f"{name}/delta"),
                                BRN_MOMENTUM], f"{name}/step")
            b.output(b.op("Add", [name, step], f"{name}/moved"), name + NEXT, TensorProto.FLOAT, [layer.out_channels])

    # -- pool, head, loss ---------------------------------------------------------------------
    def _pool_head_loss(self, x: str, labels: str) -> Tuple[str, str]:
        """Global average pool, mid_fc7 (no bias), mean softmax cross-entropy; returns (d logits, loss)
        and records the pool's and head's backward."""
        b = self.b
        head = G.HEAD_WEIGHT
        if self.latent_layer == net.POOL:
            pooled = x  # (N, C)
            logits = b.op("Gemm", [pooled, head], "mid_fc7/logits", transB=1)
        else:
            last = self.layers[-1]
            c, hw = last.out_channels, last.out_hw ** 2
            pooled = b.op("ReduceMean", [b.op("Reshape", [x, b.shape(c, -1, hw)], "pool6/x3")], "pool6/cn",
                          axes=[2], keepdims=0)  # (C, N)
            logits = b.op("Gemm", [pooled, head], "mid_fc7/logits", transA=1, transB=1)
        log_p = b.op("LogSoftmax", [logits], "loss/log_p", axis=1)
        onehot = b.op("OneHot", [labels, b.ints("loss/depth", [self.classes]), b.g.const("loss/onehot_values",
                                                                                       np.array([0, 1], np.float32))],
                      "loss/onehot", axis=-1)
        picked = b.op("ReduceSum", [b.op("Mul", [onehot, log_p], "loss/picked_all"), b.ints("axes/one", [1])],
                      "loss/picked", keepdims=0)
        loss = b.op("Neg", [b.op("ReduceMean", [picked], "loss/mean", keepdims=0)], "loss/value")
        dlogits = b.op("Mul", [b.op("Sub", [b.op("Exp", [log_p], "loss/p"), onehot], "loss/p_minus_y"), self.inv_n],
                       "loss/dlogits")
        if self.latent_layer == net.POOL:
            self.grads[head] = b.op("Gemm", [dlogits, pooled], "mid_fc7/grad_weight", transA=1)
            return None, loss  # type: ignore[return-value]
        self.grads[head] = b.op("Gemm", [dlogits, pooled], "mid_fc7/grad_weight", transA=1, transB=1)
        dpooled = b.op("Gemm", [head, dlogits], "pool6/dcn", transA=1, transB=1)  # (C, N)
        dpooled = b.op("Mul", [dpooled, b.scalar(1.0 / hw)], "pool6/dcn_hw")
        dx3 = b.op("Expand", [b.op("Unsqueeze", [dpooled, b.ints("axes/two", [2])], "pool6/dcn1"), b.shape(1, 1, hw)],
                   "pool6/dx3")
        return b.op("Reshape", [dx3, b.shape(c, -1)], "pool6/dx"), loss

    # -- the update -----------------------------------------------------------------------------
    def _update(self) -> None:
        """SGD with momentum and weight decay (and SI) on flattened tensors: ORT's CPU broadcasting of
        a (1,) hyper-parameter against a 4-D (O, I, 1, 1) weight is ~100x slower than against a flat one."""
        b = self.b
        si = set(self.si_params)
        flat = b.shape(-1)
        for k, name in enumerate(self.trainable):
            shape = self._param_shape(name)
            row = b.op("Gather", [SGD_HYPER, b.index(k)], f"sgd/{name}/hyper", axis=0)  # (4,)
            lr, mom, gscale, wd = b.op("Split", [row, b.ints("split/four", [1, 1, 1, 1])], f"sgd/{name}/h",
                                       outputs=4, axis=0)
            p = b.op("Reshape", [name, flat], f"sgd/{name}/p")
            g = b.op("Reshape", [self.grads[name], flat], f"sgd/{name}/g")
            if name in si:
                s = {key: b.op("Reshape", [value, flat], f"si/{name}/{key}") for key, value in si_names(name).items()}
                pull = b.op("Mul", [b.op("Mul", [s["F"], b.op("Sub", [p, s["theta_star"]], f"si/{name}/dist")],
                                         f"si/{name}/f_dist"), SI_LAMBDA], f"si/{name}/penalty")
                g = b.op("Add", [g, pull], f"si/{name}/grad")
            d = b.op("Add", [g, b.op("Mul", [p, wd], f"sgd/{name}/decay")], f"sgd/{name}/d")
            d = b.op("Mul", [d, gscale], f"sgd/{name}/d_scaled")
            if name in si:
                d = b.op("Mul", [d, s["scale"]], f"si/{name}/d_scaled")
            buf = b.op("Add", [b.op("Mul", [b.op("Reshape", [momentum_name(name), flat], f"sgd/{name}/buf_in"), mom],
                                    f"sgd/{name}/buf_m"), d], f"sgd/{name}/buf")
            new = b.op("Sub", [p, b.op("Mul", [buf, lr], f"sgd/{name}/step")], f"sgd/{name}/new")
            full = b.shape(*shape)
            b.output(b.op("Reshape", [new, full], f"sgd/{name}/new_full"), name + NEXT, TensorProto.FLOAT, shape)
            b.output(b.op("Reshape", [buf, full], f"sgd/{name}/buf_full"), momentum_name(name) + NEXT,
                     TensorProto.FLOAT, shape)
            if name in si:
                moved = b.op("Sub", [new, p], f"si/{name}/moved")
                traj = b.op("Add", [s["traj"], b.op("Mul", [g, moved], f"si/{name}/g_moved")], f"si/{name}/traj_new")
                b.output(b.op("Reshape", [traj, full], f"si/{name}/traj_full"), si_names(name)["traj"] + NEXT,
                         TensorProto.FLOAT, shape)


def build_step(latent_layer: str, classes: int, preprocessing: Preprocessing,
               input_size: int = net.DEFAULT_INPUT_SIZE, input_order: str = "BGR", si: bool = False,
               gradients: bool = False, dw_matrix_limit: int = DW_MATRIX_LIMIT) -> Tuple[onnx.ModelProto, StepSpec]:
    """The training-step graph of the back above `latent_layer` (see the module docstring)."""
    return StepGraph(latent_layer, classes, preprocessing, input_size, input_order, si, gradients,
                     dw_matrix_limit).build()
