"""Backend choice, in one place: an explicit `backend=` argument, else the LQK_BACKEND variable,
else "auto" (CPU tensors: the C++ kernels; CUDA tensors: whichever of the CUDA C++ and Triton
kernels the GPU benchmarks found faster; the PyTorch reference where neither was built)."""
from __future__ import annotations

import importlib
import os
import warnings

import torch

from lqkernels import _ops, _triton

BACKENDS = ("auto", "cpp", "cuda", "triton", "torch")

# Kernel-level op name -> its PyTorch reference.
REFERENCES = {
    "row_powsum": _ops.row_powsum_reference,
    "row_gini": _ops.row_gini_reference,
    "row_topk_mask": _ops.row_topk_mask_reference,
    "global_topk_masks": _ops.global_topk_masks_reference,
    "bitmap_linear": _ops.bitmap_linear_reference,
    "csr16_linear": _ops.csr16_linear_reference,
    "bsr_linear": _ops.bsr_linear_reference,
}

# On CUDA tensors, "auto" picks this backend per op. Measured on an H200 (benchmarks/RESULTS.md,
# "H200"): CUDA C++ wins pq_index, whole-tensor norms, global selection, N:M groups and every
# sparse-linear point; Triton wins single-exponent row norms and long-row top-k. (Those Triton
# numbers predate its on-chip power sums and its own N:M kernel, which no GPU has run yet: auto
# keeps to what was measured.)
AUTO_CUDA = {op: "cuda" for op in REFERENCES}
AUTO_CUDA["bsr_linear"] = "triton"  # block-sparse tiles need tl.dot's tensor cores; no CUDA C++ kernel

# The Triton kernel families (lqkernels/_triton/<family>.py); each defines ops <op>_triton.
TRITON_FAMILIES = ("measures", "selection", "sparse_linear")


def _load_native():
    try:
        return importlib.import_module("lqkernels._C"), None
    except ImportError as err:  # a source checkout that was never built, say
        return None, err


native, native_error = _load_native()
if native is None:
    warnings.warn(f"lqkernels: native kernels unavailable ({native_error}); using the PyTorch reference",
                  stacklevel=2)

# The C++ CPU kernels are built for several instruction sets; the module runs the best one the
# CPU supports unless LQK_CPU_CAPABILITY names a lower one (to test or measure the other paths).
CPU_CAPABILITIES = ("default", "avx2", "avx512")


def cpu_capability() -> str | None:
    """The instruction set the C++ CPU kernels run with ("default", "avx2" or "avx512"); None
    without the native module."""
    return native.cpu_capability() if native is not None else None


def set_cpu_capability(name: str) -> None:
    """Runs the C++ CPU kernels built for `name` from now on. ValueError if `name` is not one of
    CPU_CAPABILITIES, was not built (only "default" off x86-64) or this CPU lacks it."""
    if native is None:
        raise RuntimeError(f"set_cpu_capability: lqkernels._C did not load: {native_error}")
    if name not in CPU_CAPABILITIES:
        raise ValueError(f"set_cpu_capability: unknown capability {name!r}; choose one of {CPU_CAPABILITIES}")
    native.set_cpu_capability(name)


if native is not None and os.environ.get("LQK_CPU_CAPABILITY"):
    try:
        set_cpu_capability(os.environ["LQK_CPU_CAPABILITY"])
    except ValueError as err:
        raise ImportError(f"LQK_CPU_CAPABILITY={os.environ['LQK_CPU_CAPABILITY']}: {err}") from None


def _load_triton() -> dict:
    """Imports every Triton family (registering its ops); returns the import errors by family."""
    errors = {}
    for family in TRITON_FAMILIES:
        try:
            importlib.import_module(f"lqkernels._triton.{family}")
        except Exception as err:  # no triton, or one too old for these kernels
            errors[family] = err
    return errors


triton_errors = _load_triton()


def available(backend: str, device_type: str, op: str) -> str | None:
    """None if `backend` can run `op` on `device_type` tensors, else the reason it cannot."""
    if backend == "torch":
        return None
    if backend == "cpp":
        if device_type != "cpu":
            return f"backend 'cpp' runs on CPU tensors, not {device_type}"
        return None if native is not None else f"lqkernels._C did not load: {native_error}"
    if backend == "cuda":
        if device_type != "cuda":
            return f"backend 'cuda' runs on CUDA tensors, not {device_type}"
        if native is None:
            return f"lqkernels._C did not load: {native_error}"
        return None if native.with_cuda else "lqkernels._C was built without CUDA kernels"
    if backend == "triton":
        if not hasattr(torch.ops.lqkernels, f"{op}_triton"):
            return f"no Triton kernel for {op} ({'; '.join(map(str, triton_errors.values())) or 'not written'})"
        if device_type == "cuda" or (device_type == "cpu" and _triton.interpreted()):
            return None
        return f"backend 'triton' runs on CUDA tensors (CPU only under TRITON_INTERPRET=1), not {device_type}"
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


def auto_backend(op: str, device_type: str) -> str:
    if device_type == "cpu" and native is not None:
        return "cpp"
    if device_type == "cuda":
        for candidate in (AUTO_CUDA[op], "cuda", "triton"):
            if available(candidate, "cuda", op) is None:
                return candidate
    return "torch"


def resolve(op: str, backend: str | None, device: torch.device) -> str:
    """The backend that serves `op` on `device` tensors; a clear error if the requested one can't."""
    requested = backend if backend is not None else os.environ.get("LQK_BACKEND", "auto")
    if requested not in BACKENDS:
        source = "backend" if backend is not None else "LQK_BACKEND"
        raise ValueError(f"unknown {source} {requested!r}; choose one of {BACKENDS}")
    if requested == "auto":
        return auto_backend(op, device.type)
    reason = available(requested, device.type, op)
    if reason is not None:
        raise RuntimeError(f"{op}: {reason}")
    return requested


def kernel(op: str, backend: str):
    """The callable implementing kernel-level `op` with `backend` (already resolved)."""
    if backend == "torch":
        return REFERENCES[op]
    if backend == "triton":
        return getattr(torch.ops.lqkernels, f"{op}_triton")
    return getattr(torch.ops.lqkernels, op)  # the dispatcher picks the CPU or CUDA kernel
