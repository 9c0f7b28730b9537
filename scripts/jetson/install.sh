#!/usr/bin/env bash
# Install latent-replay on an NVIDIA Jetson: detect the L4T/JetPack release, CUDA, cuDNN, TensorRT and
# Python; pick the onnxruntime-gpu wheels built for that JetPack; install them and this package into a
# virtual environment that sees JetPack's own OpenCV (GStreamer) and numpy; add pycuda (the GPU replay
# pool); and check with `latent-replay doctor --device cuda` that a training step really runs on the
# CUDA provider (and the front on TensorRT when it is installed).
#
#   scripts/jetson/install.sh [--dry-run] [--venv DIR] [--index-url URL | --wheel FILE_OR_URL]
#                             [--no-pycuda] [--no-tensorrt]
#
#   --dry-run      print what was detected and every step, run none of them
#   --venv DIR     the virtual environment (default $LR_JETSON_VENV or ~/.venvs/latent-replay)
#   --index-url    take onnxruntime-gpu from this index instead of the one picked for the JetPack
#   --wheel        install this onnxruntime-gpu wheel (e.g. one downloaded from the Jetson Zoo)
#   --no-pycuda    skip pycuda (the replay pool then stays in host memory)
#   --no-tensorrt  do not check the TensorRT provider even if TensorRT is installed
#
# Detection reads these, each overridable (the tests fake a board with them): LR_JETSON_ROOT (the
# prefix of etc/nv_tegra_release and usr/local/cuda, default /), LR_JETSON_PYTHON (default python3),
# and PATH (nvcc, dpkg). An unsupported combination is refused in one line with exit code 2.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
ROOT=${LR_JETSON_ROOT:-}
PY=${LR_JETSON_PYTHON:-python3}
VENV=${LR_JETSON_VENV:-$HOME/.venvs/latent-replay}

# Wheel sources. JetPack 6 (CUDA 12.6): the Jetson AI Lab index, as jetson-containers' maintainers give it
# (pip install onnxruntime-gpu --index-url .../jp6/cu126). JetPack 5 (CUDA 11.4): jetson-containers' jp5
# index (onnxruntime_gpu 1.16.3 seen there) -- MUST BE CHECKED: it was seen under the older .dev domain;
# the Jetson Zoo page lists NVIDIA's own JetPack 5 wheels up to 1.18 (download one, pass --wheel FILE).
JP6_INDEX=${LR_JETSON_JP6_INDEX:-https://pypi.jetson-ai-lab.io/jp6/cu126}
JP5_INDEX=${LR_JETSON_JP5_INDEX:-https://pypi.jetson-ai-lab.dev/jp5/cu114}
JETSON_ZOO=https://elinux.org/Jetson_Zoo#ONNX_Runtime

DRY=0 INDEX_OVERRIDE="" WHEEL="" PYCUDA=1 TRT_CHECK=1
die() { echo "install.sh: error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY=1 ;;
        --venv) VENV=${2:?--venv needs a folder}; shift ;;
        --index-url) INDEX_OVERRIDE=${2:?--index-url needs a URL}; shift ;;
        --wheel) WHEEL=${2:?--wheel needs a file or URL}; shift ;;
        --no-pycuda) PYCUDA=0 ;;
        --no-tensorrt) TRT_CHECK=0 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
[ -z "$INDEX_OVERRIDE" ] || [ -z "$WHEEL" ] || die "give --index-url or --wheel, not both"

# -- detection ---------------------------------------------------------------------------------------
PACKAGES=$(dpkg -l 2>/dev/null | awk '$1 == "ii" {print $2, $3}' || true)
package_version() {  # REGEX: the version of the first installed package whose name matches
    echo "$PACKAGES" | awk -v re="^($1)(:arm64)?\$" '$1 ~ re {print $2; exit}'
}
L4T=""
if [ -f "$ROOT/etc/nv_tegra_release" ]; then  # "# R35 (release), REVISION: 4.1, GCID: ..."
    L4T=$(sed -n 's/^# R\([0-9]*\) (release), REVISION: \([0-9.]*\),.*/\1.\2/p' "$ROOT/etc/nv_tegra_release" | head -1)
