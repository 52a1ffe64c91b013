"""`python -m lqkernels.info`: versions, whether the native kernels loaded, and which backend
serves each op on each device type."""
from __future__ import annotations

import platform

import torch

import lqkernels
from lqkernels import _backend

# Public op -> the kernel-level op that does its pass over the data.
PUBLIC_OPS = {
    "lq_norm": "row_powsum", "lq_powsum": "row_powsum", "pq_index": "row_powsum",
    "sparsity_index": "row_powsum", "hoyer": "row_powsum", "gini": "row_gini",
    "topk_mask": "row_topk_mask", "topk_threshold": "row_topk_mask", "nm_mask": "row_topk_mask",
    "global_topk_masks": "global_topk_masks",
    "bitmap_linear": "bitmap_linear", "csr16_linear": "csr16_linear", "bsr_linear": "bsr_linear",
}


def native_built() -> dict:
    """What lqkernels._C was built with and runs: {'loaded', 'with_cuda', 'cuda_archs', 'cpu_arch'
    (the baseline -march), 'cpu_capability' (the instruction set the CPU kernels run with),
    'cpu_capabilities' (those built that this CPU supports), 'error'}."""
    native = _backend.native
    return {
        "loaded": native is not None,
        "with_cuda": bool(native and native.with_cuda),
        "cuda_archs": native.cuda_archs if native else "",
        "cpu_arch": native.cpu_arch if native else "",
        "cpu_capability": _backend.cpu_capability(),
        "cpu_capabilities": native.cpu_capabilities().split(",") if native else [],
        "error": None if native else str(_backend.native_error),
    }


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(("model name", "Model", "Hardware")):  # x86; ARM boards
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report() -> str:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    built = native_built()
    lines = [
        f"lqkernels {lqkernels.__version__}",
        f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"triton {triton_version}",
        f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}",
        f"_C loaded: {built['loaded']}" + (f" ({built['error']})" if built["error"] else ""),
        f"CPU: {cpu_model()}; kernels run with {built['cpu_capability']} (supported here: "
        f"{', '.join(built['cpu_capabilities']) or '-'}; baseline {built['cpu_arch'] or 'compiler default'}; "
        f"LQK_CPU_CAPABILITY to lower), {torch.get_num_threads()} threads",
        f"CUDA kernels built: {built['with_cuda']}" + (f" (archs {built['cuda_archs']})" if built["with_cuda"] else ""),
        "",
        f"{'op':<18}{'auto on cpu':<14}{'auto on cuda':<14}available backends (cpu / cuda)",
    ]
    for public, kernel in PUBLIC_OPS.items():
        avail = {dev: [b for b in _backend.BACKENDS[1:] if _backend.available(b, dev, kernel) is None]
                 for dev in ("cpu", "cuda")}
        lines.append(f"{public:<18}{_backend.auto_backend(kernel, 'cpu'):<14}"
                     f"{_backend.auto_backend(kernel, 'cuda'):<14}"
                     f"{','.join(avail['cpu'])} / {','.join(avail['cuda'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
