"""Keras/TF MobileNet import: HDF5 and TF.js files written here with the real layer names and formats,
imported, exported and run by ONNX Runtime, against the independent float64 PyTorch reference of
tests/keras_files.py (explicit asymmetric padding, ReLU6, BN eps from the file, x / 127.5 - 1 RGB).
Tolerance: 1e-4 relative to the largest value (float32 through up to 27 layers)."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

import keras_files as kf
from helpers import make_frames
from latent_replay.apps.export_model import weights_model
from latent_replay.export.exporter import export
from latent_replay.models import mobilenet_v1 as net
from latent_replay.models.load import load_weights
from latent_replay.models.weights import WeightsError
from latent_replay.runtime.engine import Front

RTOL = 1e-4
SIZE = 64  # a multiple of 32: every stride-2 layer sees an even map
# The Caffe name of the latent layer and the Keras layer it is (the 10th depthwise block).
LATENT, KERAS_LATENT = "conv5_4/dw", "conv_dw_10"


def rel_err(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module")
def frames():
    return make_frames(4, seed=3, size=SIZE)


def _logits(weights, frames):
    session = ort.InferenceSession(weights_model(weights, SIZE).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"frames": frames})[0]


def _check(path, arrays, frames, tmp_path, width, eps=kf.EPS, relu6=True):
    weights = load_weights(str(path))
    assert weights.arch == net.Architecture(width, "same", "relu6" if relu6 else "relu")
    acts, logits = kf.reference(arrays, frames, eps=eps, relu6=relu6)
    if relu6:  # the clip at 6 is exercised, not only the ReLU
        assert (acts[KERAS_LATENT] == 6.0).mean() > 0.01
    manifest = export(weights, LATENT, 1000, tmp_path / "art", input_size=SIZE)
    assert manifest.architecture == weights.arch.to_dict()
    latent = Front(tmp_path / "art")(frames)
    assert latent.shape[1] == int(512 * width)
    assert rel_err(latent, acts[KERAS_LATENT]) < RTOL
    assert rel_err(_logits(weights, frames), logits) < RTOL
    return weights


@pytest.mark.parametrize("width", net.WIDTHS)
def test_keras_h5_matches_the_reference(tmp_path, frames, width):
    """keras.applications' HDF5 layout (layer_names / weight_names, `layer/var:0` datasets, weightless
    padding and activation layers listed too), with the top; front and ImageNet logits."""
    arrays = kf.calibrated(width, frames, seed=int(width * 4))
    _check(kf.write_h5(tmp_path / f"mobilenet_{width}.h5", arrays), arrays, frames, tmp_path, width)


@pytest.mark.parametrize("width", net.WIDTHS)
def test_tfjs_matches_the_reference(tmp_path, frames, width):
    """TF.js layers format: model.json + each weight group in two shards."""
    arrays = kf.calibrated(width, frames, seed=10 + int(width * 4))
    seen = kf.write_tfjs(tmp_path / "tfjs", arrays)
    _check(tmp_path / "tfjs" / "model.json", seen, frames, tmp_path, width)


def test_tfjs_uint8_quantized_weights_are_dequantized(tmp_path, frames):
    """uint8 affine quantization (q * scale + min): the import equals the reference run on the
    dequantized arrays; class labels come from metadata.json next to model.json (the folder works too)."""
    arrays = kf.calibrated(0.5, frames, seed=5)
    labels = [f"thing {k}" for k in range(1000)]
    seen = kf.write_tfjs(tmp_path / "tfjs", arrays, quantize=True, labels=labels)
    assert rel_err(seen["conv_pw_3"]["kernel"], arrays["conv_pw_3"]["kernel"]) > 1e-4  # quantization moved it
    weights = _check(tmp_path / "tfjs", seen, frames, tmp_path, 0.5)
    assert weights.class_names == labels
    # --classes 1000 keeps the classifier and its names: `predict --artifacts` names ImageNet-style classes
    assert json.loads((tmp_path / "art" / "manifest.json").read_text())["class_names"] == labels


def test_eps_and_activation_come_from_the_file(tmp_path, frames):
    """A configuration that says epsilon 0.01 and a plain ReLU (model.json, and an HDF5 model_config)
    is followed; Keras's defaults (1e-3, ReLU6) only when the file has no configuration."""
    arrays = kf.calibrated(0.25, frames, seed=6)
    seen = kf.write_tfjs(tmp_path / "tfjs", arrays, eps=1e-2, relu6=False)
    _check(tmp_path / "tfjs", seen, frames, tmp_path / "a", 0.25, eps=1e-2, relu6=False)
    path = kf.write_h5(tmp_path / "with_config.h5", arrays, eps=1e-2)
    weights = load_weights(str(path))
    assert all(c.eps == pytest.approx(1e-2) for c in weights.convs.values()) and weights.arch.activation == "relu6"
    plain = load_weights(str(kf.write_h5(tmp_path / "plain.h5", arrays)))
    assert all(c.eps == pytest.approx(1e-3) for c in plain.convs.values())