fi
[ -n "$L4T" ] || L4T=$(package_version nvidia-l4t-core | sed 's/-.*//')
[ -n "$L4T" ] || die "not a Jetson: no $ROOT/etc/nv_tegra_release and no nvidia-l4t-core package; on a PC use pip install \".[gpu]\" or \".[cpu]\""

NVCC=$(command -v nvcc || true)
[ -n "$NVCC" ] || { [ -x "$ROOT/usr/local/cuda/bin/nvcc" ] && NVCC=$ROOT/usr/local/cuda/bin/nvcc; } || true
CUDA=""
[ -z "$NVCC" ] || CUDA=$("$NVCC" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p' | head -1)
CUDA_HOME=$(cd "$(dirname "${NVCC:-/usr/local/cuda/bin/nvcc}")/.." 2>/dev/null && pwd || echo /usr/local/cuda)
CUDNN=$(package_version 'libcudnn[0-9]+(-cuda-[0-9]+)?' | sed 's/-.*//')
TENSORRT=$(package_version 'tensorrt|libnvinfer[0-9]+' | sed 's/-.*//')
PYV=$("$PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null || true)
[ -n "$PYV" ] || die "no Python at $PY (set LR_JETSON_PYTHON)"
PYMM=${PYV%.*}

jetpack_of() {  # L4T release -> JetPack release (the known ones; else MAJOR.x)
    case $1 in
        32.*) echo 4.x ;;
        35.1*) echo 5.0.2 ;; 35.2.1) echo 5.1 ;; 35.3.1) echo 5.1.1 ;; 35.4.1) echo 5.1.2 ;;
        35.5.0) echo 5.1.3 ;; 35.6.0) echo 5.1.4 ;; 35.*) echo 5.1.x ;;
        36.3*) echo 6.0 ;; 36.4.0) echo 6.1 ;; 36.4.3) echo 6.2 ;; 36.4.4) echo 6.2.1 ;; 36.*) echo 6.x ;;
        38.*) echo 7.x ;; *) echo unknown ;;
    esac
}
JETPACK=$(jetpack_of "$L4T")
echo "detected: L4T R$L4T (JetPack $JETPACK); CUDA ${CUDA:-none (no nvcc)}; cuDNN ${CUDNN:-none}; TensorRT ${TENSORRT:-none}; Python $PYV ($PY)"

# -- the wheel source for this JetPack ----------------------------------------------------------------
case $JETPACK in
    5.*) WANT_PY=3.8 WANT_CUDA=11 INDEX=$JP5_INDEX ORT="onnxruntime-gpu>=1.16,<=1.18.1" ;;
    6.*) WANT_PY=3.10 WANT_CUDA=12.6 INDEX=$JP6_INDEX ORT="onnxruntime-gpu>=1.17,<1.24" ;;
    4.*) die "JetPack $JETPACK (L4T R$L4T, Python $PYV) is not supported: its onnxruntime-gpu builds end at 1.11 for Python 3.6, and the step graph needs onnxruntime >= 1.16 on Python >= 3.8 (JetPack 5 or 6)" ;;
    *) die "JetPack $JETPACK (L4T R$L4T) is not supported yet: this script knows JetPack 5 (L4T R35) and 6 (L4T R36)" ;;
esac
[ "$PYMM" = "$WANT_PY" ] || die "JetPack $JETPACK's onnxruntime-gpu wheels are for Python $WANT_PY, not $PYV ($PY): run it with JetPack's python3 (LR_JETSON_PYTHON=python$WANT_PY)"
[ -n "$CUDA" ] || die "no CUDA toolkit: nvcc is neither on PATH nor in $ROOT/usr/local/cuda/bin (JetPack's CUDA: sudo apt install nvidia-jetpack)"
if [ -n "$WHEEL" ]; then
    SOURCE="the wheel $WHEEL"
