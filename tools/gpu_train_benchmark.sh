#!/usr/bin/env bash
# End-to-end training benchmark on a GPU machine that has torch but no detectron2: installs the
# wheels carried in .whl/ (detectron2's sal-detectron2 0.7.2 and its missing dependencies; see
# docs/PERFORMANCE.md for how to fetch them), builds the extension, and runs
# tools/benchmark_train.py (R50-FPN Mask R-CNN with GN, 2 images of 800x1333, AMP off and on).
# Writes logs and JSON to $OUT (default output/gpu_train).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-output/gpu_train}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SITE=${GN_SITE:-/tmp/gn_site}
export PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
mkdir -p "$SITE"
"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" $(ls .whl/*.whl | grep -v detectron2) || exit 1
"$PY" -m zipfile -e .whl/sal_detectron2-*.whl "$SITE"   # a pure-Python wheel (tagged cp310): unpacked as is
export PYTHONPATH="$SITE"
"$PY" -c "import detectron2.modeling, detectron2.solver; print('detectron2', detectron2.__version__)" || exit 1
if ! ls gn_detectron/_C*.so > /dev/null 2>&1; then
  "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
fi
"$PY" tools/benchmark_train.py --warmup ${WARMUP:-3} --iters ${ITERS:-10} --json "$OUT/benchmark_train.json" 2>&1 \
  | grep -v -i "warn" | tee "$OUT/benchmark_train.log"
