#!/usr/bin/env bash
# Build onnxruntime-training 1.19.2 (on-device training APIs, CUDA + TensorRT providers) as a Python
# wheel on a Jetson (aarch64, JetPack 5/6). PyPI has no aarch64 training wheel, hence this script.
#
#   bash scripts/build_ort_training_jetson.sh            # build into ./ort-build, then pip install it
#   ORT_PROVIDERS=cpu bash scripts/build_ort_training_jetson.sh   # CPU-only (any aarch64 Linux)
#
# Needs: JetPack (CUDA, cuDNN, TensorRT under /usr), cmake >= 3.26 (pip install cmake), python3-dev,
# git, ~20 GB of free disk and a few hours on an Orin (use a swap file on 8 GB boards).
set -euo pipefail
ORT_VERSION="${ORT_VERSION:-v1.19.2}"
ORT_PROVIDERS="${ORT_PROVIDERS:-cuda}"
WORK="${WORK:-$PWD/ort-build}"
JOBS="${JOBS:-$(nproc)}"

if [ "$(uname -m)" != "aarch64" ]; then
    echo "this script is for aarch64 boards (this is $(uname -m)); on x86_64 use: pip install onnxruntime-training-cpu==1.19.2" >&2
    exit 2
fi
mkdir -p "$WORK"
cd "$WORK"
[ -d onnxruntime ] || git clone --recursive --branch "$ORT_VERSION" --depth 1 https://github.com/microsoft/onnxruntime.git
cd onnxruntime

args=(--config Release --update --build --build_wheel --parallel "$JOBS" --skip_tests
      --enable_training_apis --allow_running_as_root
      --cmake_extra_defines CMAKE_CXX_FLAGS=-Wno-error onnxruntime_BUILD_UNIT_TESTS=OFF)
if [ "$ORT_PROVIDERS" = "cuda" ]; then
    args+=(--use_cuda --cuda_home /usr/local/cuda --cudnn_home /usr/lib/aarch64-linux-gnu
           --use_tensorrt --tensorrt_home /usr/lib/aarch64-linux-gnu
           --cmake_extra_defines "CMAKE_CUDA_ARCHITECTURES=72;87")  # Xavier 72, Orin 87
fi
./build.sh "${args[@]}"
wheel=$(ls build/Linux/Release/dist/*.whl | head -n 1)
echo "built $wheel"
python3 -m pip install "$wheel"
python3 -c "import onnxruntime as o; from onnxruntime.capi import _pybind_state as C; print(o.__version__, o.get_available_providers(), hasattr(C, 'Module'))"
