"""Triton kernels, one file per kernel family. Each kernel is its own op `lqkernels::<name>_triton`
registered for CUDA, and for the CPU as well under TRITON_INTERPRET=1 (Triton's interpreter, used
by the tests on machines without a GPU; tiny shapes, no bfloat16)."""
import os


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def device_types():
    return ("cuda", "cpu") if interpreted() else "cuda"
