"""The `layers`, `export` and `predict` commands, and their answers to bad input."""
from __future__ import annotations

import json

import pytest

from latent_replay.cli import main
from latent_replay.models import mobilenet_v1 as net


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir())


def test_layers_table_lists_the_15_layers(capsys):
    assert main(["layers"]) == 0
    out = capsys.readouterr().out
    for name in net.LATENT_LAYERS:
        assert f"\n{name} " in out
    assert main(["layers", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 15
    row = next(r for r in rows if r["latent_layer"] == "conv5_4/dw")
    assert row["values"] == 32768 and row["bytes_fp32"] == 4 * 32768 and row["bytes_uint8"] == 32768
    assert row["front_macs"] + row["back_macs"] == rows[0]["back_macs"]  # every split covers the whole net
    assert abs(row["back_params"] / 1e6 - 2.18) < 0.01 and abs(row["front_macs"] / 1e6 - 126.1) < 0.1


def test_export_then_predict(tmp_path, capsys):
    out = tmp_path / "art"
    assert main(["export", "--weights", "random", "--latent-layer", "pool6", "--classes", "7", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "RANDOM weights" in err
    assert (out / "front.onnx").is_file() and (out / "back" / "step.onnx").is_file()
    # random weights export an all-zero head: predict refuses it and says what to pass (tests/test_predict.py)
    assert main(["predict", "--artifacts", str(out)]) == 2
    assert "untrained" in capsys.readouterr().err
    assert leftovers(tmp_path) == ["art"]


@pytest.mark.parametrize("args, message", [
    (["--weights", "missing.caffemodel"], "does not exist"),
    (["--latent-layer", "conv9/dw"], "valid latent layers: data, conv2_1/dw"),
    (["--classes", "1"], "at least 2"),
])
def test_bad_export_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    out = tmp_path / "art"
    code = main(["export", "--out", str(out)] + args)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("latent-replay export: error:")
    assert not out.exists() and leftovers(tmp_path) == []


def test_corrupt_weights_file(tmp_path, capsys):
    bad = tmp_path / "broken.caffemodel"
    bad.write_bytes(b"\x0f\xff\xff not a caffemodel")
    assert main(["export", "--weights", str(bad), "--out", str(tmp_path / "art")]) == 2
    assert "broken.caffemodel" in capsys.readouterr().err
    assert not (tmp_path / "art").exists()


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["export", "--out", str(blocker / "art")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_failed_export_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    out = tmp_path / "art"
    assert main(["export", "--latent-layer", "pool6", "--out", str(out)]) == 0
    before = (out / "manifest.json").read_text()
    from latent_replay.export import exporter

    def boom(*a, **k):
        raise exporter.ExportError("simulated failure while writing the back")
    monkeypatch.setattr(exporter, "_write_step", boom)
    assert main(["export", "--latent-layer", "conv5_4/dw", "--out", str(out)]) == 2
    assert (out / "manifest.json").read_text() == before
    assert leftovers(tmp_path) == ["art"]


def test_predict_names_bad_images_before_anything_else(tmp_path, capsys):
    import cv2
    import numpy as np

    out = tmp_path / "art"
    assert main(["export", "--latent-layer", "pool6", "--classes", "4", "--out", str(out)]) == 0
    good = tmp_path / "wide.png"
    cv2.imwrite(str(good), np.full((90, 160, 3), 200, np.uint8))
    capsys.readouterr()
    assert main(["predict", "--artifacts", str(out), str(tmp_path / "missing.png")]) == 2
    assert "missing.png does not exist" in capsys.readouterr().err
    assert main(["predict", "--artifacts", str(out), str(good)]) == 2  # an untrained head: nothing to say
    assert "untrained" in capsys.readouterr().err
