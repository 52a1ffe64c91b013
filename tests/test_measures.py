"""The measure ops of lqkernels.ops on every available backend, against a float64 reference
written here from the definitions (docs: docs/method.md §1), not the library's own.

Sections: the reference and the comparison rule; fresh random inputs over dtypes × shapes × dims ×
masks; edge cases (masks, zeros, empty, 0-d, non-contiguous, NaN, inf, extreme float32 and float64
magnitudes, long rows, inputs left unmodified); the paper's Hurley–Rickard vectors (the sparsity
properties are hypothesis tests in test_measure_properties.py); bad input; large shapes on a GPU.
"""
from __future__ import annotations

import math
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch

from lqkernels import _backend, ops
from lqkernels._triton import interpreted as _triton_interpreted

# Triton's interpreter evaluates both sides of tl.where: log2(0) and 0/0 warnings are expected.
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning",
                                        "ignore:invalid value encountered:RuntimeWarning")

INF, NAN = math.inf, math.nan
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
NORM_QS = (0.3, 0.5, 1.0, 1.7, 2.0, 3.0, INF)
POWSUM_QS = (0.3, 0.5, 1.0, 1.7, 2.0, 3.0)
PQ_PAIRS = ((0.5, 1.0), (1.0, 2.0), (0.3, INF))
SI_QS = (0.3, 0.5, 1.0, 2.0, INF)


def unavailable(backend: str, device: str) -> str | None:
    """Why `backend` cannot run the measures' kernels on `device` tensors (None if it can)."""
    reasons = [_backend.available(backend, device, op) for op in ("row_powsum", "row_gini")]
    return next((r for r in reasons if r is not None), None)


def interpreted(backend: str) -> bool:
    return backend == "triton" and _triton_interpreted()


def skip_unsupported(backend: str, dtype: torch.dtype) -> None:
    if dtype == torch.bfloat16 and interpreted(backend):
        pytest.skip("Triton's interpreter (numpy) has no bfloat16")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------------
# The float64 reference, straight from the formulas: S_r = Σ|x|^r over the survivors of each
# slice, d = their number, M_r = (S_r / d)^{1/r}, M_inf = max |x|. No rescaling: float64 holds the
# sums of every float32/float16/bfloat16 input the tests use (extreme float64 inputs are checked
# through exact power-of-two scaling instead).

