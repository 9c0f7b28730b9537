"""latent-replay: continual learning on the edge with Latent Replay, CWR*, AR1* and ONNX Runtime."""
from setuptools import find_packages, setup

TEST = ["pytest>=7", "torch==2.13.0"]

setup(
    name="latent-replay",
    version="0.1.0",
    description="Latent Replay (CWR*, AR1*, AR1*-free) on MobileNetV1 with ONNX Runtime on-device training",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.8,<3.13",
    packages=find_packages(include=["latent_replay", "latent_replay.*"]),
    package_data={"latent_replay": ["data/*"]},
    install_requires=[
        "numpy>=1.21",
        "onnx>=1.14,<=1.17",
        "protobuf>=3.20",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "matplotlib>=3.5",
        "opencv-python-headless>=4.5",
        # The CPU training build; the [gpu] extra swaps in the CUDA build (same `onnxruntime` module).
        "onnxruntime-training-cpu==1.19.2; platform_machine == 'x86_64' or platform_machine == 'AMD64' or sys_platform == 'darwin'",
    ],
    extras_require={
        "gpu": ["onnxruntime-training==1.19.2", "pycuda>=2022.1", "nvidia-ml-py>=11"],
        "test": TEST,
        "bench": ["torch==2.13.0", "psutil>=5.8"],
    },
    entry_points={"console_scripts": ["latent-replay=latent_replay.cli:main"]},
)
