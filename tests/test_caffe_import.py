"""Caffe .caffemodel import: both normalization variants, heads, legacy V1 files, bad files."""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from helpers import make_weights
from latent_replay.models import mobilenet_v1 as net
from latent_replay.models.caffe import (
    CaffeLayer, encode_caffemodel, load_caffemodel, parse_caffemodel, read_caffemodel, weights_to_caffe_layers, write_caffemodel,
)
from latent_replay.models.load import WeightsError, load_weights
from latent_replay.models.weights import CAFFE_PREPROCESSING


def _assert_same(loaded, expected, head=True):
    for layer in net.conv_layers():
        got, want = loaded.convs[layer.name], expected.convs[layer.name]
        assert got.weight.shape == layer.weight_shape
        for key in ("weight", "mean", "var", "gamma", "beta"):
            np.testing.assert_allclose(getattr(got, key), getattr(want, key), rtol=1e-6, atol=1e-7,
                                       err_msg=f"{layer.name} {key}")
        assert got.eps == pytest.approx(want.eps)
    if head:
        np.testing.assert_array_equal(loaded.head_weight, expected.head_weight)
    assert loaded.preprocessing == CAFFE_PREPROCESSING


@pytest.fixture(scope="module")
def weights():
    w = make_weights(seed=3, classes=50)
    w.head_bias = np.linspace(-1, 1, 50).astype(np.float32)
    for i, p in enumerate(w.convs.values()):
        p.eps = 1e-3 if i % 2 else 1e-5  # eps must come from batch_norm_param, per layer
    return w


@pytest.mark.parametrize("norm,suffix", [("BatchNorm", "/bn"), ("BatchReNorm", "/brn")])
def test_roundtrip_both_normalizations(tmp_path, weights, norm, suffix):
    layers = weights_to_caffe_layers(weights, norm=norm, count=37.0)
    assert any(l.name == "conv5_4/dw" + suffix for l in layers)  # the seed's layer names
    path = write_caffemodel(tmp_path / "m.caffemodel", layers)
    loaded = load_caffemodel(path)
    _assert_same(loaded, weights)
    np.testing.assert_array_equal(loaded.head_bias, weights.head_bias)
    assert loaded.notes["normalization"] == norm
    assert loaded.source.startswith("caffe:")


def test_statistics_are_sums_divided_by_count(tmp_path, weights):
    layers = weights_to_caffe_layers(weights, norm="BatchReNorm", count=1.0)
    mean_sum = np.arange(32, dtype=np.float32)
    var_sum = np.full(32, 8.0, np.float32)
    brn = next(l for l in layers if l.name == "conv1/brn")
    brn.blobs[:3] = [mean_sum, var_sum, np.array([4.0], np.float32)]
    loaded = load_caffemodel(write_caffemodel(tmp_path / "m.caffemodel", layers))
    np.testing.assert_allclose(loaded.convs["conv1"].mean, mean_sum / 4)
    np.testing.assert_allclose(loaded.convs["conv1"].var, var_sum / 4)


def test_without_head_and_without_scale_bias(tmp_path, weights):
    layers = weights_to_caffe_layers(weights, head=False)
    scale = next(l for l in layers if l.name == "conv2_1/dw/scale")
    scale.blobs = scale.blobs[:1]  # Scale without bias_term
    loaded = load_caffemodel(write_caffemodel(tmp_path / "m.caffemodel", layers))
    assert loaded.head_weight is None and loaded.head_bias is None
    np.testing.assert_array_equal(loaded.convs["conv2_1/dw"].beta, 0)
    np.testing.assert_array_equal(loaded.convs["conv2_1/dw"].gamma, weights.convs["conv2_1/dw"].gamma)


def test_imagenet_fc7_inner_product_head(tmp_path, weights):
    layers = weights_to_caffe_layers(weights, head=False)
    fc = np.random.default_rng(0).standard_normal((1000, 1024)).astype(np.float32)
    layers.append(CaffeLayer("fc7", "InnerProduct", [fc, np.ones(1000, np.float32)]))
    loaded = load_caffemodel(write_caffemodel(tmp_path / "m.caffemodel", layers))
    np.testing.assert_array_equal(loaded.head_weight, fc)
    assert loaded.head_for(50)[2] is False  # a 1000-class head is not reused for 50 classes


