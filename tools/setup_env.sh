#!/usr/bin/env bash
# Create (or complete) the project's virtual environment in .venv/ and build the extension.
# Each step is skipped when it is already done, so running this again is cheap.
#   - torch 2.14.1 + torchvision 0.29.1
#   - detectron2 (sal-detectron2 0.7.2, a cp310 wheel of upstream detectron2 a59f0563, installed with
#     `installer`), unless a working detectron2 is already importable in the venv
#   - detectron2's runtime dependencies, test tools
#   - the gn_detectron extension (C++ CPU kernels; CUDA kernels too when a CUDA toolkit is found:
#     FORCE_CUDA=1, so that they are compiled, and their errors caught, also without a GPU)
#
#   bash tools/setup_env.sh --detectron2-only
#     installs only detectron2 and its dependencies into an existing environment, the one of
#     `python3` on PATH (or $PYTHON), keeping its torch; nothing if detectron2 already imports there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1

log() { printf '[setup] %s\n' "$*"; }
# pip prints a warning for every local index folder it does not find; keep only the rest.
quiet_pip() { "$VPY" -m pip --disable-pip-version-check -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
pip_install() { quiet_pip install "$@"; }

# detectron2's run-time dependencies (installer does not install them).
D2_DEPS_IMPORTS="fvcore, iopath, pycocotools, yacs, omegaconf, hydra, termcolor, tabulate, cloudpickle, tqdm, matplotlib, tensorboard, PIL, cv2, packaging, pkg_resources"
D2_DEPS=("setuptools<81" fvcore iopath pycocotools yacs "omegaconf>=2.1,<2.4" hydra-core termcolor tabulate
         cloudpickle tqdm matplotlib tensorboard Pillow opencv-python-headless packaging)

install_detectron2() {
  if "$VPY" -c "import detectron2.modeling, detectron2.model_zoo" 2>/dev/null; then
    log "detectron2 already works in $("$VPY" -c 'import sys; print(sys.prefix)'): kept"
    return
  fi
  if ! "$VPY" -c "import $D2_DEPS_IMPORTS, installer" 2>/dev/null; then
    log "installing detectron2's dependencies"
    # an OpenCV that is there already (opencv-python, ...) is not doubled by the headless one
    local has_cv2=0 deps=() dep
    "$VPY" -c "import cv2" 2>/dev/null && has_cv2=1
    for dep in "${D2_DEPS[@]}"; do
      [ "$dep" = opencv-python-headless ] && [ $has_cv2 = 1 ] || deps+=("$dep")
    done
    pip_install "${deps[@]}" installer
  fi
  log "installing detectron2 (sal-detectron2 0.7.2 wheel through installer)"
  tmp=$(mktemp -d)
  quiet_pip download --no-deps --only-binary=:all: \
    --python-version 3.10 --implementation cp sal-detectron2==0.7.2 -d "$tmp"
  "$VPY" -m installer "$tmp"/sal_detectron2-0.7.2-*.whl
  rm -rf "$tmp"
  "$VPY" -W ignore -c "import detectron2.modeling, detectron2.model_zoo"
}

if [ "${1:-}" = "--detectron2-only" ]; then
  VPY=$(command -v "$PY")
  "$VPY" -c "import torch" 2>/dev/null || { echo "[setup] $VPY has no torch: install torch first" >&2; exit 1; }
  install_detectron2
  exit 0
elif [ -n "${1:-}" ]; then
  echo "usage: bash tools/setup_env.sh [--detectron2-only]" >&2; exit 2
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

if ! "$VPY" -c "import torch, torchvision, sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; then
  log "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION (a few minutes)"
  pip_install --upgrade pip
  pip_install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi

# detectron2's dependencies (installer does not install them) and the project's tools.
if ! "$VPY" -c "import $D2_DEPS_IMPORTS, pytest, ninja, installer, safetensors, timm, faster_coco_eval, onnx, onnxscript, onnxruntime" 2>/dev/null; then
  log "installing detectron2's dependencies and the test tools"
  pip_install "${D2_DEPS[@]}" wheel ninja installer pytest \
    safetensors timm faster-coco-eval onnx onnxscript onnxruntime
fi

install_detectron2

# The repository on the venv's path (an in-place "develop" install: edits take effect at once).
SITE=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
[ -f "$SITE/gn_detectron.pth" ] || echo "$ROOT" > "$SITE/gn_detectron.pth"

# The extension. Rebuilt by setuptools/ninja only when sources changed. Wherever a CUDA toolkit
# exists the CUDA kernels are compiled, GPU or not (FORCE_CUDA=1, detectron2's convention), unless
# GN_DETECTRON_CPU_ONLY=1.
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi
if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ] && [ "${GN_DETECTRON_CPU_ONLY:-0}" != 1 ]; then
  export FORCE_CUDA=${FORCE_CUDA:-1}
fi
log "building the gn_detectron extension (CUDA_HOME=${CUDA_HOME:-none}, FORCE_CUDA=${FORCE_CUDA:-0})"
"$VPY" setup.py -q build_ext --inplace 2>&1 | grep -v -E '^(copying|running)' || { echo "[setup] extension build failed" >&2; exit 1; }
GN_DETECTRON_FILTER_WARNINGS=1 "$VPY" -c "import gn_detectron.ops as o; print('[setup]', o.backend_info()['extension'])"
