"""PyTorch state-dict import: timm and pytorchcv key layouts, .safetensors/.npz/.pth, torch missing."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from helpers import make_weights
from latent_replay.models import mobilenet_v1 as net
from latent_replay.models.load import WeightsError, load_weights
from latent_replay.models.random_init import conv2d
from latent_replay.models.torch_state import (
    TORCH_HINT, detect_family, load_state_dict_file, weights_to_state_dict,
)
from latent_replay.models.weights import TORCH_PREPROCESSING

torch = pytest.importorskip("torch")
nn = torch.nn

STAGES = [[64], [128, 128], [256, 256], [512] * 6, [1024, 1024]]


def _conv_bn(cin, cout, k, stride, groups=1):
    block = nn.Module()
    block.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
    block.bn = nn.BatchNorm2d(cout)
    block.activ = nn.ReLU()
    block.forward = lambda x: block.activ(block.bn(block.conv(x)))
    return block


class PytorchcvLikeMobileNet(nn.Module):
    """The module tree of pytorchcv's mobilenet_w1 (same attribute names, strides and order)."""

    def __init__(self, classes=1000):
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("init_block", _conv_bn(3, 32, 3, 2))
        cin = 32
        for i, stage_channels in enumerate(STAGES):
            stage = nn.Sequential()
            for j, cout in enumerate(stage_channels):
                unit = nn.Module()
                unit.dw_conv = _conv_bn(cin, cin, 3, 2 if j == 0 and i != 0 else 1, groups=cin)
                unit.pw_conv = _conv_bn(cin, cout, 1, 1)
                unit.forward = (lambda u: lambda x: u.pw_conv(u.dw_conv(x)))(unit)
                stage.add_module(f"unit{j + 1}", unit)
                cin = cout
            self.features.add_module(f"stage{i + 1}", stage)
        self.output = nn.Linear(1024, classes)

    def forward(self, x):
        return self.output(self.features(x).mean(dim=(2, 3)))


def _randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.dtype.is_floating_point:
                values = torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var") else \
                    torch.randn(t.shape, generator=g) * (0.3 if t.dim() > 1 else 0.1)
                t.copy_(values)
    return module.eval()


def _numpy_forward(weights, x):
    """Reference forward of the container: conv, inference BN, scale/shift, ReLU, pool, head."""
    for layer in net.conv_layers(x.shape[-1]):
        w, b = weights.convs[layer.name].folded()
        x = np.maximum(conv2d(x, w, layer.stride, layer.group) + b.reshape(1, -1, 1, 1), 0)
    return x.mean(axis=(2, 3)) @ weights.head_weight.T + weights.head_bias


def _sd_numpy(module):
    return {k: v.numpy() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def pytorchcv_model():
    return _randomize(PytorchcvLikeMobileNet())


def test_pytorchcv_pth_matches_module_forward(tmp_path, pytorchcv_model):
    path = tmp_path / "mobilenet_w1.pth"
    torch.save(pytorchcv_model.state_dict(), path)
    weights = load_state_dict_file(path)
    assert weights.preprocessing == TORCH_PREPROCESSING and weights.notes["format"] == "pytorchcv"
    assert weights.head_weight.shape == (1000, 1024)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = pytorchcv_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_numpy_forward(weights, x), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_pytorchcv_without_torch_formats(tmp_path, pytorchcv_model, suffix):
    state = _sd_numpy(pytorchcv_model)
    path = tmp_path / f"m{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else np.savez(path, **state)
    weights = load_weights(str(path))
    np.testing.assert_array_equal(weights.convs["conv5_3/sep"].weight,
                                  state["features.stage4.unit4.pw_conv.conv.weight"])
    np.testing.assert_array_equal(weights.convs["conv2_2/dw"].mean, state["features.stage2.unit1.dw_conv.bn.running_mean"])
    np.testing.assert_array_equal(weights.head_bias, state["output.bias"])


def test_timm_safetensors_key_layout(tmp_path):
    ref = make_weights(seed=5, classes=1000)
    ref.head_bias = np.arange(1000, dtype=np.float32)
    state = weights_to_state_dict(ref, "timm")
    # exact timm names (timm efficientnet.py _gen_mobilenet_v1 / DepthwiseSeparableConv)
    for key in ("conv_stem.weight", "bn1.running_var", "blocks.0.0.conv_dw.weight", "blocks.0.0.bn2.bias",
                "blocks.3.5.conv_pw.weight", "blocks.4.1.bn1.running_mean", "classifier.weight"):
        assert key in state
    assert state["blocks.3.5.conv_pw.weight"].shape == (512, 512, 1, 1)
    assert state["blocks.4.0.conv_dw.weight"].shape == (512, 1, 3, 3)
    state["bn1.num_batches_tracked"] = np.array(7, np.int64)  # timm files carry these: ignored
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    weights = load_weights(str(path))
    assert detect_family(state) == "timm" and weights.preprocessing.name == "imagenet"
    for name in net.conv_names():
        for key in ("weight", "mean", "var", "gamma", "beta"):
            want = np.asarray(getattr(ref.convs[name], key), np.float32)  # helpers may build float64
            np.testing.assert_array_equal(getattr(weights.convs[name], key), want)
    np.testing.assert_array_equal(weights.convs["conv5_5/dw"].weight, state["blocks.3.5.conv_dw.weight"])
    np.testing.assert_array_equal(weights.head_bias, ref.head_bias)
    assert weights.head_for(50)[2] is False


def test_pth_checkpoint_wrapper_and_module_prefix(tmp_path, pytorchcv_model):
    wrapped = {"state_dict": {"module." + k: v for k, v in pytorchcv_model.state_dict().items()}, "epoch": 3}
    path = tmp_path / "ckpt.pt"
    torch.save(wrapped, path)
    weights = load_weights(str(path))
    np.testing.assert_array_equal(weights.convs["conv1"].weight,
                                  pytorchcv_model.features.init_block.conv.weight.detach().numpy())


def test_pth_without_torch_says_how_to_fix(tmp_path, pytorchcv_model, monkeypatch):
    path = tmp_path / "m.pth"
    torch.save(pytorchcv_model.state_dict(), path)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(WeightsError) as info:
        load_weights(str(path))
    assert TORCH_HINT in str(info.value)
    assert TORCH_HINT == "reading .pth needs PyTorch: pip install torch, or convert to .safetensors"
    assert "m.pth" in str(info.value)


def test_unknown_incomplete_and_corrupt_state_dicts(tmp_path, pytorchcv_model):
    other = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}, str(other))
    with pytest.raises(WeightsError, match="not a known MobileNetV1"):
        load_weights(str(other))
    state = _sd_numpy(pytorchcv_model)
    del state["features.stage4.unit2.dw_conv.bn.running_var"]
    partial = tmp_path / "partial.safetensors"
    save_file(state, str(partial))
    with pytest.raises(WeightsError, match="stage4.unit2.dw_conv.bn.running_var"):
        load_weights(str(partial))
    narrow = {k: v for k, v in _sd_numpy(pytorchcv_model).items()}
    narrow["features.init_block.conv.weight"] = np.zeros((16, 3, 3, 3), np.float32)
    np.savez(tmp_path / "narrow.npz", **narrow)
    with pytest.raises(WeightsError, match="conv1"):
        load_weights(str(tmp_path / "narrow.npz"))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightsError, match="corrupt.safetensors"):
        load_weights(str(corrupt))