elif [ -n "$INDEX_OVERRIDE" ]; then
    INDEX=$INDEX_OVERRIDE SOURCE="the index $INDEX_OVERRIDE (--index-url)"
else
    case $CUDA in
        "$WANT_CUDA"|"$WANT_CUDA".*) ;;
        *) die "JetPack $JETPACK with CUDA $CUDA: the wheels of $INDEX are built for CUDA $WANT_CUDA; upgrade JetPack (6.1+ has CUDA 12.6), or pass --index-url / --wheel for a build that matches CUDA $CUDA" ;;
    esac
    SOURCE="the index $INDEX"
fi
echo "onnxruntime: $ORT from $SOURCE (JetPack $JETPACK, Python $WANT_PY); the Jetson Zoo's wheels: $JETSON_ZOO"

# -- the steps ------------------------------------------------------------------------------------------
quote() {  # ARGS...: one shell-readable line
    local out="" a
    for a in "$@"; do
        case $a in *[!A-Za-z0-9_./:=@+-]*|"") a="'${a//\'/\'\\\'\'}'" ;; esac
        out+="${out:+ }$a"
    done
    echo "$out"
}
STEP=0
run() {  # WHAT -- CMD...: show the step; run it unless --dry-run
    local what=$1; shift 2
    STEP=$((STEP + 1))
    echo "step $STEP: $what"
    echo "  + $(quote "$@")"
    [ "$DRY" = 1 ] || "$@" || { echo "install.sh: error: step $STEP failed: $what" >&2; exit 1; }
}
VPY=$VENV/bin/python
CHECK_CV2='import re, sys, cv2; ok = re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()); print("OpenCV", cv2.__version__, "GStreamer", "YES" if ok else "NO"); sys.exit(0 if ok else 1)'

run "a virtual environment that sees JetPack's OpenCV and numpy" -- "$PY" -m venv --system-site-packages "$VENV"
run "a current pip" -- "$VPY" -m pip install --upgrade pip
if [ -n "$WHEEL" ]; then
    run "onnxruntime-gpu for JetPack $JETPACK" -- "$VPY" -m pip install "numpy<2" "$WHEEL"
else
    run "onnxruntime-gpu for JetPack $JETPACK" -- "$VPY" -m pip install "numpy<2" "$ORT" --extra-index-url "$INDEX"
fi
run "latent-replay (it brings no onnxruntime of its own)" -- "$VPY" -m pip install "$REPO"
run "JetPack's OpenCV instead of the pip wheel (GStreamer pipelines)" -- "$VPY" -m pip uninstall -y opencv-python-headless opencv-python
run "OpenCV has GStreamer (else: sudo apt install nvidia-opencv)" -- "$VPY" -c "$CHECK_CV2"
if [ "$PYCUDA" = 1 ]; then
    run "pycuda against CUDA $CUDA (the replay pool in GPU memory)" -- \
        env "CUDA_ROOT=$CUDA_HOME" "PATH=$CUDA_HOME/bin:$PATH" "$VPY" -m pip install pycuda
fi
DOCTOR=("$VENV/bin/latent-replay" doctor --device cuda --json "$VENV/doctor.json")
WHAT="a training step really runs on the CUDA provider"
if [ "$TRT_CHECK" = 1 ] && [ -n "$TENSORRT" ]; then
    DOCTOR+=(--tensorrt)
    WHAT="$WHAT, the front on TensorRT $TENSORRT"
fi
run "$WHAT" -- "${DOCTOR[@]}"
if [ "$DRY" = 1 ]; then
    echo "dry run: nothing was changed"
else
    echo "installed in $VENV: . $VENV/bin/activate; the doctor's report is $VENV/doctor.json"
fi
