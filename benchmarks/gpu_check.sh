#!/usr/bin/env bash
# One script for a lent GPU (H200): build there, run the CUDA and Triton tests, then the GPU
# benchmarks; tables and logs go under $OUT. Budget: about 8 minutes.
#   bash benchmarks/gpu_check.sh          (on the device machine, from the repository root)
set -uo pipefail
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} MAX_JOBS=${MAX_JOBS:-16}
PY=${PY:-python3}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"

echo "== build"
start=$SECONDS
if ! timeout 300 $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; exit 1
fi
echo "built in $((SECONDS - start)) s"
$PY -m lqkernels.info | tee "$OUT/info.txt"

echo "== tests (CUDA and Triton on the GPU)"
timeout 240 $PY -m pytest tests -q -x -p no:cacheprovider -k "cuda or triton or registration" 2>&1 | tee "$OUT/tests.log" | tail -25

echo "== benchmarks"
timeout 240 $PY benchmarks/gpu_measures.py --out "$OUT/gpu_measures.md" > "$OUT/bench.log" 2>&1
tail -30 "$OUT/gpu_measures.md" 2>/dev/null || tail -30 "$OUT/bench.log"
