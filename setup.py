"""latent-replay: continual learning on the edge with Latent Replay, CWR*, AR1* and ONNX Runtime."""
import re
from pathlib import Path

from setuptools import find_packages, setup


def package_version() -> str:
    """`__version__` of latent_replay/__init__.py, read as text: importing the package would need its
    dependencies before they are installed."""
    text = (Path(__file__).resolve().parent / "latent_replay" / "__init__.py").read_text(encoding="utf-8")
    return re.search(r'^__version__ = "([^"]+)"$', text, re.M).group(1)


# One ONNX Runtime distribution per environment (they all install the `onnxruntime` module and
# cannot live side by side): stock CPU, CUDA, or the training build of the optional engine. On a
# Jetson, JetPack's own onnxruntime-gpu wheel is installed instead (see the README).
ORT_CPU = "onnxruntime>=1.16"
# PyTorch is the tests' independent oracle (and the benchmark's baseline), never the package's. 2.13.0
# (CPU) for Python 3.11+; it has no wheel for 3.8/3.9, and on 3.10 PyPI has only CUDA builds of
# several GB with their nvidia-* packages. 1.12.1 is PyPI's last x86_64 torch that carries its CUDA
# inside one 776 MB wheel (no other packages) and runs on the CPU; it is built for numpy 1.x.
TORCH = ['torch==1.12.1; python_version < "3.11"', 'numpy<2; python_version < "3.11"',
         'torch==2.13.0; python_version >= "3.11"']
# The web page of `stream --serve` / `serve`: aiohttp (3.8 still installs on Python 3.8).
WEB = ["aiohttp>=3.8"]
# The browser test drives the system's Chromium (Debian: apt-get install chromium chromium-driver).
TEST = ["pytest>=7", "selenium>=4.10"] + WEB + TORCH

setup(
    name="latent-replay",
    version=package_version(),
    description="Latent Replay (CWR*, AR1*, AR1*-free) on MobileNetV1, trained on the device by any ONNX Runtime",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.8",
    packages=find_packages(include=["latent_replay", "latent_replay.*"]),
    package_data={"latent_replay": ["data/*"]},
    install_requires=[
        "numpy>=1.21",
        "onnx>=1.14",
        "protobuf>=3.20",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "matplotlib>=3.5",
        "opencv-python-headless>=4.5",
        "h5py>=3.1",  # Keras/TF MobileNet .h5 weights
    ],
    extras_require={
        "cpu": [ORT_CPU],
        "gpu": ["onnxruntime-gpu>=1.16", "pycuda>=2022.1", "nvidia-ml-py>=11"],
        # The optional engine: ORT's training artifacts (last release 1.19.2: x86_64, Python <= 3.12).
        "training": ["onnxruntime-training-cpu==1.19.2", "onnx>=1.14,<=1.17"],
        "web": WEB,
        "test": [ORT_CPU] + TEST,
        "bench": [ORT_CPU, "psutil>=5.8"] + TORCH,
        # `latent-replay sweep`: Ray runs the cells (without it: sweep --local), PyYAML reads YAML grid files.
        "sweep": [ORT_CPU, "ray>=2.10", "pyyaml>=5.4"],
    },
    entry_points={"console_scripts": ["latent-replay=latent_replay.cli:main"]},
)
