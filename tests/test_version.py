"""One version: `latent_replay.__version__`, read by setup.py, reported by `latent-replay --version`, in
results.json, the artifacts' manifest and a learned model's metadata."""
from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import onnx
import pytest

import latent_replay
from latent_replay.cli import main
from safety_helpers import template_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return template_run(tmp_path_factory)


def test_setup_reads_the_package_version():
    proc = subprocess.run([sys.executable, "setup.py", "--version"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == latent_replay.__version__
    assert metadata.version("latent-replay") == latent_replay.__version__  # what pip installed


def test_version_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"latent-replay {latent_replay.__version__}"


def test_every_record_carries_the_package_version(template, tmp_path):
    version = latent_replay.__version__
    assert json.loads((template / "results.json").read_text())["versions"]["latent_replay"] == version
    assert json.loads((template / "artifacts" / "manifest.json").read_text())["versions"]["latent_replay"] == version
    model = tmp_path / "learned.onnx"
    assert main(["export-model", "--state", str(template / "run0" / "state"), "--out", str(model)]) == 0
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(model)).metadata_props}
    assert meta["latent_replay"]["version"] == version
