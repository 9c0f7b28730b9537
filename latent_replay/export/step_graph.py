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
              dy = A (dz + K2 yc + K3),  K2 = -S2 / (M sigma_B^2),  K3 = -S1 / M
              (A is applied below, to the small operands: W and dW of the convolution that made y)
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
from typing import Dict, List, Tuple

import numpy as np
import onnx
from onnx import TensorProto

from ..models import graph as G
from ..models import mobilenet_v1 as net
from ..models.weights import Preprocessing
from .format import (ACTIVATION, BRN_MOMENTUM, D_MAX, GRAD, HYPER_COLUMNS, LABELS, LOSS, NEXT, R_MAX, SGD_HYPER,  # noqa: F401
                     SI_LAMBDA, momentum_name, si_names)
from .step_layers import Backward, LayerOps, _Builder  # noqa: F401

# A depthwise layer uses the (HW x HWo) matrix form while HW * HWo stays at most this (8x8 -> 8x8).
DW_MATRIX_LIMIT = 64 * 64


def si_parameters(latent_layer: str, input_size: int = net.DEFAULT_INPUT_SIZE,
                  arch: net.Architecture = net.DEFAULT_ARCH) -> List[str]:
    """The weights SI regularizes: every conv weight of the back (normalization and head excluded)."""
    _, back = net.split_layers(latent_layer, input_size, arch)
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


class StepGraph(LayerOps):
    """Builds the step graph of the back for one latent layer (see the module docstring)."""

    def __init__(self, latent_layer: str, classes: int, preprocessing: Preprocessing,
                 input_size: int = net.DEFAULT_INPUT_SIZE, input_order: str = "BGR", si: bool = False,
                 gradients: bool = False, dw_matrix_limit: int = DW_MATRIX_LIMIT,
                 arch: net.Architecture = net.DEFAULT_ARCH) -> None:
        """`gradients` adds every gradient (`grad/<param>`) and layer output (`act/<layer>`, shape
        (C, N*H*W)) as outputs, for tests; `dw_matrix_limit` chooses the depthwise formulation; `arch`
        the width, padding rule and activation (those of the weights)."""
        net.check_latent_layer(latent_layer)
        if classes < 2:
            raise ValueError(f"the class count must be at least 2, got {classes}")
        self.latent_layer, self.classes = latent_layer, classes
        self.preprocessing, self.input_size, self.input_order = preprocessing, input_size, input_order
        self.si, self.gradients, self.dw_matrix_limit, self.arch = si, gradients, dw_matrix_limit, arch
        _, self.layers = net.split_layers(latent_layer, input_size, arch)
        self.b = _Builder()
        self.tape: List[Backward] = []
        self.pixel_constant: set = set()  # gradients of shape (C, N, 1): the same for every pixel (pool6's)
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
        self.si_params = si_parameters(latent_layer, input_size, arch) if si else []

    # -- the whole graph ----------------------------------------------------------------------
    def build(self) -> Tuple[onnx.ModelProto, StepSpec]:
        b = self.b
        F = TensorProto.FLOAT
        shape = ["batch"] + list(net.latent_shape(self.latent_layer, self.input_size, self.arch))
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

        x = self._input(latent)
        for layer in self.layers:
            x = self._layer(layer, x)
        logits_grad, loss = self._pool_head_loss(x, labels)
        grad = (logits_grad, None) if logits_grad is not None else None
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
            return [self.classes, net.features(self.arch)]
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
            c = net.latent_shape(self.latent_layer, self.input_size, self.arch)[0]
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
        # 1 / batch size, counted on the device (each one-hot row sums to exactly 1): a Shape-derived
        # count would be host memory feeding device operators, which keeps the step out of a CUDA graph
        self.inv_n = b.op("Reciprocal", [b.op("ReduceSum", [onehot], "batch/n", keepdims=0)], "batch/inv_n")
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
        # (C, N, 1), never expanded to (C, N*HW): the layer below broadcasts it in its ReLU mask product
        dx = b.op("Unsqueeze", [dpooled, b.ints("axes/two", [2])], "pool6/dx")
        self.pixel_constant.add(dx)
        return dx, loss

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
               gradients: bool = False, dw_matrix_limit: int = DW_MATRIX_LIMIT,
               arch: net.Architecture = net.DEFAULT_ARCH) -> Tuple[onnx.ModelProto, StepSpec]:
    """The training-step graph of the back above `latent_layer` (see the module docstring)."""
    return StepGraph(latent_layer, classes, preprocessing, input_size, input_order, si, gradients,
                     dw_matrix_limit, arch).build()
