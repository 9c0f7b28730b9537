"""Keras/TF MobileNet files for the tests, and an independent PyTorch reference computed from them.

Written from Keras's own description of its MobileNet (keras.applications.mobilenet: `_conv_block`,
`_depthwise_conv_block`, `int(filters * alpha)`, layer names `conv1`, `conv1_bn`, `conv_dw_N`,
`conv_dw_N_bn`, `conv_pw_N`, `conv_pw_N_bn`, `conv_preds`; HWIO kernels) and TF's definition of
'same' padding, not from the package: the reference reads the Keras-named HWIO arrays itself, so a
wrong transpose, padding side, activation or epsilon in the importer shows as a mismatch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

# keras.applications.mobilenet.MobileNet: (pointwise filters, stride) of depthwise blocks 1..13
BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
          (512, 1), (1024, 2), (1024, 1)]
EPS = 1e-3  # keras BatchNormalization's default

Arrays = Dict[str, Dict[str, np.ndarray]]  # keras layer -> variable -> array


def same_pads(size: int, stride: int, kernel: int = 3) -> Tuple[int, int]:
    """TF 'same': out = ceil(in / stride), total = max((out - 1) * stride + kernel - in, 0), the odd
    pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def random_arrays(width: float, seed: int = 0, classes: Optional[int] = 1000) -> Arrays:
    """Keras-named arrays of a MobileNet at `width` (BN statistics set by `calibrate`)."""
    rng = np.random.default_rng(seed)
    out: Arrays = {}

    def bn(name: str, c: int) -> None:
        out[name] = {"gamma": rng.uniform(2.0, 4.0, c).astype(np.float32),
                     "beta": rng.normal(0.5, 0.5, c).astype(np.float32),
                     "moving_mean": np.zeros(c, np.float32), "moving_variance": np.ones(c, np.float32)}

    c = int(32 * width)
    out["conv1"] = {"kernel": (rng.standard_normal((3, 3, 3, c)) * np.sqrt(2 / 27)).astype(np.float32)}
    bn("conv1_bn", c)
    for k, (filters, _) in enumerate(BLOCKS, 1):
        out[f"conv_dw_{k}"] = {"depthwise_kernel": (rng.standard_normal((3, 3, c, 1)) * np.sqrt(2 / 9)).astype(np.float32)}
        bn(f"conv_dw_{k}_bn", c)
        co = int(filters * width)
        out[f"conv_pw_{k}"] = {"kernel": (rng.standard_normal((1, 1, c, co)) * np.sqrt(2 / c)).astype(np.float32)}
        bn(f"conv_pw_{k}_bn", co)
        c = co
    if classes:
        out["conv_preds"] = {"kernel": (rng.standard_normal((1, 1, c, classes)) * 0.05).astype(np.float32),
                             "bias": rng.normal(0, 0.5, classes).astype(np.float32)}
    return out


def _conv(x: torch.Tensor, kernel: np.ndarray, stride: int, depthwise: bool) -> torch.Tensor:
    k = torch.from_numpy(kernel).double()
    if depthwise:  # (3, 3, C, 1) -> (C, 1, 3, 3)
        w, groups = k.permute(2, 3, 0, 1), x.shape[1]
    else:  # (kh, kw, in, out) -> (out, in, kh, kw)
        w, groups = k.permute(3, 2, 0, 1), 1
    if w.shape[-1] == 3:
        top, bottom = same_pads(x.shape[2], stride)
        left, right = same_pads(x.shape[3], stride)
        x = F.pad(x, (left, right, top, bottom))
    return F.conv2d(x, w, stride=stride, groups=groups)


def reference(arrays: Arrays, frames_bgr: np.ndarray, eps: float = EPS, relu6: bool = True,
              calibrate: bool = False) -> Tuple[Dict[str, np.ndarray], Optional[np.ndarray]]:
    """Float64 forward of Keras's MobileNet: {'conv1' | 'conv_dw_N' | 'conv_pw_N': NCHW output after its
    activation}, and the logits of `conv_preds` (None without it). Frames are uint8 NHWC BGR; Keras
    takes RGB `x / 127.5 - 1`. `calibrate` first sets every moving mean/variance to the batch's."""
    x = torch.from_numpy(frames_bgr[..., ::-1].astype(np.float64).copy()) / 127.5 - 1.0
    x = x.permute(0, 3, 1, 2)
    acts: Dict[str, np.ndarray] = {}
    layers = [("conv1", 2, False)] + [(f"conv_{kind}_{k}", s if kind == "dw" else 1, kind == "dw")
                                      for k, (_, s) in enumerate(BLOCKS, 1) for kind in ("dw", "pw")]
    for name, stride, depthwise in layers:
        y = _conv(x, arrays[name]["depthwise_kernel" if depthwise else "kernel"], stride, depthwise)
        b = arrays[name + "_bn"]
        if calibrate:
            b["moving_mean"] = y.mean((0, 2, 3)).numpy().astype(np.float32)
            b["moving_variance"] = y.var((0, 2, 3), unbiased=False).numpy().astype(np.float32)
        view = (1, -1, 1, 1)
        mean, var = (torch.from_numpy(b[k]).double().view(view) for k in ("moving_mean", "moving_variance"))
        gamma, beta = (torch.from_numpy(b[k]).double().view(view) for k in ("gamma", "beta"))
        y = (y - mean) / torch.sqrt(var + eps) * gamma + beta
        x = torch.clamp(y, 0.0, 6.0) if relu6 else torch.relu(y)
        acts[name] = x.numpy()
    logits = None
    if "conv_preds" in arrays:
        head = arrays["conv_preds"]
        pooled = x.mean((2, 3))
        logits = (pooled @ torch.from_numpy(head["kernel"][0, 0]).double()
                  + torch.from_numpy(head["bias"]).double()).numpy()
    return acts, logits


