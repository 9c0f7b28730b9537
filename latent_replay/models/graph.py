"""MobileNetV1 as ONNX graphs built from numpy weights with `onnx.helper` (no PyTorch, no ORT).

Three graphs come out of one layer walk:
- the frozen **front** (uint8 frames -> latent layer), normalization folded into the convolutions;
- the trainable **back** in `train` mode (latent -> logits) with Batch Renormalization;
- the same back in `eval` mode, normalizing with the carried running statistics.
Node and value names are the Caffe layer names: a layer's output value is called after the layer.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import mobilenet_v1 as net
from .weights import MobileNetWeights

OPSET = 17
IR_VERSION = 8  # ORT 1.19 loads IR <= 10; 8 keeps the models loadable by older runtimes too

FRAMES_INPUT = "frames"
LATENT_INPUT = "latent"
LOGITS = net.HEAD
R_MAX_INPUT = "brn_r_max"
D_MAX_INPUT = "brn_d_max"
BRN_EPS = 1e-5
R_MIN, D_MIN = "brn/r_min", "brn/d_min"  # 1 / r_max and -d_max, computed once per graph


def param_names(layer: str) -> Dict[str, str]:
    """Names of a back conv block's arrays in the artifacts (trainable and carried statistics)."""
    return {
        "weight": f"{layer}/weight",
        "gamma": f"{layer}/gamma",
        "beta": f"{layer}/beta",
        "running_mean": f"{layer}/running_mean",
        "running_std": f"{layer}/running_std",
    }


HEAD_WEIGHT = f"{net.HEAD}/weight"


def batch_stat_names(layer: str) -> Tuple[str, str]:
    """Training-graph outputs that carry a BRN layer's batch mean and (biased) batch variance."""
    return f"{layer}/batch_mean", f"{layer}/batch_var"


class _Graph:
    """Accumulates nodes and initializers; a thin convenience over onnx.helper."""

    def __init__(self) -> None:
        self.nodes: List[onnx.NodeProto] = []
        self.inits: Dict[str, onnx.TensorProto] = {}
        self.inputs: List[onnx.ValueInfoProto] = []
        self.outputs: List[onnx.ValueInfoProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(np.asarray(value), name)
        return name

    def node(self, op: str, inputs: Sequence[str], outputs: Sequence[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name, **attrs))
        return outputs[0]

    def model(self, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs, list(self.inits.values()))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="latent-replay")
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model)
        return model


def _preprocess(g: _Graph, weights: MobileNetWeights, input_order: str = "BGR") -> str:
    """uint8 NHWC frames in `input_order` -> float NCHW network input, as the weights expect it."""
    pre = weights.preprocessing
    x = g.node("Cast", [FRAMES_INPUT], ["data/float"], "data/cast", to=TensorProto.FLOAT)
    if input_order != pre.channel_order:
        idx = g.const("data/channel_swap", np.array([2, 1, 0], np.int64))
        x = g.node("Gather", [x, idx], ["data/reordered"], "data/reorder", axis=3)
    mean = g.const("data/mean", np.asarray(pre.mean, np.float32).reshape(1, 1, 1, 3))
    inv_std = g.const("data/inv_std", (1.0 / np.asarray(pre.std, np.float32)).reshape(1, 1, 1, 3))
    x = g.node("Sub", [x, mean], ["data/centered"], "data/sub_mean")
    x = g.node("Mul", [x, inv_std], ["data/scaled"], "data/div_std")
    return g.node("Transpose", [x], [net.DATA], "data/nchw", perm=[0, 3, 1, 2])


def _conv(g: _Graph, layer: net.ConvLayer, x: str, weight: str, bias: Optional[str]) -> str:
    inputs = [x, weight] + ([bias] if bias else [])
    return g.node("Conv", inputs, [f"{layer.name}/conv"], layer.name,
                  kernel_shape=[layer.kernel] * 2, strides=[layer.stride] * 2,
                  pads=layer.pads, group=layer.group)


def activation(g: _Graph, layer: net.ConvLayer, x: str, out: str) -> str:
    """The layer's activation: Relu, or Clip(0, 6) for ReLU6 (constant bounds, which every provider
    takes from an initializer)."""
    if layer.activation == "relu6":
        low = g.const("const/relu6_min", np.array(0.0, np.float32))
        high = g.const("const/relu6_max", np.array(net.RELU6_MAX, np.float32))
        return g.node("Clip", [x, low, high], [out], f"{layer.name}/relu6")
    return g.node("Relu", [x], [out], f"{layer.name}/relu")


def _front_block(g: _Graph, layer: net.ConvLayer, x: str, weights: MobileNetWeights) -> str:
    w, b = weights.convs[layer.name].folded()
    y = _conv(g, layer, x, g.const(f"{layer.name}/weight", w), g.const(f"{layer.name}/bias", b))
    return activation(g, layer, y, layer.name)


