"""Shared fixtures of the lqkernels tests: the (device, backend) pairs this machine can run, and a
reproducible random generator per test.

Triton kernels run on CPU tensors only under Triton's interpreter, which must be switched on
before triton is imported: the Makefile sets TRITON_INTERPRET=1 for the whole test run, and the
tests never set it themselves. The interpreter is slow (~20 ms per program, one program per row)
and has no bfloat16, so tests give it tiny shapes and skip bfloat16
(lqkernels._triton.interpreted() says whether it is on).
"""
from __future__ import annotations

import hashlib

import pytest
import torch

import lqkernels  # noqa: F401  (registers torch.ops.lqkernels.*)
from lqkernels import _backend

DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
KERNEL_BACKENDS = ("cpp", "cuda", "triton", "torch")
MEASURE_KERNELS = ("row_powsum", "row_gini")  # the kernel-level ops behind lqkernels.measures


def available_pairs(devices=DEVICES, backends=KERNEL_BACKENDS, kernels=MEASURE_KERNELS):
    """Every (device, backend) that runs `kernels` here, e.g. [("cpu", "cpp"), ("cpu", "torch")]."""
    return [(dev, b) for dev in devices for b in backends
            if all(_backend.available(b, dev, op) is None for op in kernels)]


def pytest_generate_tests(metafunc):
    # `device_backend`: every available pair; `cpu_backend`: the CPU ones only (cheap checks).
    if "device_backend" in metafunc.fixturenames:
        pairs = available_pairs()
        metafunc.parametrize("device_backend", pairs, ids=[f"{d}-{b}" for d, b in pairs])
    if "cpu_backend" in metafunc.fixturenames:
        names = [b for _, b in available_pairs(devices=("cpu",))]
        metafunc.parametrize("cpu_backend", names)


@pytest.fixture(params=["short-rows", "long-rows"])
def triton_rows(request, monkeypatch):
    """Runs a test once more for Triton with every row taken as long: the power sums' chunked
    kernel and the top-k's blockwise one, which only rows longer than ROW_ON_CHIP (16384) reach,
    get the same checks as the on-chip kernels. The test's backend: its `backend` parameter, or the
    second of `device_backend`."""
    if request.param == "long-rows":
        params = request.node.callspec.params
        if params.get("backend", params.get("device_backend", (None, None))[1]) != "triton":
            pytest.skip("only Triton has a second kernel for long rows")
        from lqkernels._triton import measures as triton_measures
        monkeypatch.setattr(triton_measures, "ROW_ON_CHIP", 0)
    return request.param


def seed_of(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


@pytest.fixture
def gen(request) -> torch.Generator:
    """A CPU generator seeded from the test's node id: each test (and each parametrization) draws
    its own inputs, and a failure reproduces exactly on a rerun. Draw on the CPU, then move."""
    return torch.Generator().manual_seed(seed_of(request.node.nodeid))