def test_no_top_file_has_no_classifier(tmp_path, frames):
    """A `_no_top` file imports (a new head is trained); predicting with its own classifier is refused."""
    from latent_replay.apps.common import UserError

    arrays = kf.calibrated(0.75, frames, seed=7, classes=None)
    weights = load_weights(str(kf.write_h5(tmp_path / "mobilenet_7_5_128_tf_no_top.h5", arrays)))
    assert weights.head_weight is None and weights.head_for(50)[2] is False
    with pytest.raises(UserError, match="no classifier"):
        weights_model(weights, SIZE)


def test_odd_maps_are_refused_for_tf_padding(tmp_path, frames):
    """Keras versions pad an odd map of a stride-2 layer differently: such an input size is refused."""
    weights = load_weights(str(kf.write_h5(tmp_path / "m.h5", kf.calibrated(0.25, frames, seed=8))))
    with pytest.raises(ValueError, match="multiple of 32"):
        weights.validate(100)


# -- bad input: one line, exit 2, nothing written -------------------------------------------------


def _export_fails(tmp_path, capsys, weights_args, words):
    from latent_replay.cli import main

    out = tmp_path / "never"
    assert main(["export", "--out", str(out)] + weights_args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("latent-replay export: error:") and words in err[0], err
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_a_keras_file_of_another_architecture(tmp_path, capsys):
    import h5py

    path = tmp_path / "mobilenet_v2.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"Conv1", b"bn_Conv1", b"expanded_conv_depthwise"]
        for name in ("Conv1", "bn_Conv1", "expanded_conv_depthwise"):
            g = f.create_group(name)
            g.attrs["weight_names"] = [f"{name}/kernel:0".encode()]
            g.create_dataset(f"{name}/kernel:0", data=np.zeros((3, 3, 3, 32), np.float32))
    _export_fails(tmp_path, capsys, ["--weights", str(path)], "not a Keras MobileNet (v1)")


def test_a_width_no_mobilenet_has(tmp_path, capsys, frames):
    arrays = kf.random_arrays(1.0)
    arrays["conv1"]["kernel"] = arrays["conv1"]["kernel"][..., :20]
    _export_fails(tmp_path, capsys, ["--weights", str(kf.write_h5(tmp_path / "w.h5", arrays))],
                  "not a MobileNetV1 of width")


def test_missing_and_short_shards(tmp_path, capsys):
    kf.write_tfjs(tmp_path / "tfjs", kf.random_arrays(0.25))
    (tmp_path / "tfjs" / "group7-shard2of2").unlink()
    _export_fails(tmp_path, capsys, ["--weights", str(tmp_path / "tfjs")], "group7-shard2of2, which is missing")
    kf.write_tfjs(tmp_path / "tfjs2", kf.random_arrays(0.25))
    shard = tmp_path / "tfjs2" / "group9-shard2of2"
    shard.write_bytes(shard.read_bytes()[:-8])
    _export_fails(tmp_path, capsys, ["--weights", str(tmp_path / "tfjs2" / "model.json")], "a shard is short")


def test_a_width_the_file_contradicts(tmp_path, capsys):
    path = kf.write_h5(tmp_path / "w.h5", kf.random_arrays(0.75))
    _export_fails(tmp_path, capsys, ["--weights", str(path), "--width", "0.5"], "--width 0.5 contradicts")


def test_files_that_are_not_keras_weights(tmp_path, capsys):
    (tmp_path / "notes.h5").write_text("not hdf5")
    _export_fails(tmp_path, capsys, ["--weights", str(tmp_path / "notes.h5")], "as HDF5")
    (tmp_path / "model.json").write_text(json.dumps({"format": "graph-model"}))
    _export_fails(tmp_path, capsys, ["--weights", str(tmp_path / "model.json")], "not a TF.js layers model.json")
    (tmp_path / "m.keras").write_bytes(b"PK")
    _export_fails(tmp_path, capsys, ["--weights", str(tmp_path / "m.keras")], "Keras 3")


def test_width_applies_to_random_weights(tmp_path):
    """--width builds random weights of that width (the channel table follows Keras: 24..768 at 0.75)."""
    from latent_replay.cli import main

    assert main(["export", "--width", "0.75", "--latent-layer", "pool6", "--classes", "5", "--input-size", "64",
                 "--out", str(tmp_path / "art")]) == 0
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["latent_shape"] == [768] and manifest["architecture"]["width"] == 0.75
