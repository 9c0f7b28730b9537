"""The layer operations of the step graph (`step_graph.py`): each builds a layer's forward in the
channel-major layout and records its hand-derived backward on the tape.

- 1x1 convolution: Y (Co, M) = W (Co, Ci) @ X (Ci, M); dX = W^T dY; dW = dY X^T (one Gemm each).
- 3x3 depthwise, small map: a batched MatMul with a per-channel (HW x HWo) matrix built from the 9
  taps and constant 0/1 shift tensors; larger maps: a sum of 9 shifted slices (zero-insertion and
  flipped windows for the input gradient of a strided layer).
- conv1 on the raw input (latent layer `data`): im2col by 9 windows and one MatMul; no input gradient.
- Batch Renormalization + scale/shift + ReLU folded per channel (see `step_graph`'s docstring).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from onnx import TensorProto, helper

from ..models import graph as G
from ..models import mobilenet_v1 as net
from .format import BRN_MOMENTUM, D_MAX, NEXT, R_MAX


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


# A gradient on the tape: (G, per-channel scale or None); the true gradient is scale (C, 1) * G, the
# scale is applied by the layer below to its small operands (weights, weight gradients) instead of
# to the full-size G.
Grad = Tuple[str, Optional[str]]
# A backward closure: gradient of the layer output -> gradient of the layer input (None: not needed).
Backward = Callable[[Grad], Optional[Grad]]


class LayerOps:
    """Forward + recorded backward of the conv blocks; mixed into `StepGraph`, which provides `b` (the
    builder), `tape`, `grads`, `activations`, `batch_stats`, `pixel_constant`, `inv_n`, `r_min`, `d_min`,
    `dw_matrix_limit`."""

    b: _Builder
    tape: List[Backward]
    grads: Dict[str, str]
    activations: List[Tuple[str, str]]
    batch_stats: List[Tuple[str, str, str]]
    pixel_constant: set
    inv_n: str
    r_min: str
    d_min: str
    dw_matrix_limit: int

    def _sep(self, layer: net.ConvLayer, x: str, need_dx: bool) -> str:
        """1x1 convolution: Y (Co, M) = W (Co, Ci) @ X (Ci, M)."""
        b, n = self.b, layer.name
        wname = G.param_names(n)["weight"]
        w = b.op("Reshape", [wname, b.shape(layer.out_channels, layer.in_channels)], f"{n}/w2d")
        y = b.op("MatMul", [w, x], f"{n}/conv")

        def backward(grad: Grad) -> Optional[Grad]:
            dy, scale = grad
            dw, wt = b.op("Gemm", [dy, x], f"{n}/dw2d", transB=1), w
            if scale is not None:  # (Co, 1) rows of dW and of W
                dw, wt = b.op("Mul", [dw, scale], f"{n}/dw2d_scaled"), b.op("Mul", [w, scale], f"{n}/w2d_scaled")
            self.grads[wname] = b.op("Reshape", [dw, b.shape(*layer.weight_shape)], f"{n}/grad_weight")
            return (b.op("Gemm", [wt, dy], f"{n}/dx", transA=1), None) if need_dx else None
        self.tape.append(backward)
        return y

    def _shift_matrix(self, layer: net.ConvLayer) -> np.ndarray:
        """(9, HW * HWo) 0/1: tap k of output pixel o reads input pixel p (the layer's padding)."""
        h, ho, s, pad = layer.in_hw, layer.out_hw, layer.stride, layer.pad_begin
        m = np.zeros((9, h * h, ho * ho), np.float32)
        for i in range(3):
            for j in range(3):
                for oy in range(ho):
                    for ox in range(ho):
                        iy, ix = s * oy + i - pad, s * ox + j - pad
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

        def backward(grad: Grad) -> Optional[Grad]:
            dy, scale = grad
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
            if scale is not None:
                dtaps = b.op("Mul", [dtaps, scale], f"{n}/dtaps_scaled")
            self.grads[wname] = b.op("Reshape", [dtaps, b.shape(*layer.weight_shape)], f"{n}/grad_weight")
            if not need_dx:
                return None
            # M^T (C, HWo, HW) straight from the (scaled) taps and the transposed shifts
            taps_t = taps if scale is None else b.op("Mul", [taps, scale], f"{n}/taps_scaled")
            s_t = b.g.const(f"{n}/shifts_mt", shifts.reshape(9, hw, hwo).transpose(0, 2, 1).reshape(9, -1).copy())
            mt = b.op("Reshape", [b.op("MatMul", [taps_t, s_t], f"{n}/mt_flat"), b.shape(c, hwo, hw)], f"{n}/mt")
            dx3 = b.op("MatMul", [dy3, mt], f"{n}/dx3")
            return b.op("Reshape", [dx3, b.shape(c, -1)], f"{n}/dx"), None
        self.tape.append(backward)
        return y

    def _pad_hw(self, layer: net.ConvLayer, x4: str, name: str) -> str:
        """A (C, N, H, W) map padded with the layer's zeros before and after H and W."""
        pb, pe = layer.pad_begin, layer.pad_end
        return self.b.op("Pad", [x4, self.b.ints(f"pads/hw{pb}{pe}", [0, 0, pb, pb, 0, 0, pe, pe])], name)

    def _taps(self, layer: net.ConvLayer, padded: str, tag: str) -> List[str]:
        """The 9 (C, N, Ho, Wo) windows of a padded (C, N, H+pb+pe, W+pb+pe) map that tap (i, j) reads."""
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
        x4 = b.op("Reshape", [x, b.shape(c, -1, h, h)], f"{n}/x4")
        xp = self._pad_hw(layer, x4, f"{n}/xpad")
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

        def backward(grad: Grad) -> Optional[Grad]:
            dy, scale = grad
            dy4 = b.op("Reshape", [dy, b.shape(c, -1, ho, ho)], f"{n}/dy4")
            sums = []
            for k in range(9):
                prod = b.op("Mul", [dy4, windows[k]], f"{n}/dwprod{k}")
                sums.append(b.op("ReduceSum", [prod, b.ints("axes/nhw", [1, 2, 3])], f"{n}/dwsum{k}", keepdims=0))
            stacked = b.op("Concat", [b.op("Unsqueeze", [s_, b.ints("axes/one", [1])], f"{n}/dwcol{k}")
                                      for k, s_ in enumerate(sums)], f"{n}/dtaps", axis=1)
            back_taps = per_tap
            if scale is not None:
                stacked = b.op("Mul", [stacked, scale], f"{n}/dtaps_scaled")
                scale4 = b.op("Reshape", [scale, b.shape(c, 1, 1, 1)], f"{n}/scale4")
                back_taps = [b.op("Mul", [t, scale4], f"{n}/w{k}_scaled") for k, t in enumerate(per_tap)]
            self.grads[wname] = b.op("Reshape", [stacked, b.shape(*layer.weight_shape)], f"{n}/grad_weight")
            if not need_dx:
                return None
            # dX[p] = sum over taps i of w[i] * U[p + pb - i], U the (zero-inserted) dY in padded input
            # coordinates (dY[a] at s a); U padded by 2 - pb before and to H + pb after, so that tap
            # (i, j) reads the window that starts at (2 - i, 2 - j)
            up, s = dy4, layer.stride
            if s == 2:  # zero-insertion: dY[a, b] lands at (2a, 2b)
                six = b.op("Reshape", [dy4, b.shape(c, -1, ho, 1, ho, 1)], f"{n}/dy6")
                six = b.op("Pad", [six, b.ints("pads/zero_insert", [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1])],
                           f"{n}/dy6pad")
                up = b.op("Reshape", [six, b.shape(c, -1, 2 * ho, 2 * ho)], f"{n}/dyup")
            before, after = 2 - layer.pad_begin, h + layer.pad_begin - s * ho
            assert before >= 0 and after >= 0, (n, before, after)
            upp = b.op("Pad", [up, b.ints(f"pads/back{before}{after}", [0, 0, before, before, 0, 0, after, after])],
                       f"{n}/dyuppad")
            acc2 = None
            for i in range(3):
                for j in range(3):
                    starts = b.ints(f"{n}/back_starts_{i}{j}", [2 - i, 2 - j])
                    ends = b.ints(f"{n}/back_ends_{i}{j}", [2 - i + h, 2 - j + h])
                    win = b.op("Slice", [upp, starts, ends, b.ints("axes/hw", [2, 3])], f"{n}/bwin{i}{j}")
                    term = b.op("Mul", [win, back_taps[i * 3 + j]], f"{n}/bterm{i}{j}")
                    acc2 = term if acc2 is None else b.op("Add", [acc2, term], f"{n}/bacc{i}{j}")
            return b.op("Reshape", [acc2, b.shape(c, -1)], f"{n}/dx"), None
        self.tape.append(backward)
        return y

    def _conv1(self, layer: net.ConvLayer, x: str) -> str:
        """The full 3x3 convolution on the raw input (latent layer `data`): im2col by 9 windows + Gemm.
        Its input needs no gradient."""
        b, n = self.b, layer.name
        h = layer.in_hw
        wname = G.param_names(n)["weight"]
        x4 = b.op("Reshape", [x, b.shape(layer.in_channels, -1, h, h)], f"{n}/x4")
        xp = self._pad_hw(layer, x4, f"{n}/xpad")
        windows = [b.op("Unsqueeze", [w, b.ints("axes/one", [1])], f"{n}/col{k}")
                   for k, w in enumerate(self._taps(layer, xp, "win"))]
        cols = b.op("Reshape", [b.op("Concat", windows, f"{n}/cols5", axis=1), b.shape(layer.in_channels * 9, -1)],
                    f"{n}/cols")
        w = b.op("Reshape", [wname, b.shape(layer.out_channels, layer.in_channels * 9)], f"{n}/w2d")
        y = b.op("MatMul", [w, cols], f"{n}/conv")

        def backward(grad: Grad) -> Optional[Grad]:
            dy, scale = grad
            dw = b.op("Gemm", [dy, cols], f"{n}/dw2d", transB=1)
            if scale is not None:
                dw = b.op("Mul", [dw, scale], f"{n}/dw2d_scaled")
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
        r = self._clip(b.op("Div", [sigma_b, sigma], f"{n}/r_raw"), self.r_min, R_MAX, f"{n}/r")
        d = self._clip(b.op("Div", [b.op("Sub", [mu_b, mu], f"{n}/d_shift"), sigma], f"{n}/d_raw"),
                       self.d_min, D_MAX, f"{n}/d")
        gamma = b.op("Reshape", [p["gamma"], col], f"{n}/gamma2d")
        beta = b.op("Reshape", [p["beta"], col], f"{n}/beta2d")
        gr = b.op("Mul", [gamma, r], f"{n}/gamma_r")
        a = b.op("Div", [gr, sigma_b], f"{n}/A")
        shift = b.op("Add", [b.op("Mul", [gamma, d], f"{n}/gamma_d"), beta], f"{n}/B")
        out = self._activation(layer, self._affine(yc, a, shift, c, f"{n}/z"))
        flat = b.shape(c)
        self.activations.append((n, out))
        self.batch_stats.append((n, b.op("Reshape", [mu_b, flat], f"{n}/batch_mean"),
                                 b.op("Reshape", [var_b, flat], f"{n}/batch_var")))
        self._running_stats(layer, mu_b, sigma_b)

        def backward(grad: Grad) -> Grad:
            dout, scale = grad
            assert scale is None, "a BRN layer takes an unscaled gradient"
            mask = self._activation_mask(layer, out)
            if dout in self.pixel_constant:  # (C, N, 1) against the (C, N, HW) mask: a broadcast
                mask3 = b.op("Reshape", [mask, b.shape(c, -1, layer.out_hw ** 2)], f"{n}/mask3")
                dz = b.op("Reshape", [b.op("Mul", [mask3, dout], f"{n}/dz3"), b.shape(c, -1)], f"{n}/dz")
            else:
                dz = b.op("Mul", [dout, mask], f"{n}/dz")
            s1 = b.op("ReduceSum", [dz, axes], f"{n}/s1", keepdims=1)
            s2 = b.op("ReduceSum", [b.op("Mul", [dz, yc], f"{n}/dz_yc"), axes], f"{n}/s2", keepdims=1)
            inv_m = b.op("Mul", [self.inv_n, b.scalar(1.0 / layer.out_hw ** 2)], f"{n}/inv_m")
            # dy = A (dz + K2' yc + K3'), K2 = A K2', K3 = A K3'; A goes down the tape as the scale
            k3 = b.op("Neg", [b.op("Mul", [s1, inv_m], f"{n}/s1_m")], f"{n}/k3")
            k2 = b.op("Neg", [b.op("Div", [b.op("Mul", [s2, inv_m], f"{n}/s2_m"),
                                          b.op("Mul", [sigma_b, sigma_b], f"{n}/var_b_eps")], f"{n}/s2_mv")],
                      f"{n}/k2")
            dgamma = b.op("Add", [b.op("Mul", [r, b.op("Div", [s2, sigma_b], f"{n}/s2_sigma")], f"{n}/r_s2"),
                                  b.op("Mul", [d, s1], f"{n}/d_s1")], f"{n}/dgamma2d")
            self.grads[p["gamma"]] = b.op("Reshape", [dgamma, flat], f"{n}/grad_gamma")
            self.grads[p["beta"]] = b.op("Reshape", [s1, flat], f"{n}/grad_beta")
            return b.op("Add", [dz, self._affine(yc, k2, k3, c, f"{n}/yc_k2_k3")], f"{n}/dy"), a
        self.tape.append(backward)
        return out

    def _activation(self, layer: net.ConvLayer, z: str) -> str:
        """ReLU, or ReLU6 as Clip(0, 6) with constant bounds (initializers, which the CUDA provider
        reads once; computed bounds are what keep a step out of a CUDA graph, see `_clip`)."""
        b = self.b
        if layer.activation == "relu6":
            return b.op("Clip", [z, b.scalar(0.0), b.scalar(net.RELU6_MAX)], layer.name)
        return b.op("Relu", [z], layer.name)

    def _activation_mask(self, layer: net.ConvLayer, out: str) -> str:
        """The activation's 0/1 derivative from its output: 1 where 0 < out (< 6 for ReLU6).

        out >= 0, so HardSigmoid = min(1, 3e38 t) is 0 exactly at t = 0 and 1 for every normal positive
        float (the session flushes denormals); Sign is ~8x slower. ReLU6: t = out (6 - out), which is 0
        exactly where the clip cut (out = 0 or 6) and at least ~3e-6 strictly inside."""
        b, n = self.b, layer.name
        t = out
        if layer.activation == "relu6":
            t = b.op("Mul", [out, b.op("Sub", [b.scalar(net.RELU6_MAX), out], f"{n}/headroom")], f"{n}/inside")
        return b.op("HardSigmoid", [t], f"{n}/mask", alpha=3e38, beta=0.0)

    def _clip(self, x: str, low: str, high: str, name: str) -> str:
        """min(max(x, low), high) with bounds computed on the device: Clip would do it in one node, but
        the CUDA provider reads Clip's bounds from host memory, and the copies it would insert for
        r_min = 1 / r_max keep the step from being captured as a CUDA graph."""
        b = self.b
        return b.op("Min", [b.op("Max", [x, low], f"{name}/low"), high], name)

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