def _channel(g: _Graph, name: str, x: str) -> str:
    """A per-channel vector reshaped to (1, C, 1, 1) for broadcasting against NCHW."""
    shape = g.const("shape/channel", np.array([1, -1, 1, 1], np.int64))
    return g.node("Reshape", [x, shape], [f"{name}/4d"], f"{name}/reshape")


def _back_block(g: _Graph, layer: net.ConvLayer, x: str, mode: str, batch_stats: List[str]) -> str:
    """conv -> Batch Renormalization (train) or running-statistics normalization (eval) -> scale/shift -> ReLU."""
    p = param_names(layer.name)
    y = _conv(g, layer, x, p["weight"], None)
    n = layer.name
    gamma, beta = _channel(g, p["gamma"], p["gamma"]), _channel(g, p["beta"], p["beta"])
    mu, sigma = _channel(g, p["running_mean"], p["running_mean"]), _channel(g, p["running_std"], p["running_std"])
    if mode == "eval":
        centered = g.node("Sub", [y, mu], [f"{n}/centered"], f"{n}/sub_running_mean")
        normed = g.node("Div", [centered, sigma], [f"{n}/normed"], f"{n}/div_running_std")
    else:
        # xhat = (x - mu_B) / sqrt(var_B + eps) with its exact gradient (BatchNormalization's output 0,
        # scale 1, shift 0). Its outputs 1 and 2 (with momentum 0: the batch mean and variance) have no
        # gradient in ORT's gradient builder, so r and d computed from them are constants in backprop,
        # exactly as Batch Renormalization prescribes.
        # Per-layer constants: ORT names gradients after their inputs, so they cannot be shared.
        ones = g.const(f"{n}/brn_ones", np.ones(layer.out_channels, np.float32))
        zeros = g.const(f"{n}/brn_zeros", np.zeros(layer.out_channels, np.float32))
        mean_out, var_out = batch_stat_names(n)
        g.node("BatchNormalization", [y, ones, zeros, zeros, ones], [f"{n}/xhat", mean_out, var_out],
               f"{n}/brn_batch_norm", epsilon=BRN_EPS, momentum=0.0, training_mode=1)
        batch_stats += [mean_out, var_out]
        eps = g.const("const/brn_eps", np.array(BRN_EPS, np.float32))
        var_eps = g.node("Add", [var_out, eps], [f"{n}/batch_var_eps"], f"{n}/add_eps")
        batch_std = g.node("Sqrt", [var_eps], [f"{n}/batch_std"], f"{n}/sqrt")
        r_raw = g.node("Div", [batch_std, p["running_std"]], [f"{n}/r_raw"], f"{n}/r_div")
        r = g.node("Clip", [r_raw, R_MIN, R_MAX_INPUT], [f"{n}/r"], f"{n}/r_clip")
        shift = g.node("Sub", [mean_out, p["running_mean"]], [f"{n}/d_shift"], f"{n}/d_sub")
        d_raw = g.node("Div", [shift, p["running_std"]], [f"{n}/d_raw"], f"{n}/d_div")
        d = g.node("Clip", [d_raw, D_MIN, D_MAX_INPUT], [f"{n}/d"], f"{n}/d_clip")
        scaled = g.node("Mul", [f"{n}/xhat", _channel(g, f"{n}/r", r)], [f"{n}/xhat_r"], f"{n}/mul_r")
        normed = g.node("Add", [scaled, _channel(g, f"{n}/d", d)], [f"{n}/normed"], f"{n}/add_d")
    y = g.node("Mul", [normed, gamma], [f"{n}/scaled"], f"{n}/scale")
    y = g.node("Add", [y, beta], [f"{n}/shifted"], f"{n}/shift")
    return activation(g, layer, y, n)


def _pool_and_head(g: _Graph, x: str, head: Optional[str], bias: Optional[str] = None) -> str:
    p = g.node("GlobalAveragePool", [x], ["pool6/4d"], net.POOL)
    p = g.node("Flatten", [p], [net.POOL], "pool6/flatten", axis=1)
    if head is None:
        return p
    return g.node("Gemm", [p, head] + ([bias] if bias else []), [LOGITS], net.HEAD, transB=1)


def build_front(weights: MobileNetWeights, latent_layer: str, input_size: int = net.DEFAULT_INPUT_SIZE,
                input_order: str = "BGR") -> onnx.ModelProto:
    """Inference graph: uint8 NHWC frames -> the latent layer's output (after its ReLU)."""
    net.check_latent_layer(latent_layer)
    front, _ = net.split_layers(latent_layer, input_size, weights.arch)
    g = _Graph()
    g.inputs.append(helper.make_tensor_value_info(FRAMES_INPUT, TensorProto.UINT8,
                                                  ["batch", input_size, input_size, 3]))
    if latent_layer == net.DATA:
        out = g.node("Identity", [FRAMES_INPUT], [net.DATA], "data/identity")
        g.outputs.append(helper.make_tensor_value_info(out, TensorProto.UINT8, ["batch", input_size, input_size, 3]))
        return g.model("mobilenet_v1_front")
    x = _preprocess(g, weights, input_order)
    for layer in front:
        x = _front_block(g, layer, x, weights)
    if latent_layer == net.POOL:
        x = _pool_and_head(g, x, None)
    shape = ["batch"] + list(net.latent_shape(latent_layer, input_size, weights.arch))
    g.outputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, shape))
    return g.model("mobilenet_v1_front")