class Reference:
    """float64 statistics of every slice of x over `dim`, counting only survivors of `mask`."""

    def __init__(self, x: torch.Tensor, dim=None, mask: torch.Tensor | None = None):
        a = x.detach().to(torch.float64).abs()
        m = torch.ones(a.shape, dtype=torch.bool, device=a.device) if mask is None else mask
        zero_dim = a.dim() == 0
        if zero_dim:  # torch reduces a 0-d tensor like a 1-element vector, and keeps it 0-d
            a, m = a.reshape(1), m.reshape(1)
        rank = a.dim()
        dims = list(range(rank)) if dim is None else [dim] if isinstance(dim, int) else list(dim)
        dims = sorted(d % rank for d in dims)
        kept = [d for d in range(rank) if d not in dims]
        self.shape = [a.shape[d] for d in kept]
        self.keep_shape = [] if zero_dim else [1 if d in dims else a.shape[d] for d in range(rank)]
        rows, n = math.prod(self.shape), math.prod([a.shape[d] for d in dims])
        m = m.permute(kept + dims).reshape(rows, n)
        self.m = m
        self.a = torch.where(m, a.permute(kept + dims).reshape(rows, n), 0.0)  # pruned: gone
        self.d = m.sum(1).to(torch.float64)
        self.max = self.a.amax(1) if n > 0 else self.a.new_zeros(rows)  # NaN propagates
        self.nan = self.a.isnan().any(1)

    def shaped(self, v: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
        return v.reshape(self.keep_shape if keepdim else self.shape)

    def S(self, r: float) -> torch.Tensor:
        return self.a.pow(r).sum(1)

    def M(self, r: float) -> torch.Tensor:
        return self.max if r == INF else (self.S(r) / self.d).pow(1 / r)

    def _index(self, value: torch.Tensor, defined: torch.Tensor) -> torch.Tensor:
        # 0 where undefined (empty, fully masked or all-zero slices), NaN for a slice with a NaN.
        return torch.where(self.nan, NAN, torch.where(defined, value, 0.0))

    def norm(self, q: float) -> torch.Tensor:
        return self.max if q == INF else self.S(q).pow(1 / q)

    def powsums(self, qs) -> torch.Tensor:
        sums = torch.stack([self.S(q) for q in qs]) if qs else self.a.new_zeros((0, self.a.shape[0]))
        return sums.reshape([len(qs)] + self.shape)

    def pq_index(self, p: float, q: float) -> torch.Tensor:
        return self._index(1 - self.M(p) / self.M(q), self.max > 0)

    def sparsity_index(self, q: float) -> torch.Tensor:
        return self._index(self.M(1.0) / self.M(q), self.max > 0)

    def hoyer(self) -> torch.Tensor:
        root_d = self.d.sqrt()
        value = (root_d - self.S(1.0) / self.S(2.0).sqrt()) / (root_d - 1)
        return self._index(value, (self.max > 0) & (self.d > 1))

    def gini(self) -> torch.Tensor:
        rows, n = self.a.shape
        value = self.gini_pairwise() if rows * n * n <= 2**22 else self.gini_sorted()
        return self._index(value, self.S(1.0) > 0)

    def gini_pairwise(self) -> torch.Tensor:
        # Sort-free form of the same index: Σ_ij |c_i − c_j| / (2 d Σ c) over survivor pairs
        # (Hurley–Rickard's 1 − 2 Σ_k c_(k) (d − k + ½)/(d Σ c), expanded with Σ_k k c_(k)).
        both = self.m[:, :, None] & self.m[:, None, :]
        pairs = (self.a[:, :, None] - self.a[:, None, :]).abs().where(both, 0.0)
        return pairs.sum((1, 2)) / (2 * self.d * self.S(1.0))

    def gini_sorted(self) -> torch.Tensor:
        # Hurley–Rickard: survivors sorted ascending as c_1..c_d (pruned entries sort first).
        n = self.a.shape[1]
        c = torch.where(self.m, self.a, -1.0).sort(1).values
        k = torch.arange(1, n + 1, dtype=torch.float64, device=c.device) - (n - self.d)[:, None]
        terms = torch.where(k >= 1, c * (self.d[:, None] - k + 0.5), 0.0)
        return 1 - 2 * terms.sum(1) / (self.d * self.S(1.0))


def computations(x, dim=None, keepdim=False, mask=None, backend=None, *, reference_input=None,
                 norm_qs=NORM_QS, powsum_qs=POWSUM_QS, pq_pairs=PQ_PAIRS, si_qs=SI_QS):
    """(label, result, float64 expectation, kind) for every measure of x; the expectation comes
    from `reference_input` (default x) with the same dim and mask."""
    ref = Reference(x if reference_input is None else reference_input, dim, mask)
    kw = dict(mask=mask, backend=backend)
    for q in norm_qs:
        yield (f"lq_norm(q={q})", ops.lq_norm(x, q, dim, keepdim, **kw), ref.shaped(ref.norm(q), keepdim),
               "value")
    sums, count = ops.lq_powsum(x, list(powsum_qs), dim, **kw)
    yield f"lq_powsum(qs={powsum_qs}).sums", sums, ref.powsums(list(powsum_qs)), "sum"
    yield "lq_powsum.count", count, ref.shaped(ref.d), "count"
    for p, q in pq_pairs:
        yield (f"pq_index(p={p}, q={q})", ops.pq_index(x, p, q, dim, keepdim=keepdim, **kw),
               ref.shaped(ref.pq_index(p, q), keepdim), "index")
    for q in si_qs:
        yield (f"sparsity_index(q={q})", ops.sparsity_index(x, q, dim, keepdim=keepdim, **kw),
               ref.shaped(ref.sparsity_index(q), keepdim), "index")
    yield "hoyer", ops.hoyer(x, dim, keepdim=keepdim, **kw), ref.shaped(ref.hoyer(), keepdim), "index"
    yield "gini", ops.gini(x, dim, keepdim=keepdim, **kw), ref.shaped(ref.gini(), keepdim), "index"


def result_dtype(kind: str, x_dtype: torch.dtype) -> torch.dtype:
    return {"sum": accumulation_dtype(x_dtype), "count": torch.int64}.get(kind, x_dtype)


def tolerance(dtype: torch.dtype, kind: str) -> tuple[float, float]:
    """(rtol, atol) for a result of `dtype` against the float64 reference of the same inputs.

    float32 / float64 results are accumulated in their own precision: 1e-5 / 1e-10 relative,
    far above the rounding of the sums. float16 / bfloat16 results (norms and indices) are computed
    in float32 and rounded once to the output dtype: correct rounding alone is off by up to half
    an ulp, i.e. eps/2 relative (eps = 2^-10 ≈ 1e-3 for float16, 2^-7 ≈ 8e-3 for bfloat16), so
    the bound is one eps of the output dtype: ~1e-3 for float16, necessarily coarser for bfloat16.
    atol: indices are O(1), where an absolute slack is meaningful near 0; norms and sums may be
    subnormal, where the dtype's subnormal spacing is the floor."""
    fi = torch.finfo(dtype)
    if dtype == torch.float64:
        rtol, index_atol = 1e-10, 1e-12
    elif dtype == torch.float32:
        rtol, index_atol = 1e-5, 1e-6
    else:
        rtol, index_atol = fi.eps, 1e-5
    return rtol, index_atol if kind == "index" else fi.smallest_normal * fi.eps


def assert_matches(label, got, expected, kind, x_dtype) -> None:
    dtype = result_dtype(kind, x_dtype)
    assert got.dtype == dtype, f"{label}: dtype {got.dtype}, expected {dtype}"
    assert tuple(got.shape) == tuple(expected.shape), \
        f"{label}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    assert got.device == expected.device, f"{label}: on {got.device}, expected {expected.device}"
    got, expected = got.cpu(), expected.cpu()
    if kind == "count":
        assert torch.equal(got, expected.to(torch.int64)), f"{label}: {got} != {expected}"
        return
    # A value beyond the output dtype's range must come out as ±inf (float16 norms, float32 sums).
    rounded = expected.to(dtype).double()
    expected = torch.where(rounded.isinf() & expected.isfinite(), rounded, expected)
    rtol, atol = tolerance(dtype, kind)
    torch.testing.assert_close(got.double(), expected, rtol=rtol, atol=atol, equal_nan=True,
                               msg=lambda m: f"{label} ({x_dtype} input): {m}")


# Under Triton's interpreter every call costs ~20 ms per slice: fewer exponents, still one of each
# kernel specialisation (q = 0.5, 1, 2 special-cased, a general q, none for q = inf, several).
INTERPRETER_SUBSET = dict(norm_qs=(0.5, 1.0, 1.7, 2.0, INF), si_qs=(0.5,))


def subset(backend) -> dict:
    return INTERPRETER_SUBSET if interpreted(backend) else {}


def check_all(x, dim=None, keepdim=False, mask=None, backend=None, **kw) -> dict:
    """Every measure of x against the reference; returns {label: result} for further checks."""
    kw = {**subset(backend), **kw}
    results = {}
    for label, got, expected, kind in computations(x, dim, keepdim, mask, backend, **kw):
        assert_matches(label, got, expected, kind, x.dtype)
        results[label] = got
    return results


def random_input(gen, shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Heavy-tailed values (a normal scaled by a log-normal) with ~20% exact zeros, in dtype."""
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    x = x * torch.randn(shape, generator=gen, dtype=torch.float64).exp()
    x = x * (torch.rand(shape, generator=gen, dtype=torch.float64) > 0.2)
    return x.to(dtype).to(device)


def random_mask(gen, shape, device="cpu", keep: float = 0.7) -> torch.Tensor:
    return (torch.rand(shape, generator=gen) < keep).to(device)


def rows_of(shape, dim) -> int:
    if dim is None:
        return 1
    dims = {d % len(shape) for d in ([dim] if isinstance(dim, int) else dim)}
    return math.prod([s for i, s in enumerate(shape) if i not in dims])


# ---------------------------------------------------------------------------------------------
# Fresh random inputs: every backend × dtype × shape / dim / keepdim × mask.

SHAPE_CASES = [  # (shape, dim, keepdim); the first seven have at most 3 slices (Triton interpreter)
    ((7,), None, False),
    ((7,), 0, True),
    ((3, 33), 1, False),
    ((3, 33), -1, True),
    ((3, 2, 9), (0, 2), False),
    ((3, 4, 9), (-1, 1), True),
    ((2, 3, 5), None, False),
    ((5, 33), 1, False),
    ((6, 40), None, True),
    ((33, 3), 0, False),
    ((2, 3, 4, 5), (3, 1), False),
    ((48, 300), 1, False),
]


def case_id(case) -> str:
    shape, dim, keepdim = case
    return f"{'x'.join(map(str, shape))}-dim{dim}{'-keepdim' if keepdim else ''}".replace(" ", "")


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("case", SHAPE_CASES, ids=case_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_float64_reference(device_backend, triton_rows, dtype, case, masked, gen):
    device, backend = device_backend
    shape, dim, keepdim = case
    skip_unsupported(backend, dtype)
    if interpreted(backend) and rows_of(shape, dim) > 3:
        pytest.skip("Triton's interpreter runs one slow program per slice: tiny shapes only")
    x = random_input(gen, shape, dtype, device)
    mask = random_mask(gen, shape, device) if masked else None
    check_all(x, dim, keepdim, mask, backend)


def test_lq_powsum_exponent_lists(device_backend, triton_rows, gen):
    # One exponent takes the special-cased paths (q = 1, 2, 0.5); none gives empty sums.
    device, backend = device_backend
    x = random_input(gen, (3, 50), torch.float32, device)
    ref = Reference(x, 1)
    # [0.2, ..., 1.0] and [0.1, 0.2, 0.3, ...]: multiples of the smallest (Triton: powers of r^q_min)
    for qs in ([1.0], [2.0], [0.5], [1.7], [0.5, 1.0, 2.0], [0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0, 4.0],
               [0.8, 0.6, 0.4, 0.2, 1.0], [0.35, 0.7, 2.8, 0.7000001]):
        sums, count = ops.lq_powsum(x, qs, dim=1, backend=backend)
        assert_matches(f"lq_powsum(qs={qs})", sums, ref.powsums(qs), "sum", x.dtype)
        assert_matches("count", count, ref.d, "count", x.dtype)
    sums, count = ops.lq_powsum(x, [], dim=1, backend=backend)
    assert sums.shape == (0, 3) and sums.dtype == torch.float32
    assert count.tolist() == [50, 50, 50]
    # The counts alone (what a magnitude-pruning step needs), masked, with NaN and inf entries.
    x = random_input(gen, (4, 3000), torch.float32, device)
    x[1, 7], x[2, 11] = float("nan"), float("inf")
    mask = random_mask(gen, x.shape, device)
    sums, count = ops.lq_powsum(x, [], dim=1, mask=mask, backend=backend)
    assert sums.shape == (0, 4) and count.tolist() == mask.sum(1).tolist()


def test_auto_backend_and_env_variable_agree(device_backend, gen, monkeypatch):
    # backend=None resolves through LQK_BACKEND; the explicit argument wins over the variable.
    device, backend = device_backend
    x = random_input(gen, (3, 20), torch.float32, device)
    explicit = ops.pq_index(x, dim=1, backend=backend)
    monkeypatch.setenv("LQK_BACKEND", backend)
    assert torch.equal(ops.pq_index(x, dim=1), explicit)
    monkeypatch.setenv("LQK_BACKEND", "torch" if backend != "torch" else "auto")
    assert torch.equal(ops.pq_index(x, dim=1, backend=backend), explicit)
    monkeypatch.delenv("LQK_BACKEND")
    check_all(x, 1)  # "auto"


# ---------------------------------------------------------------------------------------------
# Edge cases.

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fully_masked_and_unmasked_slices(device_backend, triton_rows, dtype, gen):
    device, backend = device_backend
    skip_unsupported(backend, dtype)
    x = random_input(gen, (4, 12), dtype, device)
    mask = random_mask(gen, (4, 12), device)
    mask[1] = False
    mask[2] = True
    results = check_all(x, 1, mask=mask, backend=backend)
    for label, got in results.items():  # d = 0: an empty slice gives 0 everywhere
        assert (got[..., 1] == 0).all(), f"{label} of a fully masked slice: {got[..., 1]}"
    # A mask of all True is no mask at all.
    full = torch.ones_like(mask)
    for (label, got, _, _), (_, unmasked, _, _) in zip(
            computations(x, 1, mask=full, backend=backend, **subset(backend)),
            computations(x, 1, backend=backend, **subset(backend))):
        torch.testing.assert_close(got, unmasked, rtol=1e-6, atol=1e-7, msg=lambda m: f"{label}: {m}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zeros_and_all_zero_slices(device_backend, triton_rows, dtype, gen):
    device, backend = device_backend
    skip_unsupported(backend, dtype)
    x = random_input(gen, (3, 10), dtype, device)
    x[1] = 0
    x[2] = -0.0
    results = check_all(x, 1, backend=backend)
    for label, got in results.items():
        if label != "lq_powsum.count":
            assert (got[..., 1:] == 0).all(), f"{label} of an all-zero slice: {got}"
    check_all(torch.zeros(5, dtype=dtype, device=device), None, backend=backend)


EMPTY_CASES = [((0, 5), 1), ((4, 0), 1), ((0,), None), ((3, 0, 2), 1), ((3, 0, 2), (0, 2)),
               ((2, 0), None), ((0, 3), 0)]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(unavailable("cpp", "cpu") is not None, reason="lqkernels._C not loaded")
def test_cpp_zero_rows_does_not_crash():
    # In a subprocess: a division by the row count once killed the process (SIGFPE).
    code = ("import torch; from lqkernels import ops\n"
            "for f in (ops.lq_norm, ops.sparsity_index):\n"
            "    assert f(torch.empty(0, 5), 2.0, 1, backend='cpp').shape == (0,)\n"
            "assert ops.pq_index(torch.empty(3, 0, 2), dim=(0, 2), backend='cpp').shape == (0,)\n")
    done = run_python(code)
    assert done.returncode == 0, f"exit status {done.returncode}: {done.stderr[-2000:]}"


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("shape,dim", EMPTY_CASES, ids=[f"{s}-dim{d}" for s, d in EMPTY_CASES])
def test_empty(device_backend, triton_rows, shape, dim, masked):
    device, backend = device_backend
    x = torch.empty(shape, dtype=torch.float32, device=device)
    mask = torch.empty(shape, dtype=torch.bool, device=device) if masked else None
    results = check_all(x, dim, mask=mask, backend=backend)
    for label, got in results.items():  # 0-length slices: norms, sums, counts and indices are 0
        assert (got == 0).all(), f"{label}: {got}"
    check_all(x, dim, True, mask, backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_one_element(device_backend, triton_rows, dtype, gen):
    device, backend = device_backend
    skip_unsupported(backend, dtype)
    x = torch.tensor([[-2.5], [0.0], [4.0]], dtype=dtype, device=device)
    results = check_all(x, 1, backend=backend)
    # Exact, but in Triton's long-row kernel (rows of more than 16384 entries only; forced here):
    # its sums are relative to a power of two and converted once, within the dtype's rounding.
    exact = triton_rows == "short-rows"
    expected = {"lq_norm(q=0.5)": [2.5, 0.0, 4.0], "pq_index(p=0.5, q=1.0)": [0.0, 0.0, 0.0],
                "sparsity_index(q=0.5)": [1.0, 0.0, 1.0]}
    for label, values in expected.items():
        if exact:
            assert results[label].tolist() == values, label
        else:
            torch.testing.assert_close(results[label].cpu().double(), torch.tensor(values, dtype=torch.float64),
                                       rtol=tolerance(dtype, "index")[0], atol=tolerance(dtype, "index")[1])
    assert results["hoyer"].tolist() == [0.0, 0.0, 0.0]
    assert results["gini"].tolist() == [0.0, 0.0, 0.0]
    check_all(x[0], None, backend=backend)
    check_all(x[:1], None, True, backend=backend)


@pytest.mark.parametrize("dim", [None, 0, -1, (0,)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_dim(device_backend, dtype, dim):
    device, backend = device_backend
    skip_unsupported(backend, dtype)
    if interpreted(backend) and dim not in (None, (0,)):
        pytest.skip("Triton's interpreter: fewer cases (time)")
    x = torch.tensor(-2.5, dtype=dtype, device=device)
    results = check_all(x, dim, mask=torch.tensor(True, device=device), backend=backend)
    assert results["lq_norm(q=0.5)"].shape == () and results["lq_norm(q=0.5)"].item() == 2.5
    assert results["lq_powsum.count"].shape == () and results["lq_powsum.count"].item() == 1
    results = check_all(x, dim, mask=torch.tensor(False, device=device), backend=backend)
    assert results["lq_norm(q=0.5)"].item() == 0
    check_all(x, dim, backend=backend)


def test_zero_dim_keepdim_keeps_zero_dims(cpu_backend):
    x = torch.tensor(-2.5)
    assert torch.linalg.vector_norm(x, 2, keepdim=True).shape == ()
    for label, got, expected, kind in computations(x, None, True, None, cpu_backend):
        assert_matches(label, got, expected, kind, x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_non_contiguous(device_backend, triton_rows, dtype, gen):
    device, backend = device_backend
    if interpreted(backend) and dtype != torch.float32:
        pytest.skip("Triton's interpreter: float32 only (time)")
    base = random_input(gen, (9, 4), dtype, device)
    mbase = random_mask(gen, (9, 4), device)
    x, mask = base.t(), mbase.t()  # transposed, (4, 9)
    assert not x.is_contiguous() and not mask.is_contiguous()
    check_all(x, 1, mask=mask, backend=backend)
    if not interpreted(backend):  # 9 slices
        check_all(x, 0, mask=mask, backend=backend)
    wide = random_input(gen, (5, 20), dtype, device)
    wide_mask = random_mask(gen, (5, 20), device)
    check_all(wide[:, ::2], 1, mask=wide_mask[:, 1::2], backend=backend)  # sliced with a step
    check_all(wide[::2, 3:17:3], None, mask=wide_mask[::2, 4:18:3], backend=backend)
    cube = random_input(gen, (6, 3, 8), dtype, device).permute(2, 0, 1)[..., ::2]  # (8, 6, 2)
    check_all(cube, (0, 1), mask=random_mask(gen, (8, 6, 4), device)[..., 1::2], backend=backend)
    row = random_input(gen, (1, 10), dtype, device)
    stride0_mask = random_mask(gen, (1, 10), device).expand(3, 10)
    check_all(row.expand(3, 10), 1, mask=stride0_mask, backend=backend)  # stride-0 input and mask


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_stays_in_its_slice(device_backend, triton_rows, dtype, gen):
    device, backend = device_backend
    skip_unsupported(backend, dtype)
    x = random_input(gen, (4, 10), dtype, device)
    x[1, 3] = NAN
    x[2, 7] = NAN
    mask = torch.ones(4, 10, dtype=torch.bool, device=device)
    mask[2, 7] = False  # a NaN that was pruned must not count
    mask[3, 0] = False
    for m, nan_rows in ((None, {1, 2}), (mask, {1})):
        results = check_all(x, 1, mask=m, backend=backend)
        for label, got in results.items():
            if label == "lq_powsum.count":
                continue
            for row in range(4):
                nans = got[..., row].isnan()
                assert bool(nans.all() if row in nan_rows else not nans.any()), \
                    f"{label}, mask={m is not None}, row {row}: {got[..., row]}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_infinite_entries_give_the_limit(device_backend, triton_rows, dtype, gen):
    device, backend = device_backend
    skip_unsupported(backend, dtype)
    d = 6
    x = random_input(gen, (3, d), dtype, device)
    x[0, 2] = INF  # one infinite entry among finite ones
    x[1, 0], x[1, 4] = -INF, INF
    x[2, 3] = INF
    mask = torch.ones(3, d, dtype=torch.bool, device=device)
    mask[2, 3] = False  # a pruned inf does not count
    for m, inf_rows in ((None, [0, 1, 2]), (mask, [0, 1])):
        kw = subset(backend)
        # Norms and sums are inf; indices are those of the limit: inf entries 1, finite ones 0.
        has_inf = torch.zeros(3, 1, dtype=torch.bool, device=device)
        has_inf[inf_rows] = True
        limit = torch.where(has_inf, x.double().isinf().double(), x.double())
        for label, got, expected, kind in computations(x, 1, mask=m, backend=backend,
                                                       reference_input=limit, **kw):
            if kind in ("value", "sum"):
                expected = torch.where(has_inf[:, 0], INF, expected)
            assert_matches(label, got, expected, kind, dtype)
    # Closed forms for one inf among d entries (row 0).
    rtol = tolerance(dtype, "index")[0]
    for p, q in PQ_PAIRS:
        assert ops.pq_index(x[0], p, q, backend=backend).item() == pytest.approx(
            1 - d ** (1 / q - 1 / p), rel=rtol, abs=1e-6)
    for q in (0.5, 2.0):
        assert ops.sparsity_index(x[0], q, backend=backend).item() == pytest.approx(
            d ** (1 / q - 1), rel=rtol)
    assert ops.hoyer(x[0], backend=backend).item() == pytest.approx(1.0, rel=rtol)
    assert ops.gini(x[0], backend=backend).item() == pytest.approx(1 - 1 / d, rel=rtol)
    for q in (0.5, 2.0, INF):
        assert ops.lq_norm(x[:2], q, 1, backend=backend).isposinf().all()


def _subnormal_rows(gen):
    return torch.randn(3, 16, generator=gen, dtype=torch.float64) * 1e-42


def _normal_and_subnormal_rows(gen):
    # Each row: 1.0 and subnormal entries whose q = 0.1 powers still add ~1e-3 to the sums.
    sign = torch.randn(3, 16, generator=gen, dtype=torch.float64).sign()
    x = sign * (1 + torch.rand(3, 16, generator=gen, dtype=torch.float64)) * 1e-42
    x[:, 5] = 1.0
    return x


EXTREME_FLOAT32 = {  # float64 draws, rounded to float32 (the reference sees the rounded values)
    "huge-1e30": lambda g: torch.randn(3, 16, generator=g, dtype=torch.float64) * 1e30,
    "near-max-1e37": lambda g: torch.randn(3, 16, generator=g, dtype=torch.float64) * 1e37,
    "tiny-1e-30": lambda g: torch.randn(3, 16, generator=g, dtype=torch.float64) * 1e-30,
    "subnormal-1e-42": _subnormal_rows,
    "normal-and-subnormal": _normal_and_subnormal_rows,
}


@pytest.mark.parametrize("case", list(EXTREME_FLOAT32))
def test_extreme_float32_magnitudes(device_backend, triton_rows, case, gen):
    # A naive float32 Σ|x|^q over- or underflows here (1e30^2, 1e-30^3, 1e-42^0.1 loses to
    # flush-to-zero); the ops must match the float64 reference, inf only where the true result
    # exceeds float32 (sums of 1e30^2, say).
    device, backend = device_backend
    x = EXTREME_FLOAT32[case](gen).to(torch.float32).to(device)
    norm_qs, powsum_qs = (0.1,) + NORM_QS, (0.1,) + POWSUM_QS
    check_all(x, 1, backend=backend, norm_qs=norm_qs, powsum_qs=powsum_qs)
    mask = random_mask(gen, x.shape, device)
    mask[:, 5] = True  # keeps the 1.0 of "normal-and-subnormal"
    check_all(x, 1, mask=mask, backend=backend, norm_qs=norm_qs, powsum_qs=powsum_qs)


def test_lq_norm_small_q_does_not_overflow(device_backend):
    # T^(1/q) leaves float32's range although the norm does not: the finalize runs in float64.
    device, backend = device_backend
    x = torch.full((10000,), 1e-30, dtype=torch.float32, device=device)
    expected = (x.double().abs() ** 0.1).sum() ** 10  # ≈ 1e10, far inside float32's range
    got = ops.lq_norm(x, 0.1, backend=backend)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)


def test_lq_powsum_normal_sum_of_subnormal_powers(device_backend):
    # scale^q is subnormal in float32 while the sum is not: scale^q · T must not be formed in float32.
    device, backend = device_backend
    x = torch.full((100000,), 1e-21, dtype=torch.float32, device=device)
    expected = (x.double() ** 2).sum()
    got = ops.lq_powsum(x, [2.0], backend=backend).sums
    torch.testing.assert_close(got.double(), expected.reshape(1), rtol=1e-5, atol=0)


@pytest.mark.parametrize("exponent", [1000, -1000])
def test_extreme_float64_magnitudes(device_backend, triton_rows, exponent, gen):
    # Scaling by a power of two is exact: norms scale by 2^e, indices do not change, even where
    # Σ|x|^q itself leaves float64's range.
    device, backend = device_backend
    skip_unsupported(backend, torch.float64)
    x = random_input(gen, (3, 16), torch.float64, device)
    scaled = torch.ldexp(x, torch.tensor(exponent, device=device))
    for q in (0.5, 1.0, 2.0, INF):
        got = ops.lq_norm(scaled, q, 1, backend=backend)
        torch.testing.assert_close(got, torch.ldexp(ops.lq_norm(x, q, 1, backend=backend),
                                                    torch.tensor(exponent, device=device)), rtol=1e-12, atol=0)
    for f in (lambda v: ops.pq_index(v, 0.5, 1.0, 1, backend=backend), lambda v: ops.hoyer(v, 1, backend=backend),
              lambda v: ops.sparsity_index(v, 0.5, 1, backend=backend), lambda v: ops.gini(v, 1, backend=backend)):
        torch.testing.assert_close(f(scaled), f(x), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gini_of_long_slices(device_backend, dtype, gen):
    # Long slices (a whole weight at once) sort as radix keys on the CPU: few distinct values (ties
    # and zeros), subnormals, rows either side of the radix threshold, masked or not, NaN and inf.
    device, backend = device_backend
    skip_unsupported(backend, dtype)
    if interpreted(backend):
        pytest.skip("Triton's interpreter: tiny shapes only")
    x = random_input(gen, (4, 5000), dtype, device)
    x[1] = torch.randint(-3, 4, (5000,), generator=gen).to(dtype)
    x[2, ::2] = (torch.finfo(dtype).tiny * torch.rand(2500, generator=gen, dtype=torch.float64)).to(dtype)
    for shape, dim, masked in (((4, 5000), 1, False), ((4, 5000), 1, True), ((4, 5000), None, True),
                               ((200, 100), 1, False), ((200, 100), 1, True)):
        xs = x.reshape(shape)
        mask = random_mask(gen, shape, device) if masked else None
        ref = Reference(xs, dim, mask)
        assert_matches(f"gini {shape} dim {dim}{' masked' if masked else ''}",
                       ops.gini(xs, dim, mask=mask, backend=backend), ref.shaped(ref.gini()), "index", dtype)
    x[0, 7], x[3, 11] = float("inf"), float("nan")
    got = ops.gini(x, 1, backend=backend)
    assert got[0].item() == pytest.approx(1 - 1 / 5000, rel=tolerance(dtype, "index")[0]) and got[3].isnan()


def test_reference_gini_forms_agree(gen):
    # The oracle's two Gini forms (pairwise and sorted) agree, so either can serve as reference.
    x = random_input(gen, (5, 40), torch.float64)
    x[1] = 0
    ref = Reference(x, 1, random_mask(gen, x.shape))
    torch.testing.assert_close(ref.gini_pairwise()[[0, 2, 3, 4]], ref.gini_sorted()[[0, 2, 3, 4]],
                               rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# The paper's properties (method.md §1).

# Hurley–Rickard test vectors and I_{0.5,1} (method.md §1). method.md prints three of them off in
# the fifth decimal: 0.26430, 0.08579 and 0.06032 where the definition gives 0.264332, 0.085844 and
# 0.060251 (1 − ((Σ√c)/d)² / (Σc/d), by hand); the values below are the definition's.
HURLEY_RICKARD = [
    ([0, 1, 3, 5], 0.31438),
    ([0, 2, 3, 4], 0.26433),  # Robin Hood lowers it
    ([1, 3, 5], 0.08584),
    ([1.5, 3.5, 5.5], 0.06025),  # rising tide lowers it
    ([0, 1, 3, 5, 0, 1, 3, 5], 0.31438),  # cloning keeps it
    ([0, 2, 6, 10], 0.31438),  # scaling keeps it
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_hurley_rickard_vectors(device_backend, dtype):
    device, backend = device_backend
    for vector, expected in HURLEY_RICKARD:
        x = torch.tensor(vector, dtype=dtype, device=device)
        assert ops.pq_index(x, 0.5, 1.0, backend=backend).item() == pytest.approx(expected, abs=1e-5)
        assert ops.pq_index(-x, backend=backend).item() == pytest.approx(expected, abs=1e-5)
    # d counts survivors only: pruned entries are not babies.
    x = torch.tensor([0, 1, 7, 3, 0, 5, 9], dtype=dtype, device=device)
    mask = torch.tensor([True, True, False, True, False, True, False], device=device)
    assert ops.pq_index(x, mask=mask, backend=backend).item() == pytest.approx(0.31438, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# Bad input: ValueError / TypeError naming the offending value.

X2 = torch.ones(3, 4)


def every_op_with(**kw):
    """Calls of every measure op with the keyword arguments `kw` (a bad dim, mask, backend...)."""
    return {
        "lq_norm": lambda x: ops.lq_norm(x, 2.0, **kw),
        "lq_powsum": lambda x: ops.lq_powsum(x, [1.0], **kw),
        "pq_index": lambda x: ops.pq_index(x, **kw),
        "sparsity_index": lambda x: ops.sparsity_index(x, 0.5, **kw),
        "hoyer": lambda x: ops.hoyer(x, **kw),
        "gini": lambda x: ops.gini(x, **kw),
    }


def assert_every_op_raises(error, match, x=X2, **kw) -> None:
    for name, call in every_op_with(**kw).items():
        try:
            with pytest.raises(error, match=match):
                call(x)
        except (AssertionError, pytest.fail.Exception) as failure:
            raise AssertionError(f"{name}: {failure}") from None


EXPONENT_CALLS = {  # op name -> call with one bad exponent
    "lq_norm": lambda q: ops.lq_norm(X2, q),
    "lq_powsum": lambda q: ops.lq_powsum(X2, [1.0, q]),
    "pq_index.p": lambda q: ops.pq_index(X2, q, 2.0),
    "pq_index.q": lambda q: ops.pq_index(X2, 0.5, q),
    "sparsity_index": lambda q: ops.sparsity_index(X2, q),
}


@pytest.mark.parametrize("op", list(EXPONENT_CALLS))
@pytest.mark.parametrize("q,error,match", [
    (0, ValueError, r"got 0\.0"),
    (-1.5, ValueError, r"got -1\.5"),
    (NAN, ValueError, r"got nan"),
    ("a", TypeError, r"got 'a'"),
    (None, TypeError, r"got None"),
    (True, TypeError, r"got True"),
], ids=["zero", "negative", "nan", "str", "none", "bool"])
def test_bad_exponent(op, q, error, match):
    with pytest.raises(error, match=match):
        EXPONENT_CALLS[op](q)


@pytest.mark.parametrize("p,q,match", [(1.0, 1.0, r"p=1\.0, q=1\.0"), (2.0, 1.0, r"p=2\.0, q=1\.0"),
                                       (INF, INF, r"p must be finite and > 0, got inf")])
def test_pq_index_needs_p_below_q(p, q, match):
    with pytest.raises(ValueError, match=match):
        ops.pq_index(X2, p, q)


def test_lq_powsum_exponent_limits():
    with pytest.raises(ValueError, match=r"\b9\b"):
        ops.lq_powsum(X2, [0.5 * (k + 1) for k in range(9)])
    with pytest.raises(ValueError, match=r"got inf"):
        ops.lq_powsum(X2, [1.0, INF])
    with pytest.raises(TypeError, match=r"got 2\.0"):
        ops.lq_powsum(X2, 2.0)


@pytest.mark.parametrize("dim,error,match", [
    (2, ValueError, r"dim 2 is out of range"),
    (-3, ValueError, r"dim -3 is out of range"),
    ((0, 5), ValueError, r"dim 5 is out of range"),
    ((0, -2), ValueError, r"dim -2 appears more than once"),
    ((1, 1), ValueError, r"dim 1 appears more than once"),
    ((), ValueError, r"dim=\(\)"),
    (1.0, TypeError, r"got 1\.0"),
    ((0, "1"), TypeError, r"'1'"),
], ids=["2", "-3", "(0,5)", "(0,-2)", "(1,1)", "()", "1.0", "(0,'1')"])
def test_bad_dim(dim, error, match):
    assert_every_op_raises(error, match, dim=dim)


def test_bad_mask():
    assert_every_op_raises(ValueError, r"mask shape \(4, 3\)", mask=torch.ones(4, 3, dtype=torch.bool))
    for dtype in (torch.uint8, torch.float32, torch.int64):
        assert_every_op_raises(TypeError, str(dtype), mask=torch.ones(3, 4, dtype=dtype))
    assert_every_op_raises(TypeError, "list", mask=[[True] * 4] * 3)


@pytest.mark.parametrize("x,match", [
    (torch.ones(3, 4, dtype=torch.int64), "torch.int64"),
    (torch.ones(3, 4, dtype=torch.int32), "torch.int32"),
    (torch.ones(3, 4, dtype=torch.bool), "torch.bool"),
    (torch.ones(3, 4, dtype=torch.complex64), "torch.complex64"),
    (torch.ones(3, 4, dtype=torch.complex128), "torch.complex128"),
    ([[1.0, 2.0]], "list"),
], ids=["int64", "int32", "bool", "complex64", "complex128", "list"])
def test_bad_x(x, match):
    assert_every_op_raises(TypeError, match, x=x)


def test_bad_backend(monkeypatch):
    assert_every_op_raises(ValueError, "'bogus'", backend="bogus")
    monkeypatch.setenv("LQK_BACKEND", "bogus")
    assert_every_op_raises(ValueError, "LQK_BACKEND 'bogus'")
    monkeypatch.delenv("LQK_BACKEND")
    assert_every_op_raises(RuntimeError, "'cuda'", backend="cuda")  # on a CPU tensor
    if not _triton_interpreted():
        assert_every_op_raises(RuntimeError, "'triton'", backend="triton")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mask_on_another_device():
    assert_every_op_raises(ValueError, "cuda", mask=torch.ones(3, 4, dtype=torch.bool, device="cuda"))
    assert_every_op_raises(RuntimeError, "'cpp'", x=X2.cuda(), backend="cpp")


@pytest.mark.skipif(unavailable("cpp", "cpu") is not None, reason="lqkernels._C not loaded")
def test_kernel_level_checks_raise_instead_of_crashing():
    # The C++ kernels TORCH_CHECK their preconditions (a RuntimeError naming the value).
    x, mask = torch.ones(3, 4), torch.ones(3, 4, dtype=torch.bool)
    row_powsum, row_gini = torch.ops.lqkernels.row_powsum, torch.ops.lqkernels.row_gini
    with pytest.raises(RuntimeError, match=r"\[2, 3, 4\]"):
        row_powsum(torch.ones(2, 3, 4), None, [1.0])
    with pytest.raises(RuntimeError, match=r"\[2, 3, 4\]"):
        row_gini(torch.ones(2, 3, 4), None)
    with pytest.raises(RuntimeError, match=r"\[12\]"):
        row_powsum(torch.ones(12), None, [1.0])
    for call in (lambda m: row_powsum(x, m, [1.0]), lambda m: row_gini(x, m)):
        with pytest.raises(RuntimeError, match=r"mask shape \[4, 3\]"):
            call(torch.ones(4, 3, dtype=torch.bool))
        with pytest.raises(RuntimeError, match="Float"):
            call(torch.ones(3, 4))
        with pytest.raises(RuntimeError, match="Byte"):
            call(torch.ones(3, 4, dtype=torch.uint8))
    for q, match in ((0.0, r"got 0\b"), (-1.0, r"got -1\b"), (NAN, "got nan"), (INF, "got inf")):
        with pytest.raises(RuntimeError, match=match):
            row_powsum(x, mask, [1.0, q])
    with pytest.raises(RuntimeError, match=r"got 9\b"):
        row_powsum(x, None, [1.0] * 9)
    with pytest.raises(RuntimeError, match="Long"):
        row_powsum(torch.ones(3, 4, dtype=torch.int64), None, [1.0])


# ---------------------------------------------------------------------------------------------
# Large shapes on a CUDA GPU (weights of LLM layers): the CUDA and Triton kernels against the
# float64 reference computed on the GPU.

GPU_CASES = [((4096, 4096), torch.bfloat16), ((4096, 4096), torch.float32), ((14336, 4096), torch.bfloat16)]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("dim", [1, None], ids=["dim1", "dimNone"])
@pytest.mark.parametrize("shape,dtype", GPU_CASES, ids=[f"{s[0]}x{s[1]}-{d}" for s, d in GPU_CASES])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_large_shapes(backend, shape, dtype, dim, masked, gen):
    reason = unavailable(backend, "cuda")
    if reason is not None:
        pytest.skip(reason)
    if interpreted(backend):
        pytest.skip("TRITON_INTERPRET=1: the interpreter is far too slow for these shapes")
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(shape, generator=gen, device="cuda") * 0.02
    x = (x * (torch.rand(shape, generator=gen, device="cuda") > 0.1)).to(dtype)
    mask = torch.rand(shape, generator=gen, device="cuda") < 0.5 if masked else None
    if mask is not None:
        mask[1] = False  # a fully pruned row
    check_all(x, dim, mask=mask, backend=backend, norm_qs=(0.3, 0.5, 1.0, 2.0, INF),
              si_qs=(0.5,))
    torch.cuda.synchronize()
