"""scripts/jetson/install.sh on faked boards: /etc/nv_tegra_release under LR_JETSON_ROOT, fake nvcc,
dpkg and python scripts. Its dry runs for JetPack 5.1.2 and 6.1 pick the matching onnxruntime-gpu
source and print every step without running any; unsupported combinations are refused in one line."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "jetson" / "install.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

BOARDS = {
    "jp5.1.2": {"release": "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
                           "DATE: Tue Aug  1 19:57:35 UTC 2023",
                "cuda": "11.4, V11.4.315", "python": "3.8.10",
                "dpkg": [("libcudnn8", "8.6.0.166-1+cuda11.4"), ("nvidia-l4t-core", "35.4.1-20230801124926"),
                         ("tensorrt", "8.5.2.2-1+cuda11.4")]},
    "jp6.1": {"release": "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, "
                         "DATE: Fri Sep 13 04:36:44 UTC 2024",
              "cuda": "12.6, V12.6.68", "python": "3.10.12",
              "dpkg": [("libcudnn9-cuda-12", "9.3.0.75-1"), ("libnvinfer10", "10.3.0.30-1+cuda12.5"),
                       ("nvidia-l4t-core", "36.4.0-20240912212859")]},
}


def fake_board(tmp: Path, release: Optional[str], cuda: Optional[str], python: str,
               dpkg: List[tuple], nvcc_on_path: bool = False) -> Dict[str, str]:
    """A fake root, PATH and Python for the script; any Python call but the version query leaves a
    marker file (a dry run must not create the environment)."""
    root, bin_dir = tmp / "root", tmp / "bin"
    (root / "etc").mkdir(parents=True)
    bin_dir.mkdir()
    if release is not None:
        (root / "etc" / "nv_tegra_release").write_text(release + "\n")
    if cuda is not None:
        nvcc_dir = bin_dir if nvcc_on_path else root / "usr" / "local" / "cuda" / "bin"
        nvcc_dir.mkdir(parents=True, exist_ok=True)
        script(nvcc_dir / "nvcc", f'echo "nvcc: NVIDIA (R) Cuda compiler driver"\n'
                                  f'echo "Cuda compilation tools, release {cuda}"')
    rows = "\n".join(f"ii  {name:<24} {version:<28} arm64        fake" for name, version in dpkg)
    script(bin_dir / "dpkg", f"cat <<'EOF'\nDesired=Unknown/Install/Remove/Purge/Hold\n"
                             f"||/ Name                     Version                      Architecture Description\n"
                             f"+++-========================-============================-============-===========\n"
                             f"{rows}\nEOF")
    script(bin_dir / "fake-python", f'if [ "$1" = -c ]; then echo {python}; exit 0; fi\n'
                                    f'touch "{tmp}/python-was-run"; exit 1')
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "LR_JETSON_ROOT": str(root), "HOME": str(tmp),
            "LR_JETSON_PYTHON": str(bin_dir / "fake-python")}


def script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def install(env: Dict[str, str], *args: str) -> subprocess.CompletedProcess:
    keep = {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TMPDIR")}
    return subprocess.run(["bash", str(SCRIPT), *args], env={**keep, **env}, capture_output=True, text=True,
                          timeout=60)


def steps(out: str) -> List[str]:
    return [line[4:] for line in out.splitlines() if line.startswith("  + ")]


def test_jetpack_5_1_2_dry_run(tmp_path):
    env = fake_board(tmp_path, **BOARDS["jp5.1.2"])
    r = install(env, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert ("detected: L4T R35.4.1 (JetPack 5.1.2); CUDA 11.4; cuDNN 8.6.0.166; TensorRT 8.5.2.2; Python 3.8.10"
            in r.stdout)
    assert "onnxruntime: onnxruntime-gpu>=1.16,<=1.18.1 from the index https://pypi.jetson-ai-lab.dev/jp5/cu114" in r.stdout
    venv, py = f"{tmp_path}/.venvs/latent-replay", f"{tmp_path}/.venvs/latent-replay/bin/python"
    cuda = f"{tmp_path}/root/usr/local/cuda"
    expected = [
        f"{env['LR_JETSON_PYTHON']} -m venv --system-site-packages {venv}",
        f"{py} -m pip install --upgrade pip",
        f"{py} -m pip install 'numpy<2' 'onnxruntime-gpu>=1.16,<=1.18.1' --extra-index-url "
        f"https://pypi.jetson-ai-lab.dev/jp5/cu114",
        f"{py} -m pip install {REPO}",
        f"{py} -m pip uninstall -y opencv-python-headless opencv-python",
    ]
    got = steps(r.stdout)
    assert got[:5] == expected and got[5].startswith(f"{py} -c 'import re, sys, cv2;")
    assert got[6] == f"env CUDA_ROOT={cuda} PATH={cuda}/bin:{env['PATH']} {py} -m pip install pycuda"
    assert got[7] == f"{venv}/bin/latent-replay doctor --device cuda --json {venv}/doctor.json --tensorrt"
    assert len(got) == 8 and "dry run: nothing was changed" in r.stdout
    assert not (tmp_path / "python-was-run").exists() and not (tmp_path / ".venvs").exists()


def test_jetpack_6_1_dry_run(tmp_path):
    env = fake_board(tmp_path, **BOARDS["jp6.1"], nvcc_on_path=True)
    r = install(env, "--dry-run", "--venv", str(tmp_path / "v"), "--no-pycuda")
    assert r.returncode == 0, r.stderr
    assert ("detected: L4T R36.4.0 (JetPack 6.1); CUDA 12.6; cuDNN 9.3.0.75; TensorRT 10.3.0.30; Python 3.10.12"
            in r.stdout)
    got = steps(r.stdout)
    assert got[2] == (f"{tmp_path}/v/bin/python -m pip install 'numpy<2' 'onnxruntime-gpu>=1.17,<1.24' "
                      f"--extra-index-url https://pypi.jetson-ai-lab.io/jp6/cu126")
    assert not any("pycuda" in s for s in got)
    assert got[-1] == f"{tmp_path}/v/bin/latent-replay doctor --device cuda --json {tmp_path}/v/doctor.json --tensorrt"
    assert not (tmp_path / "python-was-run").exists() and not (tmp_path / "v").exists()


def test_the_l4t_release_from_dpkg_a_wheel_and_no_tensorrt(tmp_path):
    """No nv_tegra_release: the nvidia-l4t-core package's version tells the release; --wheel replaces the
    index; without TensorRT (or with --no-tensorrt) the doctor checks CUDA only."""
    board = dict(BOARDS["jp5.1.2"], release=None,
                 dpkg=[("nvidia-l4t-core", "35.4.1-20230801124926"), ("libcudnn8", "8.6.0.166-1+cuda11.4")])
    env = fake_board(tmp_path, **board)
    r = install(env, "--dry-run", "--wheel", "onnxruntime_gpu-1.18.0-cp38-cp38-linux_aarch64.whl")
    assert r.returncode == 0, r.stderr
    assert "L4T R35.4.1 (JetPack 5.1.2)" in r.stdout and "TensorRT none" in r.stdout
    got = steps(r.stdout)
    assert got[2].endswith("-m pip install 'numpy<2' onnxruntime_gpu-1.18.0-cp38-cp38-linux_aarch64.whl")
    assert not got[-1].endswith("--tensorrt")


@pytest.mark.parametrize("board, words", [
    (dict(release="# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, DATE: x",
          cuda="10.2, V10.2.300", python="3.6.9", dpkg=[("nvidia-l4t-core", "32.7.1-20220219090432")]),
     "JetPack 4.x (L4T R32.7.1, Python 3.6.9) is not supported"),
    (dict(BOARDS["jp6.1"], python="3.8.10"),
     "JetPack 6.1's onnxruntime-gpu wheels are for Python 3.10, not 3.8.10"),
    (dict(BOARDS["jp5.1.2"], python="3.10.12"),
     "JetPack 5.1.2's onnxruntime-gpu wheels are for Python 3.8, not 3.10.12"),
    (dict(BOARDS["jp6.1"], release="# R36 (release), REVISION: 3.0, GCID: 1, BOARD: generic, EABI: aarch64, DATE: x",
          cuda="12.2, V12.2.140"),
     "JetPack 6.0 with CUDA 12.2: the wheels of https://pypi.jetson-ai-lab.io/jp6/cu126 are built for CUDA 12.6"),
    (dict(BOARDS["jp5.1.2"], cuda=None), "no CUDA toolkit: nvcc is neither on PATH"),
    (dict(release=None, cuda=None, python="3.11.2", dpkg=[]), "not a Jetson"),
])
def test_unsupported_combinations_are_refused_in_one_line(tmp_path, board, words):
    r = install(fake_board(tmp_path, **board), "--dry-run")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("install.sh: error: ")
    assert words in r.stderr
    assert "step 1" not in r.stdout


def test_bad_options(tmp_path):
    env = fake_board(tmp_path, **BOARDS["jp6.1"])
    for args, words in [(["--frobnicate"], "unknown option --frobnicate"),
                        (["--wheel", "x.whl", "--index-url", "https://example.invalid"], "not both")]:
        r = install(env, *args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
        assert r.stderr.startswith("install.sh: error: ") and words in r.stderr