@pytest.mark.parametrize("norm", ["BatchNorm", "BatchReNorm"])
def test_legacy_v1_layers(tmp_path, weights, norm):
    path = write_caffemodel(tmp_path / "v1.caffemodel", weights_to_caffe_layers(weights, norm=norm, count=2.0),
                            legacy=True)
    layers = read_caffemodel(path)
    assert next(l for l in layers if l.name == "conv1").type == "Convolution"
    assert layers[0].blobs[0].shape == (32, 3, 3, 3)  # from legacy num/channels/height/width
    loaded = load_caffemodel(path)
    for layer in net.conv_layers():  # V1 has no batch_norm_param: default eps
        assert loaded.convs[layer.name].eps == pytest.approx(1e-5)
        np.testing.assert_allclose(loaded.convs[layer.name].mean, weights.convs[layer.name].mean, rtol=1e-6)
    np.testing.assert_array_equal(loaded.head_weight, weights.head_weight)


def _caffe_proto_classes():
    """A real protobuf implementation of the caffe.proto subset, to check the hand-written decoder."""
    f = descriptor_pb2.FileDescriptorProto(name="caffe_subset.proto", package="caffe", syntax="proto2")
    T = descriptor_pb2.FieldDescriptorProto
    rep, opt = T.LABEL_REPEATED, T.LABEL_OPTIONAL

    def msg(name, *fields):
        m = f.message_type.add(name=name)
        for fname, number, ftype, label, type_name, packed in fields:
            fd = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                fd.type_name = ".caffe." + type_name
            if packed:
                fd.options.packed = True

    msg("BlobShape", ("dim", 1, T.TYPE_INT64, rep, None, True))
    msg("BlobProto", ("num", 1, T.TYPE_INT32, opt, None, False), ("channels", 2, T.TYPE_INT32, opt, None, False),
        ("height", 3, T.TYPE_INT32, opt, None, False), ("width", 4, T.TYPE_INT32, opt, None, False),
        ("data", 5, T.TYPE_FLOAT, rep, None, True), ("shape", 7, T.TYPE_MESSAGE, opt, "BlobShape", False),
        ("double_data", 8, T.TYPE_DOUBLE, rep, None, True))
    msg("BatchNormParameter", ("eps", 3, T.TYPE_FLOAT, opt, None, False))
    msg("LayerParameter", ("name", 1, T.TYPE_STRING, opt, None, False), ("type", 2, T.TYPE_STRING, opt, None, False),
        ("blobs", 7, T.TYPE_MESSAGE, rep, "BlobProto", False),
        ("batch_norm_param", 139, T.TYPE_MESSAGE, opt, "BatchNormParameter", False))
    msg("V1LayerParameter", ("name", 4, T.TYPE_STRING, opt, None, False), ("type", 5, T.TYPE_INT32, opt, None, False),
        ("blobs", 6, T.TYPE_MESSAGE, rep, "BlobProto", False))
    msg("NetParameter", ("name", 1, T.TYPE_STRING, opt, None, False),
        ("layers", 2, T.TYPE_MESSAGE, rep, "V1LayerParameter", False),
        ("layer", 100, T.TYPE_MESSAGE, rep, "LayerParameter", False))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe.NetParameter"))


def test_decoder_matches_real_protobuf_encoding():
    NetParameter = _caffe_proto_classes()
    netp = NetParameter(name="x")
    conv = netp.layer.add(name="conv1", type="Convolution")
    conv.blobs.add(data=[1.5, -2.0, 3.25, 4.0], shape={"dim": [2, 2]})
    bn = netp.layer.add(name="conv1/bn", type="BatchNorm")
    bn.blobs.add(double_data=[1.0, 2.0])  # double data, no shape
    bn.batch_norm_param.eps = 0.25
    old = netp.layers.add(name="fc", type=14)
    old.blobs.add(num=1, channels=1, height=2, width=3, data=[0, 1, 2, 3, 4, 5])
    layers = sorted(parse_caffemodel(netp.SerializeToString()), key=lambda l: l.name)  # protobuf writes field 2 first
    assert [(l.name, l.type) for l in layers] == [("conv1", "Convolution"), ("conv1/bn", "BatchNorm"),
                                                   ("fc", "InnerProduct")]
    np.testing.assert_array_equal(layers[0].blobs[0], [[1.5, -2.0], [3.25, 4.0]])
    np.testing.assert_array_equal(layers[1].blobs[0], [1.0, 2.0])
    assert layers[1].eps == 0.25
    np.testing.assert_array_equal(layers[2].blobs[0], np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3))
    # and our encoder produces what real protobuf reads back
    ours = NetParameter.FromString(encode_caffemodel(layers))
    assert ours.layer[0].name == "conv1" and list(ours.layer[0].blobs[0].shape.dim) == [2, 2]
    assert list(ours.layer[0].blobs[0].data) == [1.5, -2.0, 3.25, 4.0]