def back_parameters(weights: MobileNetWeights, latent_layer: str, classes: int,
                    input_size: int = net.DEFAULT_INPUT_SIZE) -> Tuple[Dict[str, np.ndarray], List[str], List[str]]:
    """The back's arrays by artifact name, the trainable names and the carried (frozen) names."""
    _, back = net.split_layers(latent_layer, input_size, weights.arch)
    arrays: Dict[str, np.ndarray] = {}
    trainable: List[str] = []
    carried: List[str] = []
    for layer in back:
        c = weights.convs[layer.name]
        p = param_names(layer.name)
        arrays[p["weight"]] = c.weight.astype(np.float32)
        arrays[p["gamma"]] = c.gamma.astype(np.float32)
        arrays[p["beta"]] = c.beta.astype(np.float32)
        arrays[p["running_mean"]] = c.mean.astype(np.float32)
        arrays[p["running_std"]] = np.sqrt(c.var + c.eps).astype(np.float32)
        trainable += [p["weight"], p["gamma"], p["beta"]]
        carried += [p["running_mean"], p["running_std"]]
    head, _, _ = weights.head_for(classes)
    arrays[HEAD_WEIGHT] = head
    trainable.append(HEAD_WEIGHT)
    return arrays, trainable, carried


def build_back(weights: MobileNetWeights, latent_layer: str, classes: int, mode: str = "train",
               input_size: int = net.DEFAULT_INPUT_SIZE, input_order: str = "BGR",
               params_as_inputs: bool = False) -> onnx.ModelProto:
    """Back graph from the latent input to the mid_fc7 logits; parameters are initializers, or graph
    inputs after the latent one (`params_as_inputs`: the engine feeds its current state).

    `train`: Batch Renormalization with r_max/d_max as scalar graph inputs, batch statistics as extra
    outputs. `eval`: normalization by the carried running statistics.
    """
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', not {mode!r}")
    if classes < 2:
        raise ValueError(f"the class count must be at least 2, got {classes}")
    net.check_latent_layer(latent_layer)
    _, back = net.split_layers(latent_layer, input_size, weights.arch)
    g = _Graph()
    arrays, _, _ = back_parameters(weights, latent_layer, classes, input_size)
    shape = ["batch"] + list(net.latent_shape(latent_layer, input_size, weights.arch))
    if latent_layer == net.DATA:
        g.inputs.append(helper.make_tensor_value_info(LATENT_INPUT, TensorProto.UINT8, shape))
        g.nodes.append(helper.make_node("Identity", [LATENT_INPUT], [FRAMES_INPUT], name="latent/identity"))
        x = _preprocess(g, weights, input_order)
    else:
        g.inputs.append(helper.make_tensor_value_info(LATENT_INPUT, TensorProto.FLOAT, shape))
        x = LATENT_INPUT
    for name, arr in arrays.items():
        if params_as_inputs:
            g.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(arr.shape)))
        else:
            g.const(name, arr)
    batch_stats: List[str] = []
    if mode == "train" and back:
        for name in (R_MAX_INPUT, D_MAX_INPUT):
            g.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, []))
        g.node("Reciprocal", [R_MAX_INPUT], [R_MIN], R_MIN)
        g.node("Neg", [D_MAX_INPUT], [D_MIN], D_MIN)
    for layer in back:
        x = _back_block(g, layer, x, mode, batch_stats)
    if latent_layer == net.POOL:
        x = g.node("Gemm", [x, HEAD_WEIGHT], [LOGITS], net.HEAD, transB=1)
    else:
        x = _pool_and_head(g, x, HEAD_WEIGHT)
    g.outputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", classes]))
    for name in batch_stats:
        c = next(l.out_channels for l in back if name.startswith(l.name + "/"))
        g.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [c]))
    return g.model(f"mobilenet_v1_back_{mode}")


def build_full(weights: MobileNetWeights, classes: int, input_size: int = net.DEFAULT_INPUT_SIZE,
               input_order: str = "BGR") -> onnx.ModelProto:
    """The whole network for inference with normalization folded (frames -> logits), the imported
    head's bias included (`predict --weights`: the ImageNet classifier as the file has it)."""
    g = _Graph()
    g.inputs.append(helper.make_tensor_value_info(FRAMES_INPUT, TensorProto.UINT8,
                                                  ["batch", input_size, input_size, 3]))
    x = _preprocess(g, weights, input_order)
    for layer in net.conv_layers(input_size, weights.arch):
        x = _front_block(g, layer, x, weights)
    head, bias, _ = weights.head_for(classes)
    x = _pool_and_head(g, x, g.const(HEAD_WEIGHT, head), g.const(f"{net.HEAD}/bias", bias))
    g.outputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", classes]))
    return g.model("mobilenet_v1")
