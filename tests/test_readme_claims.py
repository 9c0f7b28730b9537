"""What the README says about inputs and weights files holds for the code: the frame size comes from the
export (manifest, learned model metadata) and predict fits any image to it; every weights format the
loader reads is explained in the README's weights table and named in --weights' help."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from latent_replay.cli import main
from safety_helpers import template_run

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return template_run(tmp_path_factory)


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    return README[start:README.index("\n## ", start + 1)]


def test_the_frame_size_comes_from_the_export_and_predict_resizes(template, tmp_path, capsys):
    """The synthetic run's front takes 64x64 frames (not the 128 a default export takes), as the manifest and
    the learned model say; predict fits a 300x200 photo to it."""
    size = json.loads((template / "artifacts" / "manifest.json").read_text())["input"]["size"]
    assert size == 64
    model = tmp_path / "learned.onnx"
    assert main(["export-model", "--state", str(template), "--out", str(model)]) == 0
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(model)).metadata_props}
    assert meta["input"]["shape"] == ["batch", 64, 64, 3]
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8))
    capsys.readouterr()
    assert main(["predict", "--model", str(model), str(photo)]) == 0
    assert capsys.readouterr().out.startswith(f"{photo}: ")
    weights = section("Weights")
    assert "always takes" not in weights
    assert all(words in weights for words in ("`input.size`", "`input.shape`", "`--synthetic-size` (default 64)",
                                              "resize it to S"))


def test_every_weights_format_is_explained_and_in_the_help(capsys):
    from latent_replay.models.files import CAFFE_SUFFIXES, STATE_DICT_SUFFIXES

    rows = [line for line in section("Weights").splitlines() if line.startswith("| `")]
    first_cells = [row.split(" | ")[0] for row in rows]
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for suffix in CAFFE_SUFFIXES + STATE_DICT_SUFFIXES:
        assert any(suffix in cell for cell in first_cells), suffix
        assert suffix in help_text, suffix
    npz = next(row for row in rows if ".npz" in row.split(" | ")[0])
    assert "state dict" in npz and "np.savez" in npz and "without torch" in npz
