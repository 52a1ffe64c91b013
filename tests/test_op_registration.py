"""The ops as PyTorch sees them: torch.library.opcheck on every kernel-level op (schema, fake
kernel, dispatch), torch.compile(fullgraph=True) over the public ops, and what `lqkernels._C` was
built with (`python -m lqkernels.info`); this last check fails the suite when the CUDA kernels
should have compiled and linked but did not."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

import lqkernels
from lqkernels import _backend, ops
from lqkernels.info import native_built

pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning",
                                        "ignore:invalid value encountered:RuntimeWarning")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_native = pytest.mark.skipif(_backend.native is None, reason="lqkernels._C not loaded")
QS_LISTS = ([0.5, 1.0, 2.0, 3.0], [1.7], [])


def kernel_ops(device: str) -> list[str]:
    """The kernel-level ops to check on `device` tensors: the native ops (their C++/CUDA kernel,
    or the reference where none was built) and the Triton ops where Triton can run."""
    return ["row_powsum", "row_gini"] + [f"{op}_triton" for op in ("row_powsum", "row_gini")
                                         if _backend.available("triton", device, op) is None]


def inputs(gen, dtype, device, masked, rows=5, n=17):
    x = torch.randn(rows, n, generator=gen, dtype=torch.float64).to(dtype).to(device)
    mask = (torch.rand(rows, n, generator=gen) < 0.7).to(device) if masked else None
    return x, mask


def run_opcheck(device, name, dtype, masked, gen):
    op = getattr(torch.ops.lqkernels, name).default
    rows = 2 if name.endswith("_triton") and device == "cpu" else 5  # the interpreter is slow
    x, mask = inputs(gen, dtype, device, masked, rows=rows)
    if name.startswith("row_powsum"):
        for qs in QS_LISTS:
            torch.library.opcheck(op, (x, mask, qs))
    else:
        torch.library.opcheck(op, (x, mask))


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", kernel_ops("cpu"))
def test_opcheck_cpu(name, dtype, masked, gen):
    run_opcheck("cpu", name, dtype, masked, gen)


@needs_cuda
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["row_powsum", "row_gini", "row_powsum_triton", "row_gini_triton"])
def test_opcheck_cuda(name, dtype, masked, gen):
    if name not in kernel_ops("cuda"):
        pytest.skip(f"{name} is not available on CUDA tensors here")
    if dtype == torch.bfloat16 and name.endswith("_triton") and lqkernels._triton.interpreted():
        pytest.skip("Triton's interpreter has no bfloat16")
    run_opcheck("cuda", name, dtype, masked, gen)


def test_reference_is_registered_for_every_device():
    # The PyTorch reference is the CompositeExplicitAutograd kernel: it serves the Meta device
    # (shapes only) and any device without a native kernel.
    x = torch.empty(4, 9, device="meta")
    sums, count, scale = torch.ops.lqkernels.row_powsum(x, None, [0.5, 2.0])
    assert sums.shape == (2, 4) and count.shape == (4,) and scale.shape == (4,)
    assert (sums.dtype, count.dtype, scale.dtype) == (torch.float32, torch.int64, torch.float32)
    assert torch.ops.lqkernels.row_gini(x.double(), None).dtype == torch.float64


def measure_everything(x, mask):
    return (ops.lq_norm(x, 0.5, dim=1, mask=mask),
            ops.lq_norm(x, float("inf"), dim=-1, keepdim=True, mask=mask),
            ops.pq_index(x, 0.5, 1.0, dim=1, mask=mask),
            ops.lq_powsum(x, [0.5, 2.0], dim=1, mask=mask),
            ops.hoyer(x, dim=1, mask=mask),
            ops.gini(x, dim=1, mask=mask),
            ops.sparsity_index(x, 0.5, dim=(0, 1), mask=mask))


def check_compiled_matches_eager(device, gen):
    torch._dynamo.reset()
    x = torch.randn(6, 50, generator=gen).to(device)
    mask = (torch.rand(6, 50, generator=gen) < 0.7).to(device)
    compiled = torch.compile(measure_everything, fullgraph=True)
    got, expected = compiled(x, mask), measure_everything(x, mask)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


def test_compile_fullgraph_cpu(gen):
    check_compiled_matches_eager("cpu", gen)


@needs_cuda
@pytest.mark.skipif(lqkernels._triton.interpreted(),
                    reason="TRITON_INTERPRET=1 would run inductor's Triton kernels in the interpreter")
def test_compile_fullgraph_cuda(gen):
    check_compiled_matches_eager("cuda", gen)


def test_info_runs():
    done = subprocess.run([sys.executable, "-m", "lqkernels.info"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    for line in (f"lqkernels {lqkernels.__version__}", "_C loaded: True", "CUDA kernels built:"):
        assert line in done.stdout, done.stdout
    for op in ("lq_norm", "lq_powsum", "pq_index", "sparsity_index", "hoyer", "gini"):
        assert op in done.stdout


def test_native_kernels_built():
    # With nvcc on PATH and a CUDA build of torch, the build must have compiled and linked the
    # CUDA kernels into lqkernels._C (LQK_NO_CUDA opts out); no GPU is needed to check that.
    built = native_built()
    assert built["loaded"], f"lqkernels._C did not load: {built['error']}"
    assert built["error"] is None
    if shutil.which("nvcc") and torch.version.cuda and "LQK_NO_CUDA" not in os.environ:
        assert built["with_cuda"], "nvcc and a CUDA build of torch are here, but _C has no CUDA kernels"
        assert built["cuda_archs"], "CUDA kernels built for no architecture"
    if built["with_cuda"]:
        # The CUDA kernels registered themselves with the dispatcher (no GPU needed to ask).
        for name in ("row_powsum", "row_gini"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lqkernels::{name}", "CUDA"), name
    for name in ("row_powsum", "row_gini"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lqkernels::{name}", "CPU"), name


@needs_native
def test_auto_backend_is_native():
    for op in ("row_powsum", "row_gini"):
        assert _backend.auto_backend(op, "cpu") == "cpp"
        if _backend.native.with_cuda:
            assert _backend.auto_backend(op, "cuda") in ("cuda", "triton")
