#!/usr/bin/env bash
# One-shot check on a GPU machine: build the extension there (against that machine's torch),
# run the CUDA tests under each kernel path, run small cases under compute-sanitizer (memcheck,
# racecheck), run the operator benchmark on the detection shapes, and, when detectron2's wheels
# are carried in .whl/, the end-to-end training benchmark (native / fast / fast_fused / frozen BN,
# AMP off and on). Logs and JSON go to $OUT (default ./output/gpu_check).
#   usage: bash tools/gpu_check.sh [--quick]      (about 6-8 minutes on an H100/H200)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-output/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
QUICK=${1:-}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
status=0
step() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/machine.txt"
"$PY" -c "import torch;print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" | tee -a "$OUT/machine.txt"

step "build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
rm -rf build gn_detectron/_C*.so
if ! "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
grep -E "registers|spill|stack" "$OUT/build.log" | sort | uniq -c | sort -rn | head -5
"$PY" -c "import gn_detectron.ops as o, json; print(json.dumps(o.backend_info(), indent=1))" | tee -a "$OUT/machine.txt"

step "tests (path auto, all cuda tests incl. slow)"
GN_DETECTRON_CUDA_PATH=auto timeout 300 "$PY" -m pytest -q -p no:cacheprovider --maxfail=30 --tb=short \
  tests/test_ops_cuda.py tests/test_ops.py tests/test_double_backward.py tests/test_deform_conv.py \
  -k "cuda" > "$OUT/tests.log" 2>&1 || status=1
tail -3 "$OUT/tests.log"
for path in split; do
  step "tests (path $path)"
  GN_DETECTRON_CUDA_PATH=$path timeout 200 "$PY" -m pytest -q -p no:cacheprovider --tb=short \
    tests/test_ops_cuda.py tests/test_ops.py -k "cuda and not 2_pow_31" >> "$OUT/tests.log" 2>&1 || status=1
  tail -1 "$OUT/tests.log"
done
grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20

if [ "$QUICK" != "--quick" ] && command -v compute-sanitizer > /dev/null; then
  for run in memcheck/split memcheck/onepass racecheck/split racecheck/onepass; do
    tool=${run%/*}; path=${run#*/}
    step "compute-sanitizer $tool, path $path"
    GN_DETECTRON_CUDA_PATH=$path timeout 90 compute-sanitizer --tool $tool --error-exitcode 9 \
      "$PY" tools/sanitizer_case.py >> "$OUT/sanitizer.log" 2>&1
    rc=$?; echo "$tool/$path: exit $rc"; [ $rc -eq 0 ] || status=1
  done
  grep -E "ERROR SUMMARY|Error" "$OUT/sanitizer.log" | sort | uniq -c | head
fi

step "host overhead per call"
"$PY" tools/overhead_gn.py 2>&1 | tee "$OUT/overhead.log"

step "benchmark"
timeout 300 "$PY" tools/benchmark_gn.py --device cuda --json "$OUT/benchmark_gn.json" > "$OUT/benchmark.log" 2>&1 || status=1
cat "$OUT/benchmark.log"
if ls .whl/sal_detectron2-*.whl > /dev/null 2>&1; then
  # detectron2 is not on the GPU machine: its wheels travel in .whl/ (run with carry [".whl"]).
  step "end-to-end training benchmark (tools/gpu_train_benchmark.sh)"
  OUT="$OUT/train" timeout 420 bash tools/gpu_train_benchmark.sh > "$OUT/train_benchmark.log" 2>&1 || status=1
  tail -22 "$OUT/train_benchmark.log"
fi
step "done: status $status"
exit $status
