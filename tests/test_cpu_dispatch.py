"""CPU dispatch: the C++ kernels are built for several instruction sets (CMakeLists.txt, "CPU
capabilities") and one is chosen when lqkernels._C loads.

- every capability this CPU runs gives the same answers: bit-identical masks, power sums and
  products within float rounding (the whole suite also runs once per capability in `make test`,
  with LQK_CPU_CAPABILITY, against the float64 references);
- LQK_CPU_CAPABILITY and set_cpu_capability choose a capability, and refuse names that are unknown
  or that the CPU cannot run with a clear error, never a crash;
- the module built by default is portable: wide instructions (AVX, AVX2, AVX-512, BMI2, ...) occur
  only in functions of the capability namespaces lqk::cpu_avx2 / lqk::cpu_avx512, which run only on
  CPUs that have them, so the module loads and runs on any x86-64-v2 CPU.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from lqkernels import _backend, nn as lqnn, ops

pytestmark = pytest.mark.skipif(_backend.native is None, reason="lqkernels._C did not load")

SUPPORTED = _backend.native.cpu_capabilities().split(",") if _backend.native is not None else []


@pytest.fixture
def restore_capability():
    before = _backend.cpu_capability()
    yield
    _backend.set_cpu_capability(before)


def test_capabilities_reported():
    assert SUPPORTED[0] == "default"
    assert set(SUPPORTED) <= set(_backend.CPU_CAPABILITIES)
    expected = os.environ.get("LQK_CPU_CAPABILITY") or SUPPORTED[-1]
    assert _backend.cpu_capability() == expected
    if platform.machine() in ("x86_64", "AMD64"):
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        assert ("avx2" in SUPPORTED) == (" avx2 " in flags and " fma " in flags and " bmi2 " in flags)
        assert ("avx512" in SUPPORTED) == all(f" {f} " in flags for f in ("avx512f", "avx512bw", "avx512vl",
                                                                         "avx512dq", "avx512cd"))


def test_info_names_the_capability():
    from lqkernels import info
    assert f"kernels run with {_backend.cpu_capability()}" in info.report()
    assert info.native_built()["cpu_capability"] == _backend.cpu_capability()


@pytest.mark.parametrize("name", ["avx3", "", "AVX2", "native"])
def test_unknown_capability_rejected(name, restore_capability):
    with pytest.raises(ValueError, match="unknown capability"):
        _backend.set_cpu_capability(name)
    assert _backend.cpu_capability() == _backend.native.cpu_capability()


def test_environment_variable_chooses_and_rejects():
    env = dict(os.environ, LQK_CPU_CAPABILITY="default")
    code = "from lqkernels import _backend; print(_backend.cpu_capability())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "default"
    env["LQK_CPU_CAPABILITY"] = "avx1024"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "LQK_CPU_CAPABILITY=avx1024" in bad.stderr and "ImportError" in bad.stderr


def test_capability_the_cpu_lacks_is_an_error(restore_capability):
    lacking = [c for c in ("avx2", "avx512") if c not in SUPPORTED]
    if not lacking:
        # The C++ check itself: a name this build never compiled is refused the same way.
        with pytest.raises(ValueError, match="unknown CPU capability 'sse2'"):
            _backend.native.set_cpu_capability("sse2")
        return
    with pytest.raises(ValueError, match="this CPU cannot run"):
        _backend.set_cpu_capability(lacking[0])


def _results(gen_seed: int) -> dict[str, torch.Tensor]:
    """Every CPU kernel on one set of inputs (float32 and bfloat16, masked, ties, long and short rows)."""
    g = torch.Generator().manual_seed(gen_seed)
    w = torch.randn(37, 1000, generator=g)
    w[:, ::7] = w[:, 3:4]  # ties
    mask = torch.rand(37, 1000, generator=g) < 0.7
    k = torch.randint(0, 600, (37,), generator=g)
    out = {}
    for q in (0.3, 0.5, 1.0, 2.0, 1.7):
        out[f"norm{q}"] = ops.lq_norm(w, q, dim=1, backend="cpp")
        out[f"norm{q}-masked"] = ops.lq_norm(w, q, dim=1, mask=mask, backend="cpp")
    out["norm-whole"] = ops.lq_norm(w.bfloat16(), 0.5, backend="cpp")
    out["gini"] = ops.gini(w, dim=1, backend="cpp")
    out["topk"] = ops.topk_mask(w, k, dim=1, backend="cpp")
    out["topk-masked"] = ops.topk_mask(w, k.clamp(max=500), dim=1, mask=mask, backend="cpp")
    out["topk-bf16"] = ops.topk_mask(w.bfloat16(), k, dim=1, backend="cpp")
    out["nm"] = ops.nm_mask(w, 2, 4, backend="cpp")
    out["global"] = torch.cat([m.flatten() for m in ops.global_topk_masks([w, w[:5] * 2], 9000, backend="cpp")])
    for fmt in ("bitmap", "csr16"):
        for dtype in (torch.float32, torch.bfloat16):
            layer = lqnn.SparseLinear.from_linear(_linear(w, mask, w[:, 0], dtype), format=fmt, backend="cpp")
            for batch in (1, 3, 8, 40):
                x = torch.randn(batch, 1000, generator=g).to(dtype)
                out[f"{fmt}-{dtype}-{batch}"] = layer(x)
    return out


def _linear(w: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype) -> torch.nn.Linear:
    linear = torch.nn.Linear(w.shape[1], w.shape[0], dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(w * mask)
        linear.bias.copy_(bias)
    return linear


def test_every_capability_gives_the_same_answers(restore_capability):
    """Masks bit-identical; sums and products within the rounding of a different summation order."""
    answers = {}
    for capability in SUPPORTED:
        _backend.set_cpu_capability(capability)
        answers[capability] = _results(1234)
    reference = answers["default"]
    for capability, got in answers.items():
        for name, value in got.items():
            if value.dtype == torch.bool:
                assert torch.equal(value, reference[name]), (capability, name)
            else:
                # Sums of up to 1000 terms in another order (and with or without FMA).
                eps = torch.finfo(value.dtype).eps
                atol = 4 * eps * (1 + reference[name].abs().max().item()) * 1000 ** 0.5
                torch.testing.assert_close(value, reference[name], rtol=4 * eps, atol=atol,
                                           msg=f"{capability} {name}")


# ---- the portable build: no wide instruction outside the capability namespaces -----------------

# VEX/EVEX-encoded instructions (AVX and later) start with "v"; the others need BMI1/2, LZCNT,
# MOVBE or AVX-512 mask registers. (tzcnt is not listed: it runs as bsf on older CPUs, and GCC emits
# it for std::countr_zero at the baseline.)
WIDE = re.compile(r"^(v[a-z0-9]+|shlx|shrx|sarx|rorx|andn|bzhi|pdep|pext|blsr|blsi|blsmsk|lzcnt|mulx|movbe|k[a-z]+[bwdq])$")
CAPABILITY_NAMESPACES = ("cpu_avx2", "cpu_avx512")  # as they appear in mangled names too


def wide_functions_outside_capabilities(module: str) -> tuple[dict[str, str], int]:
    """(function -> first wide instruction) for the module's global and weak functions outside the
    capability namespaces, and how many functions inside them hold wide instructions.

    Only global and weak symbols matter: where several objects define the same inline function the
    linker keeps one copy for all callers, and the default kernels must not call an AVX copy. Local
    symbols (including compiler clones such as `.isra`) are called only from their own object."""
    binding = {}
    for line in subprocess.run(["nm", "--defined-only", module], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        parts = line.split()
        if len(parts) == 3:
            binding[parts[2]] = parts[1]
    disassembly = subprocess.run(["objdump", "-d", "--no-show-raw-insn", module], capture_output=True, text=True,
                                 check=True).stdout
    offenders, inside, function = {}, set(), None
    for line in disassembly.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            function = header.group(1)
            continue
        fields = line.split("\t")
        if function is None or len(fields) < 2 or not fields[1].split():
            continue
        if WIDE.match(fields[1].split()[0]):
            if any(ns in function for ns in CAPABILITY_NAMESPACES):
                inside.add(function)
            elif binding.get(function, "?") not in "tbdr" and function not in offenders:
                offenders[function] = line.strip()
    return offenders, len(inside)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 instruction sets")
@pytest.mark.skipif(not (shutil.which("objdump") and shutil.which("nm")), reason="needs binutils")
def test_portable_module_has_wide_instructions_only_in_capability_kernels():
    if _backend.native.cpu_arch != "x86-64-v2":
        pytest.skip(f"built for -march={_backend.native.cpu_arch} (LQK_CPU_ARCH), not portable by request")
    offenders, inside = wide_functions_outside_capabilities(_backend.native.__file__)
    assert not offenders, "wide instructions where the baseline runs:\n" + "\n".join(
        f"{f}: {i}" for f, i in list(offenders.items())[:20])
    assert inside > 50, "the scan found no AVX code in the capability kernels: is the disassembly parsed?"


# ---- aarch64: the portable copy must keep compiling (no ARM machine runs the suite here) -----

AARCH64_CXX = shutil.which("aarch64-linux-gnu-g++")


@pytest.mark.skipif(AARCH64_CXX is None, reason="needs a cross compiler (Debian: g++-aarch64-linux-gnu)")
def test_cpu_sources_compile_for_aarch64(tmp_path):
    """Every C++ source of the module but the CUDA bindings, as CMakeLists.txt builds it on aarch64
    (the default capability only, the compiler's default -march), compiles without warnings."""
    root = Path(__file__).resolve().parents[1]
    torch_dir = Path(torch.__file__).parent
    sources = sorted((root / "csrc").glob("*.cpp")) + sorted((root / "csrc" / "cpu").glob("*.cpp"))
    flags = ["-std=c++20", "-O1", "-fopenmp", "-Wall", "-Werror", "-DCPU_CAPABILITY=cpu_default",
             f"-I{root / 'csrc'}", f"-I{torch_dir / 'include'}", f"-I{torch_dir / 'include/torch/csrc/api/include'}",
             f"-I{sysconfig.get_paths()['include']}"]
    for source in sources:
        result = subprocess.run([AARCH64_CXX, *flags, "-c", str(source), "-o", str(tmp_path / "out.o")],
                                capture_output=True, text=True)
        assert result.returncode == 0, f"{source.name}:\n{result.stderr[-3000:]}"
