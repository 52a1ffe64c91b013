#!/usr/bin/env bash
# One script for a lent GPU (H200): build there, run the test suite on the GPU (CUDA and Triton
# kernels), then the GPU benchmarks. Under $OUT: check.log (everything) and one gpu_<family>.md
# table per benchmark (the device tool returns at most 8 files). Budget: about 8 minutes.
#   bash benchmarks/gpu_check.sh          (on the device machine, from the repository root)
set -uo pipefail
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
LOG="$OUT/check.log"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} MAX_JOBS=${MAX_JOBS:-16}
PY=${PY:-python3}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$LOG"

echo "== build" | tee -a "$LOG"
start=$SECONDS
if ! timeout 300 $PY -m pip install --no-build-isolation --no-deps -e . >> "$LOG" 2>&1; then
  tail -40 "$LOG"; exit 1
fi
echo "built in $((SECONDS - start)) s" | tee -a "$LOG"
$PY -m lqkernels.info 2>&1 | tee -a "$LOG"

echo "== tests on the GPU" | tee -a "$LOG"
timeout 240 $PY -m pytest tests -q -p no:cacheprovider -x 2>&1 | tee -a "$LOG" | tail -25

echo "== benchmarks" | tee -a "$LOG"
for bench in benchmarks/gpu_*.py; do
  name=$(basename "$bench" .py)
  [ "$name" = gpu_common ] && continue
  timeout 120 $PY "$bench" --out "$OUT/$name.md" >> "$LOG" 2>&1 || echo "$name failed (see check.log)"
  tail -30 "$OUT/$name.md" 2>/dev/null
done
