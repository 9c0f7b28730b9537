"""The package's MobileNetV1 layer table and the ONNX graphs built from it, against the MobileNetV1
spec typed in `mobilenet_spec.py` from the paper (Table 1) and docs/algorithms.md.

The PyTorch oracle builds its network from that hard-coded spec too, so a wrong stride, group,
channel count or padding in `latent_replay.models.mobilenet_v1` (or in how the graph builder reads
it) can no longer be copied into the reference: it fails here, by layer name."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper, shape_inference

from latent_replay.models import graph as g
from latent_replay.models import mobilenet_v1 as net
from helpers import make_weights
import mobilenet_spec as spec


def test_every_layer_matches_the_paper():
    layers = net.conv_layers(spec.INPUT)
    assert [l.name for l in layers] == [row[0] for row in spec.SPEC]
    for layer, row in zip(layers, spec.SPEC):
        got = (layer.name, layer.kind, layer.in_channels, layer.out_channels, layer.stride, layer.in_hw,
               layer.out_hw)
        assert got == row, f"{layer.name}: table {got}, paper {row}"
        assert layer.weight_shape == spec.WEIGHT_SHAPES[layer.name], layer.name
        assert layer.kernel == (1 if row[1] == "sep" else 3), layer.name
        assert layer.group == (row[2] if row[1] == "dw" else 1), layer.name
    assert net.conv_names() == [row[0] for row in spec.SPEC]


def test_latent_layers_shapes_and_splits():
    assert net.LATENT_LAYERS == list(spec.LATENT_SHAPES)
    for name, shape in spec.LATENT_SHAPES.items():
        assert net.latent_shape(name, spec.INPUT) == shape, name
        front, back = net.split_layers(name, spec.INPUT)
        ref_front, ref_back = spec.split(name)
        assert [l.name for l in front] == [l.name for l in ref_front], name
        assert [l.name for l in back] == [l.name for l in ref_back], name


def _macs(layers, with_pool_and_head: bool, classes: int = 50) -> int:
    total = sum(int(np.prod(spec.WEIGHT_SHAPES[l.name])) * l.out_hw ** 2 for l in layers)
    return total + (1024 * 4 * 4 + 1024 * classes if with_pool_and_head else 0)


def _params(layers, head: bool, classes: int = 50) -> int:
    total = sum(int(np.prod(spec.WEIGHT_SHAPES[l.name])) + 2 * l.out_channels for l in layers)
    return total + (1024 * classes if head else 0)


def test_costs_match_algorithms_md():
    """185.4 M MAC and 3.26 M parameters in all; at conv5_4/dw: front 126.1 M MAC, back 59.3 M MAC and
    2.18 M parameters (docs/algorithms.md), from the package and from the spec alike."""
    everything = net.split_cost("data", spec.INPUT, 50)
    assert round(everything.back_macs / 1e6, 1) == spec.TOTAL_MACS_M
    assert round(everything.back_params / 1e6, 2) == spec.TOTAL_PARAMS_M
    assert everything.back_macs == _macs(spec.LAYERS, True)
    assert everything.back_params == _params(spec.LAYERS, True)
    split = net.split_cost("conv5_4/dw", spec.INPUT, 50)
    front, back = spec.split("conv5_4/dw")
    assert round(split.front_macs / 1e6, 1) == spec.CONV5_4_FRONT_MACS_M
    assert round(split.back_macs / 1e6, 1) == spec.CONV5_4_BACK_MACS_M
    assert round(split.back_params / 1e6, 2) == spec.CONV5_4_BACK_PARAMS_M
    assert (split.front_macs, split.back_macs) == (_macs(front, False), _macs(back, True))
    assert split.back_params == _params(back, True)


def _check_convs(model: onnx.ModelProto, layers) -> None:
    """Every Conv node: attributes and weight shape as the spec says, output shape by ONNX's shape
    inference at a 128x128 input, in the spec's order."""
    inferred = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    inits = {i.name: tuple(numpy_helper.to_array(i).shape) for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert [n.name for n in convs] == [l.name for l in layers]
    for node, layer in zip(convs, layers):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        k, (before, after) = layer.kernel, layer.pads
        assert list(attrs["kernel_shape"]) == [k, k], node.name
        assert list(attrs["strides"]) == [layer.stride] * 2, node.name
        assert list(attrs.get("pads", [0] * 4)) == [before, before, after, after], node.name
        assert attrs.get("group", 1) == layer.group, node.name
        assert inits[node.input[1]] == layer.weight_shape, node.name
        assert shapes[node.output[0]][1:] == [layer.out_channels, layer.out_hw, layer.out_hw], node.name


def test_inference_graph_follows_the_paper():
    _check_convs(g.build_full(make_weights(0), 50), spec.LAYERS)


@pytest.mark.parametrize("width", [0.25, 0.5, 0.75, 1.0])
def test_keras_layout_follows_keras(width):
    """Keras's MobileNet: int(filters * alpha) channels, TF 'same' paddings (0 before, 1 after on the
    stride-2 layers of even maps), as the spec types them independently."""
    _check_convs(g.build_full(make_weights(0, arch=net.keras_architecture(width)), 50), spec.keras_layers(width))


@pytest.mark.parametrize("latent_layer", ["data", "conv5_4/dw"])
def test_training_back_follows_the_paper(latent_layer):
    """The back's training graph (Batch Renormalization blocks) from the latent layer on."""
    model = g.build_back(make_weights(0), latent_layer, 50, mode="train")
    _check_convs(model, spec.split(latent_layer)[1])
