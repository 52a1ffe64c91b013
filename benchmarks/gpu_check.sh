#!/usr/bin/env bash
# One script for a lent GPU (H200): build there, run the GPU tests (CUDA and Triton kernels), the
# GPU benchmarks, then the rest of the suite with what is left of the budget. Under $OUT: check.log
# (build, info, summaries), tests_gpu.log / tests_rest.log (failures in full) and one
# gpu_<family>.md table per benchmark, each written row by row (the device tool returns at most 8
# files). Budget: GPU_CHECK_BUDGET seconds in all (default 420); every step is cut to what is left.
# The claims are read from the returned tables where they land: python benchmarks/gpu_claims.py DIR.
#   bash benchmarks/gpu_check.sh          (on the device machine, from the repository root)
set -uo pipefail
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
LOG="$OUT/check.log"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} MAX_JOBS=${MAX_JOBS:-16}
PY=${PY:-python3}
# The device image's CXX (/opt/gcc) links libstdc++ statically, which torch extensions cannot use
# (CMakeLists.txt refuses such a module): build with the system compiler.
[ -x /usr/bin/g++ ] && export CC=/usr/bin/gcc CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++
DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET:-420}))
left() {  # seconds left, at least $1 and at most $2
  local s=$((DEADLINE - SECONDS)); [ "$s" -lt "$1" ] && s=$1; [ "$s" -gt "$2" ] && s=$2; echo "$s"
}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$LOG"
echo "== build" | tee -a "$LOG"
start=$SECONDS
if ! timeout 240 $PY -m pip install --no-build-isolation --no-deps -e . >> "$LOG" 2>&1; then
  tail -40 "$LOG"; exit 1
fi
echo "built in $((SECONDS - start)) s" | tee -a "$LOG"
$PY -m lqkernels.info 2>&1 | tee -a "$LOG"

# Parallel workers and a per-test limit where the plugins exist (the device image has both).
PYTEST=($PY -m pytest -q -p no:cacheprovider -rfE --tb=short)
$PY -c "import xdist" 2>/dev/null && PYTEST+=(-n 8)
$PY -c "import pytest_timeout" 2>/dev/null && PYTEST+=(--timeout 120)

echo "== GPU tests (every test with cuda in its id)" | tee -a "$LOG"
start=$SECONDS
timeout "$(left 60 200)" "${PYTEST[@]}" tests -k cuda > "$OUT/tests_gpu.log" 2>&1
echo "exit $? after $((SECONDS - start)) s: $(tail -1 "$OUT/tests_gpu.log")" | tee -a "$LOG"

echo "== benchmarks" | tee -a "$LOG"
for name in gpu_measures gpu_selection gpu_sparse_linear gpu_profile; do
  start=$SECONDS
  timeout 100 $PY "benchmarks/$name.py" --out "$OUT/$name.md" >> "$LOG" 2>&1
  echo "$name: exit $? after $((SECONDS - start)) s" | tee -a "$LOG"
done
# The decode step of a Llama-3-8B-shaped block, MLP pruned to ~70% (bfloat16, eager and CUDA graph).
start=$SECONDS
timeout 120 $PY benchmarks/decode_block.py --device cuda > "$OUT/decode_block.md" 2>> "$LOG"
echo "decode_block: exit $? after $((SECONDS - start)) s" | tee -a "$LOG"

echo "== the rest of the suite (CPU backends under this machine's torch and triton)" | tee -a "$LOG"
timeout "$(left 20 600)" "${PYTEST[@]}" tests -k "not cuda" > "$OUT/tests_rest.log" 2>&1
echo "exit $?: $(tail -1 "$OUT/tests_rest.log")" | tee -a "$LOG"
grep -h "^FAILED\|^ERROR" "$OUT"/tests_*.log | head -60
