#!/usr/bin/env bash
# Runs a command as on a CPU with only the given instruction set: lqkernels' kernels
# (LQK_CPU_CAPABILITY) and the peers' (ATen's vectorised kernels, MKL's GEMM, oneDNN) alike, so
# that ratios measured on an AVX-512 machine stand for an AVX2 or baseline x86-64 one.
#   bash benchmarks/as_cpu.sh avx2 python -m pytest benchmarks/bench_measures.py --benchmark-only
set -euo pipefail
capability=${1:?usage: as_cpu.sh default|avx2|avx512 command...}
shift
case "$capability" in
  default) aten=default; mkl=SSE4_2; onednn=SSE41 ;;
  avx2) aten=avx2; mkl=AVX2; onednn=AVX2 ;;
  avx512) aten=avx512; mkl=AVX512; onednn=AVX512_CORE ;;
  *) echo "as_cpu.sh: unknown capability '$capability' (default, avx2 or avx512)" >&2; exit 2 ;;
esac
export LQK_CPU_CAPABILITY=$capability ATEN_CPU_CAPABILITY=$aten MKL_ENABLE_INSTRUCTIONS=$mkl ONEDNN_MAX_CPU_ISA=$onednn
exec "$@"