def test_unpacked_float_data_is_accepted():
    NetParameter = _caffe_proto_classes()
    netp = NetParameter()
    netp.layer.add(name="a", type="Scale").blobs.add(data=[1.0, 2.0, 3.0])
    packed = netp.SerializeToString()
    blob = b"".join(b"\x2d" + np.float32(v).tobytes() for v in (1.0, 2.0, 3.0))  # field 5, wire 5 each
    layer = b"\x0a\x01a" + b"\x12\x05Scale" + b"\x3a" + bytes([len(blob)]) + blob
    unpacked = b"\xa2\x06" + bytes([len(layer)]) + layer  # field 100
    for raw in (packed, unpacked):
        np.testing.assert_array_equal(parse_caffemodel(raw)[0].blobs[0], [1.0, 2.0, 3.0])


def test_missing_layer_is_named(tmp_path, weights):
    layers = [l for l in weights_to_caffe_layers(weights) if l.name != "conv5_4/dw"]
    with pytest.raises(WeightsError, match="conv5_4/dw"):
        load_caffemodel(write_caffemodel(tmp_path / "m.caffemodel", layers))


def test_wrong_shape_is_reported(tmp_path, weights):
    layers = weights_to_caffe_layers(weights)
    conv = next(l for l in layers if l.name == "conv3_1/sep")
    conv.blobs[0] = conv.blobs[0][:64]
    with pytest.raises(WeightsError, match="conv3_1/sep"):
        load_caffemodel(write_caffemodel(tmp_path / "m.caffemodel", layers))


def test_truncated_and_garbage_files(tmp_path, weights):
    good = write_caffemodel(tmp_path / "good.caffemodel", weights_to_caffe_layers(weights))
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match="cut.caffemodel"):
        load_weights(str(cut))
    junk = tmp_path / "junk.caffemodel"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(WeightsError, match="junk.caffemodel"):
        load_weights(str(junk))
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(str(tmp_path / "missing.caffemodel"))


def test_load_weights_dispatch_and_preprocessing_override(tmp_path, weights):
    path = write_caffemodel(tmp_path / "m.caffemodel", weights_to_caffe_layers(weights))
    assert load_weights(str(path)).preprocessing.name == "caffe"
    assert load_weights(str(path), preprocessing="imagenet").preprocessing.name == "imagenet"
    with pytest.raises(WeightsError, match="preprocessing"):
        load_weights(str(path), preprocessing="bogus")
    other = tmp_path / "m.weights"
    other.write_bytes(b"x")
    with pytest.raises(WeightsError, match="format"):
        load_weights(str(other))


@pytest.mark.parametrize("norm", ["BatchNorm", "BatchReNorm"])
def test_caffemodel_gives_the_same_onnx_outputs_as_its_arrays(tmp_path, norm):
    """Arrays -> .caffemodel -> import -> ONNX: the network computes what the arrays compute."""
    import onnxruntime as ort

    from latent_replay.models.graph import build_full
    from helpers import make_frames

    original = make_weights(seed=11, preprocessing=CAFFE_PREPROCESSING, classes=50)
    path = tmp_path / "MobileNetV1.caffemodel"
    write_caffemodel(path, weights_to_caffe_layers(original, norm=norm, count=999.0))
    imported = load_caffemodel(path)
    frames = make_frames(4, seed=12)

    def run(weights):
        session = ort.InferenceSession(build_full(weights, 50).SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"frames": frames})[0]

    expected, got = run(original), run(imported)
    assert np.ptp(expected) > 1e-3
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-5