def calibrated(width: float, frames: np.ndarray, seed: int = 0, classes: Optional[int] = 1000) -> Arrays:
    """Random arrays whose BN statistics are those of `frames` (activations O(1), ReLU6 clipping some)."""
    arrays = random_arrays(width, seed, classes)
    reference(arrays, frames, calibrate=True)
    return arrays


# ---------------------------------------------------------------------------------------------
# HDF5 (keras.applications' layout: root attribute layer_names, per layer weight_names)


def write_h5(path: Path, arrays: Arrays, eps: Optional[float] = None, layer_names: Optional[List[str]] = None) -> Path:
    """A Keras 2 weights file (`save_weights` layout); `eps` adds a model_config with that epsilon."""
    import h5py

    names = layer_names or _layer_names(arrays)
    with h5py.File(str(path), "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in names]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in names:
            group = f.create_group(layer)
            weights = arrays.get(layer, {})
            group.attrs["weight_names"] = [f"{layer}/{v}:0".encode() for v in weights]
            for variable, value in weights.items():
                group.create_dataset(f"{layer}/{variable}:0", data=value)
        if eps is not None:
            f.attrs["model_config"] = json.dumps(_topology(arrays, eps)).encode()
    return path


def _layer_names(arrays: Arrays) -> List[str]:
    """Every layer of a recent keras.applications file, weightless ones included (input, the stride-2
    blocks' ZeroPadding2D, activations, pooling)."""
    names = ["input_1"]
    for layer in arrays:
        block = layer[len("conv_dw_"):] if layer.startswith("conv_dw_") and not layer.endswith("_bn") else None
        if block and BLOCKS[int(block) - 1][1] == 2:
            names.append(f"conv_pad_{block}")
        names.append(layer)
        if layer.endswith("_bn"):
            names.append(layer[:-3] + "_relu")
    return names + ["global_average_pooling2d", "dropout", "reshape_2", "predictions"]


def _topology(arrays: Arrays, eps: float, relu6: bool = True) -> dict:
    layers = []
    for name in arrays:
        if name.endswith("_bn"):
            layers.append({"class_name": "BatchNormalization", "config": {"name": name, "epsilon": eps}})
            act = {"name": name[:-3] + "_relu", "activation": "relu6" if relu6 else "relu"}
            layers.append({"class_name": "Activation", "config": act})
        else:
            layers.append({"class_name": "Conv2D", "config": {"name": name, "padding": "same"}})
    return {"class_name": "Model", "config": {"name": "mobilenet", "layers": layers}}


# ---------------------------------------------------------------------------------------------
# TF.js layers format


def quantize_uint8(a: np.ndarray) -> Tuple[np.ndarray, float, float]:
    """TF.js affine uint8 quantization: q = round((a - min) / scale), a' = q * scale + min."""
    lo, hi = float(a.min()), float(a.max())
    scale = (hi - lo) / 255 or 1.0
    return np.round((a - lo) / scale).astype(np.uint8), scale, lo


def write_tfjs(folder: Path, arrays: Arrays, quantize: bool = False, eps: float = EPS, relu6: bool = True,
               labels: Optional[List[str]] = None, shards: int = 2) -> Arrays:
    """model.json + shards (each weight group split into `shards` files); returns the arrays as the
    reader must see them (dequantized when `quantize`)."""
    folder.mkdir(parents=True, exist_ok=True)
    seen: Arrays = {}
    manifest = []
    for g, (layer, weights) in enumerate(arrays.items(), 1):
        blob, entries = b"", []
        for variable, value in weights.items():
            entry = {"name": f"{layer}/{variable}", "shape": list(value.shape), "dtype": "float32"}
            if quantize:
                q, scale, lo = quantize_uint8(value)
                entry["quantization"] = {"dtype": "uint8", "scale": scale, "min": lo}
                blob += q.tobytes()
                seen.setdefault(layer, {})[variable] = (q.astype(np.float32) * np.float32(scale) + np.float32(lo))
            else:
                blob += value.astype("<f4").tobytes()
                seen.setdefault(layer, {})[variable] = value
            entries.append(entry)
        cut = [len(blob) * i // shards for i in range(shards + 1)]
        paths = []
        for s in range(shards):
            name = f"group{g}-shard{s + 1}of{shards}"
            (folder / name).write_bytes(blob[cut[s]:cut[s + 1]])
            paths.append(name)
        manifest.append({"paths": paths, "weights": entries})
    model = {"modelTopology": {"keras_version": "2.1.4", "backend": "tensorflow",
                               "model_config": _topology(arrays, eps, relu6)},
             "weightsManifest": manifest}
    (folder / "model.json").write_text(json.dumps(model))
    if labels is not None:
        (folder / "metadata.json").write_text(json.dumps({"labels": labels}))
    return seen
