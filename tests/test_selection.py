"""The selection ops of lqkernels.ops (topk_mask, topk_threshold, global_topk_masks, nm_mask) on
every backend that runs on CPU tensors here, against an oracle written in this file from
torch.sort (stable) and the documented ranking rule, not from the library's own reference.

Ranking rule (lqkernels/selection.py): rank by value (|value| with magnitude=True), best first
(largest=True) or worst first; equal values (-0 == +0) rank lowest index first (global: tensor
order, then flat index); only candidates (mask True) are ranked.

Sections: the oracle (and checks of the oracle itself); per-slice top-k over dtypes x data x
shapes x dims x k x masks x flags; edge cases (empty, 0-d, one element, non-contiguous, -0, inf,
denormals, short rows, long rows); global selection; N:M masks; bad input; opcheck and
torch.compile. Triton runs here only under TRITON_INTERPRET=1 (set by the Makefile for the whole
run): its interpreter costs ~0.3 s per row, so the Triton cases are tiny and without bfloat16.
GPU-sized checks live in test_selection_cuda.py.
"""
from __future__ import annotations

import math

import pytest
import torch

from lqkernels import _backend, ops
from lqkernels._triton import interpreted as _triton_interpreted

# Triton's interpreter evaluates both sides of tl.where: numpy warnings are expected there.
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning",
                                        "ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:overflow encountered:RuntimeWarning")

INF, NAN = math.inf, math.nan
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
FLAGS = [(m, l) for m in (False, True) for l in (True, False)]  # (magnitude, largest)
FLAG_IDS = [f"{'mag' if m else 'val'}-{'largest' if l else 'smallest'}" for m, l in FLAGS]


def cpu_backends(op: str) -> list[str]:
    """The backends that run `op` on CPU tensors here (triton only under the interpreter)."""
    return [b for b in ("cpp", "torch", "triton") if _backend.available(b, "cpu", op) is None]


ROW_BACKENDS = cpu_backends("row_topk_mask")
GLOBAL_BACKENDS = cpu_backends("global_topk_masks")


def interpreted(backend: str) -> bool:
    return backend == "triton" and _triton_interpreted()


def skip_unsupported(backend: str, dtype: torch.dtype) -> None:
    if dtype == torch.bfloat16 and interpreted(backend):
        pytest.skip("Triton's interpreter (numpy) has no bfloat16")


# ---------------------------------------------------------------------------------------------
# The oracle. Everything is ranked in float64 (exact for every supported dtype), on the inputs'
# device (test_selection_cuda.py uses it on GPU-sized inputs).

def rank_order(values: torch.Tensor, candidates: torch.Tensor, largest: bool) -> torch.Tensor:
    """Positions of each row of `values` (rows, n), best ranked first: candidates by value (best
    first), equal values by lowest index, then every non-candidate (in index order)."""
    key = torch.where(candidates, values, 0.0)  # non-candidates (maybe NaN) get a harmless value
    key = -key if largest else key  # ascending sort of the key = best first
    key = torch.where(key == 0, 0.0, key)  # -0 ranks with +0
    order = torch.sort(key, dim=1, stable=True).indices  # equal keys keep index order
    non_candidate = (~candidates.gather(1, order)).to(torch.uint8)
    return order.gather(1, torch.sort(non_candidate, dim=1, stable=True).indices)


def ranks(values: torch.Tensor, candidates: torch.Tensor, largest: bool) -> torch.Tensor:
    """The rank of every entry of `values` (rows, n) in its row: candidates 0 .. c-1, best first;
    non-candidates c .. n-1."""
    rows, n = values.shape
    order = rank_order(values, candidates, largest)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=values.device).expand(rows, n).contiguous())
    return rank


def select_rows(values: torch.Tensor, candidates: torch.Tensor, k: torch.Tensor, largest: bool):
    """(selected (rows, n) bool, k-th ranked value per row in float64: +-inf where k = 0)."""
    rank = ranks(values, candidates, largest)
    selected = rank < k[:, None]
    assert not (selected & ~candidates).any(), "oracle misuse: k above the candidates"
    kth = torch.full((values.shape[0],), INF if largest else -INF, dtype=torch.float64, device=values.device)
    at_k = (rank == (k - 1)[:, None]) & (k > 0)[:, None]
    rows_k, cols_k = at_k.nonzero(as_tuple=True)
    kth[rows_k] = values[rows_k, cols_k]
    return selected, kth


def oracle_topk(x, k, dim=-1, mask=None, magnitude=False, largest=True):
    """(expected topk_mask, expected topk_threshold) of x with the documented rule."""
    xs = x.reshape(1) if x.dim() == 0 else x
    ms = torch.ones(xs.shape, dtype=torch.bool, device=x.device) if mask is None else mask.reshape(xs.shape)
    d = dim % xs.dim()
    moved = xs.detach().movedim(d, -1)
    slice_shape = list(moved.shape[:-1])
    rows, n = math.prod(slice_shape), moved.shape[-1]
    values = moved.to(torch.float64).reshape(rows, n)
    if magnitude:
        values = values.abs()
    candidates = ms.movedim(d, -1).reshape(rows, n)
    if isinstance(k, torch.Tensor):
        kk = k.to(x.device, torch.int64).reshape(rows)
    else:
        kk = torch.full((rows,), k, dtype=torch.int64, device=x.device)
    selected, kth = select_rows(values, candidates, kk, largest)
    out = selected.reshape(moved.shape).movedim(-1, d).reshape(x.shape)
    threshold = kth.to(x.dtype).reshape(slice_shape if x.dim() else [])
    return out, threshold


class GlobalOracle:
    """The global ranking of tensors (masks: candidates): `expected(k)` is the list of masks of
    the k best-ranked candidates (ties: tensor order, then flat index), as the concatenation of
    the flattened tensors ranked as one row."""

    def __init__(self, tensors, masks=None, magnitude=True, largest=True):
        values = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])[None]
        if magnitude:
            values = values.abs()
        if masks is None:
            candidates = torch.ones(values.shape, dtype=torch.bool, device=values.device)
        else:
            candidates = torch.cat([m.reshape(-1) for m in masks])[None]
        self.total = int(candidates.sum())
        self.rank = ranks(values, candidates, largest)[0]
        self.shapes = [t.shape for t in tensors]
        self.device = tensors[0].device

    def expected(self, k: int):
        assert 0 <= k <= self.total, "oracle misuse: k above the candidates"
        parts = (self.rank < k).split([math.prod(s) for s in self.shapes])
        return [p.reshape(s) for p, s in zip(parts, self.shapes)]


def oracle_global(tensors, k, masks=None, magnitude=True, largest=True):
    return GlobalOracle(tensors, masks, magnitude, largest).expected(k)


def oracle_nm(x, n, m, dim=-1, magnitude=True):
    xs = x.reshape(1) if x.dim() == 0 else x
    d = dim % xs.dim()
    moved = xs.movedim(d, -1)
    groups = moved.reshape(moved.numel() // m, m)
    out, _ = oracle_topk(groups, n, -1, None, magnitude, True)
    return out.reshape(moved.shape).movedim(-1, d).reshape(x.shape)


def test_oracle_follows_the_rule():
    x = torch.tensor([[3.0, -0.0, 0.0, 3.0, -5.0, 1.0]])
    # by value, best first: 3 (idx 0), 3 (idx 3), 1, then the zeros by index (-0 == +0)
    assert oracle_topk(x, 3)[0].tolist() == [[True, False, False, True, False, True]]
    assert oracle_topk(x, 4)[0].tolist() == [[True, True, False, True, False, True]]
    assert oracle_topk(x, 4)[1].tolist() == [0.0]
    # by |value|: 5, 3, 3
    assert oracle_topk(x, 2, magnitude=True)[0].tolist() == [[True, False, False, False, True, False]]
    assert oracle_topk(x, 2, magnitude=True)[1].tolist() == [3.0]
    # worst first: -5, then the zeros (lowest index first)
    assert oracle_topk(x, 2, largest=False)[0].tolist() == [[False, True, False, False, True, False]]
    assert oracle_topk(x, 3, magnitude=True, largest=False)[0].tolist() == [
        [False, True, True, False, False, True]]
    # only candidates, and k = 0 gives +-inf
    mask = torch.tensor([[False, True, True, True, False, True]])
    assert oracle_topk(x, 2, mask=mask)[0].tolist() == [[False, False, False, True, False, True]]
    assert oracle_topk(x, 0)[1].tolist() == [INF]
    assert oracle_topk(x, 0, largest=False)[1].tolist() == [-INF]
    # global: tensor order, then flat index
    got = oracle_global([torch.tensor([1.0, 0.0, -0.0]), torch.tensor([[0.0, -1.0]])], 3)
    assert [g.tolist() for g in got] == [[True, True, False], [[False, True]]]


# ---------------------------------------------------------------------------------------------
# Helpers: inputs and the comparison.

def draw(shape, dtype, kind, gen) -> torch.Tensor:
    """'ties': integer values in [-4, 4] (many ties; zeros are -0 or +0 at random);
    'continuous': standard normal values (ties only from rounding to the dtype)."""
    device = gen.device  # a CUDA generator draws on the GPU
    if kind == "ties":
        x = torch.randint(-4, 5, shape, generator=gen, device=device).to(torch.float64)
        x = torch.where((x == 0) & (torch.rand(shape, generator=gen, device=device) < 0.5), -0.0, x)
    else:
        x = torch.randn(shape, generator=gen, dtype=torch.float64, device=device)
    return x.to(dtype)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (tells -0 from +0 and compares NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point:
        view = {8: torch.int64, 4: torch.int32, 2: torch.int16}[a.element_size()]
        a, b = a.contiguous().view(view), b.contiguous().view(view)
    return torch.equal(a, b)


def slice_counts(selected: torch.Tensor, dim: int) -> torch.Tensor:
    s = selected.reshape(1) if selected.dim() == 0 else selected
    return s.sum(dim % s.dim())


def describe_mismatch(got, expected, x, dim):
    xs = x.reshape(1) if x.dim() == 0 else x
    d = dim % xs.dim()
    g = got.reshape(xs.shape).movedim(d, -1).reshape(-1, xs.shape[d])
    e = expected.reshape(xs.shape).movedim(d, -1).reshape(-1, xs.shape[d])
    bad = (g != e).any(1).nonzero()
    if not len(bad):
        return "no mismatch"
    r = bad[0, 0].item()
    vals = xs.movedim(d, -1).reshape(-1, xs.shape[d])[r]
    return (f"slice {r}: values {vals.tolist()[:40]}\n got      {g[r].int().tolist()[:40]}\n"
            f" expected {e[r].int().tolist()[:40]}")


def check_topk(x, k, dim=-1, mask=None, magnitude=False, largest=True, backend=None, threshold=True):
    """topk_mask (and topk_threshold) of x equal the oracle bit for bit; exactly k_i per slice;
    only candidates; the inputs are left as they were."""
    before = [t.clone() for t in (x, mask, k) if isinstance(t, torch.Tensor)]
    kw = dict(mask=mask, magnitude=magnitude, largest=largest, backend=backend)
    got = ops.topk_mask(x, k, dim, **kw)
    expected, expected_threshold = oracle_topk(x, k, dim, mask, magnitude, largest)
    assert got.dtype == torch.bool and got.shape == x.shape and got.device == x.device
    assert torch.equal(got, expected), describe_mismatch(got, expected, x, dim)
    want = (k.to(torch.int64) if isinstance(k, torch.Tensor)
            else torch.full(expected_threshold.shape, k, device=x.device))
    assert torch.equal(slice_counts(got, dim), want.reshape(expected_threshold.shape))
    if mask is not None:
        assert not (got & ~mask).any()
    if threshold:
        thr = ops.topk_threshold(x, k, dim, **kw)
        assert thr.dtype == x.dtype and thr.shape == expected_threshold.shape and thr.device == x.device
        assert torch.equal(thr, expected_threshold), (thr, expected_threshold)
    after = [t for t in (x, mask, k) if isinstance(t, torch.Tensor)]
    assert all(same_bits(a, b) for a, b in zip(before, after)), "an input was modified"
    return got


def moved_rows(shape, dim):
    """(slice shape, rows, n) of `shape` sliced along `dim`."""
    d = dim % len(shape)
    slice_shape = [s for i, s in enumerate(shape) if i != d]
    return slice_shape, math.prod(slice_shape), shape[d]


def draw_mask(shape, dim, mode, gen):
    """None, 'random' (~60% candidates), 'empty_slice' (random, slice 0 has no candidate),
    'all_true'."""
    if mode == "none":
        return None
    if mode == "all_true":
        return torch.ones(shape, dtype=torch.bool)
    slice_shape, rows, n = moved_rows(shape, dim)
    m = torch.rand(rows, n, generator=gen) < 0.6
    if mode == "empty_slice":
        m[0] = False
    d = dim % len(shape)
    return m.reshape(*slice_shape, n).movedim(-1, d).contiguous()


def candidates_per_slice(shape, dim, mask):
    slice_shape, rows, n = moved_rows(shape, dim)
    if mask is None:
        return torch.full((rows,), n, dtype=torch.int64)
    return mask.movedim(dim % len(shape), -1).reshape(rows, n).sum(1)


def draw_k(shape, dim, mask, mode, gen):
    """'int': one k for every slice (in [0, fewest candidates]); 'int0' / 'intmax': k = 0 / the
    fewest candidates; 'int64' / 'int32': a k per slice, uniform in [0, candidates], the first
    slice 0 and the last all its candidates."""
    slice_shape, rows, _ = moved_rows(shape, dim)
    cand = candidates_per_slice(shape, dim, mask)
    fewest = int(cand.min()) if rows else 0
    if mode == "int":
        return int(torch.randint(0, fewest + 1, (), generator=gen))
    if mode == "int0":
        return 0
    if mode == "intmax":
        return fewest
    k = (torch.rand(rows, generator=gen, dtype=torch.float64) * (cand + 1)).floor().to(torch.int64)
    k = k.minimum(cand)
    if rows:
        k[0], k[-1] = 0, cand[-1]
    return k.reshape(slice_shape).to(torch.int32 if mode == "int32" else torch.int64)


# ---------------------------------------------------------------------------------------------
# Per-slice top-k on random inputs.

# (shape, dim): 2-D and 3-D, every dim, rows above and below the short-row kernel's 32.
FULL_CASES = [((6, 37), -1), ((37, 6), 0), ((5, 9), 1), ((3, 4, 40), -1), ((3, 40, 4), 1),
              ((40, 3, 2), 0), ((2, 3, 7), 0), ((4, 5, 6), -2)]
K_MODES = ("int", "int0", "intmax", "int64", "int32")
MASK_MODES = ("none", "random", "empty_slice", "all_true")
# Triton under the interpreter: two slices a call, rotating through shapes, dims, k and masks.
TRITON_CASES = [((2, 40), -1, "int64", "empty_slice"), ((40, 2), 0, "int32", "random"),
                ((1, 40, 2), 1, "int", "all_true"), ((2, 1, 36), -1, "intmax", "none")]


def random_params():
    params = []
    for backend in ROW_BACKENDS:
        for dtype in DTYPES:
            for kind in ("ties", "continuous"):
                for flags, flag_id in zip(FLAGS, FLAG_IDS):
                    if interpreted(backend):
                        # under the interpreter: one data kind per dtype, no bfloat16, and every
                        # flag only for float32 (the float64 and float16 keys: two flags each)
                        if dtype == torch.bfloat16 or (kind == "continuous") != (dtype == torch.float16):
                            continue
                        if dtype != torch.float32 and flags not in (FLAGS[0], FLAGS[3]):
                            continue
                    params.append(pytest.param(backend, dtype, kind, *flags,
                                               id=f"{backend}-{str(dtype)[6:]}-{kind}-{flag_id}"))
    return params


@pytest.mark.parametrize("backend, dtype, kind, magnitude, largest", random_params())
def test_topk_random(backend, triton_rows, dtype, kind, magnitude, largest, gen):
    if interpreted(backend):
        i = FLAGS.index((magnitude, largest))
        shape, dim, k_mode, mask_mode = TRITON_CASES[i]
        x = draw(shape, dtype, kind, gen)
        mask = draw_mask(shape, dim, mask_mode, gen)
        k = draw_k(shape, dim, mask, k_mode, gen)
        check_topk(x, k, dim, mask, magnitude, largest, backend, threshold=magnitude == largest)
        return
    for shape, dim in FULL_CASES:
        x = draw(shape, dtype, kind, gen)
        for i, mask_mode in enumerate(MASK_MODES):
            mask = draw_mask(shape, dim, mask_mode, gen)
            for k_mode in (K_MODES[i % 2], K_MODES[2 + i % 3]):  # every k mode with every mask mode over the shapes
                if mask_mode == "empty_slice" and k_mode == "int":
                    k_mode = "int0"  # one k for all slices: the empty one allows only 0
                k = draw_k(shape, dim, mask, k_mode, gen)
                check_topk(x, k, dim, mask, magnitude, largest, backend)


@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_torch_backend_matches_oracle_and_others(backend, gen):
    """Every backend gives the same masks and thresholds as the PyTorch backend (and the oracle)."""
    shape = (3, 45) if interpreted(backend) else (16, 45)
    x = draw(shape, torch.float32, "ties", gen)
    mask = draw_mask(shape, -1, "random", gen)
    k = draw_k(shape, -1, mask, "int64", gen)
    ref = ops.topk_mask(x, k, mask=mask, magnitude=True, backend="torch")
    ref_t = ops.topk_threshold(x, k, mask=mask, magnitude=True, backend="torch")
    expected, expected_t = oracle_topk(x, k, -1, mask, True, True)
    assert torch.equal(ref, expected) and torch.equal(ref_t, expected_t)
    assert torch.equal(ops.topk_mask(x, k, mask=mask, magnitude=True, backend=backend), ref)
    assert torch.equal(ops.topk_threshold(x, k, mask=mask, magnitude=True, backend=backend), ref_t)


def test_kernel_level_torch_reference_matches_oracle(gen):
    """The kernel-level reference (what backend='torch' runs) on a (rows, n) view."""
    x = draw((9, 50), torch.float64, "ties", gen)
    mask = torch.rand(9, 50, generator=gen) < 0.7
    for magnitude, largest in FLAGS:
        k = (torch.rand(9, generator=gen) * (mask.sum(1) + 1)).floor().long().minimum(mask.sum(1))
        out, thr = _backend.REFERENCES["row_topk_mask"](x, k, mask, magnitude, largest)
        exp, exp_t = oracle_topk(x, k, -1, mask, magnitude, largest)
        assert torch.equal(out, exp) and torch.equal(thr, exp_t)


def test_default_backend_is_cpp_on_cpu(gen):
    if _backend.native is None:
        pytest.skip("lqkernels._C not loaded")
    x = draw((4, 40), torch.float32, "ties", gen)
    assert torch.equal(ops.topk_mask(x, 7), ops.topk_mask(x, 7, backend="cpp"))


# ---------------------------------------------------------------------------------------------
# Edge cases.

@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_short_rows(backend, triton_rows, gen):
    """Rows of at most 32 entries take a separate kernel path (rank by counting): every length
    1..33 on the native kernel, 4, 17, 32, 33 under the interpreter."""
    lengths = (4, 17, 32, 33) if interpreted(backend) else range(1, 34)
    rows = 1 if interpreted(backend) else 24
    for n in lengths:
        for magnitude, largest in FLAGS if not interpreted(backend) else [(n % 2 == 0, n != 17)]:
            for dtype in (torch.float32, torch.float16) if not interpreted(backend) else (torch.float32,):
                x = draw((rows, n), dtype, "ties", gen)
                mask = draw_mask((rows, n), -1, "random", gen)
                k = draw_k((rows, n), -1, mask, "int64", gen)
                check_topk(x, k, -1, mask, magnitude, largest, backend)
                if not interpreted(backend):
                    check_topk(x, n, -1, None, magnitude, largest, backend)
                    check_topk(x, 0, -1, None, magnitude, largest, backend)


@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_boundary_ties_across_blocks(backend, triton_rows, gen):
    """Rows of 2100 values in {-1, 0, 1}: the ties at the boundary span the Triton kernel's
    1024-entry blocks (and the CUDA kernel's 256-entry tiles); the first ones by index win."""
    rows = 1 if interpreted(backend) else 4
    x = torch.randint(-1, 2, (rows, 2100), generator=gen).float()
    k = torch.tensor([1500, 700, 2099, 1][:rows])
    check_topk(x, k, -1, None, True, True, backend, threshold=not interpreted(backend))
    if not interpreted(backend):
        mask = torch.rand(rows, 2100, generator=gen) < 0.9
        check_topk(x, (k.double() * 0.5).long(), -1, mask, False, False, backend)


@pytest.mark.parametrize("backend, dtype", [("cpp", d) for d in DTYPES] + [("torch", torch.float32)],
                         ids=lambda v: str(v).replace("torch.", ""))
def test_long_rows(backend, dtype, gen):
    """3 x 20000 rows (several radix passes over many candidates), per-row k in [0.05n, 0.95n]."""
    if backend not in ROW_BACKENDS:
        pytest.skip(f"backend {backend} unavailable")
    shape = (3, 20000)
    x = draw(shape, dtype, "ties", gen)
    mask = torch.rand(shape, generator=gen) < 0.8
    k = (torch.rand(3, generator=gen) * 0.9 + 0.05).mul(mask.sum(1)).long()
    check_topk(x, k, -1, mask, True, True, backend)
    # continuous values, the slices along dim 0 of a (20000, 3) tensor
    xt = draw(shape, dtype, "continuous", gen).t()
    check_topk(xt, torch.tensor([1, 10000, 19999]), 0, None, False, False, backend)


def check_empty(shape, dim, backend):
    x = torch.empty(shape)
    slice_shape, rows, n = moved_rows(shape, dim)
    for largest in (True, False):
        check_topk(x, 0, dim, None, False, largest, backend)
        check_topk(x, torch.zeros(slice_shape, dtype=torch.int64), dim, torch.ones(shape, dtype=torch.bool),
                   True, largest, backend)
        if n > 0:  # no slice at all: k = n is in range for every (absent) slice
            check_topk(x, n, dim, None, False, largest, backend)


@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_empty_no_slices(backend):
    """0 slices: an empty mask and an empty threshold."""
    for shape, dim in [((0, 5), -1), ((3, 0, 2), 0), ((2, 0, 4), -1)]:
        check_empty(shape, dim, backend)


@pytest.mark.parametrize("shape, dim", [((5, 0), -1), ((0, 5), 0), ((0, 0), 1), ((3, 0, 2), 1), ((0,), 0)],
                         ids=["5x0-dim-1", "0x5-dim0", "0x0-dim1", "3x0x2-dim1", "0-dim0"])
@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_empty_slices(backend, triton_rows, shape, dim):
    """Slices of length 0 (k = 0 is the only valid k): nothing selected, threshold +inf / -inf
    with one entry per slice."""
    check_empty(shape, dim, backend)


@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_one_element_and_0d(backend, triton_rows):
    small = interpreted(backend)
    for dtype in (torch.float32, torch.float64) if not small else (torch.float32,):
        one = torch.tensor([-2.5], dtype=dtype)
        for k in (0, 1) if not small else (1,):
            check_topk(one, k, 0, None, True, True, backend, threshold=not small)
            check_topk(one.reshape(1, 1), k, 1, None, False, False, backend, threshold=not small)
        scalar = torch.tensor(-3.0, dtype=dtype)
        for k in (0, 1, torch.tensor(1), torch.tensor(0, dtype=torch.int32)) if not small else (torch.tensor(1),):
            got = check_topk(scalar, k, 0, None, True, True, backend)
            assert got.shape == () and got.item() == (int(k) == 1)
            thr = ops.topk_threshold(scalar, k, magnitude=True, backend=backend)
            assert thr.shape == () and thr.item() == (3.0 if int(k) == 1 else INF)
        check_topk(scalar, 1, -1, torch.tensor(True), False, False, backend, threshold=not small)
        check_topk(scalar, 0, -1, torch.tensor(False), False, True, backend, threshold=not small)


@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_non_contiguous_inputs(backend, triton_rows, gen):
    """Transposed, strided, expanded scores, masks and k."""
    small = interpreted(backend)
    base = draw((40, 6), torch.float32, "ties", gen)
    mask_base = torch.rand(40, 6, generator=gen) < 0.7
    xt, mt = base.t(), mask_base.t()  # (6, 40), rows are strided
    assert not xt.is_contiguous()
    if small:
        xt, mt = xt[:2], mt[:2]
    k = draw_k(tuple(xt.shape), -1, mt, "int64", gen)
    check_topk(xt, k, -1, mt, True, True, backend)
    wide = draw((3, 80), torch.float64, "ties", gen)
    strided = wide[:, ::2] if not small else wide[:1, ::2]  # (3, 40), stride 2 along the row
    mstrided = (torch.rand(wide.shape, generator=gen) < 0.5)[: strided.shape[0], ::2]
    kk = draw_k(tuple(strided.shape), -1, mstrided, "int64", gen)
    check_topk(strided, kk, -1, mstrided, False, True, backend)
    check_topk(strided, kk[:, None].expand(-1, 1).squeeze(1), 1, mstrided, True, False, backend)
    if not small:
        # a k tensor that is itself non-contiguous, slices along dim 0
        x3 = draw((30, 4, 5), torch.float16, "ties", gen).permute(0, 2, 1)  # (30, 5, 4)
        k3 = torch.randint(0, 31, (4, 5), generator=gen).t()  # (5, 4), non-contiguous
        check_topk(x3, k3, 0, None, True, True, backend)
        expanded = torch.arange(7.0).expand(5, 7)  # stride 0 rows
        check_topk(expanded, torch.arange(5), -1, None, False, False, backend)


@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_signed_zeros_infinities_denormals(backend, triton_rows):
    """-0 == +0 (tie, lowest index first); +-inf are ordinary candidates; float32 denormals are
    not zero."""
    tiny = torch.finfo(torch.float32).tiny / 4  # a denormal
    x = torch.tensor([[0.0, -0.0, tiny, -tiny, INF, -INF, -0.0, 0.0, 1.0, -1.0] + [0.0] * 30,
                      [-0.0] * 20 + [0.0] * 20])
    cases = [(m, l, k0, k1) for m, l in FLAGS for k0 in (0, 1, 3, 5, 9) for k1 in (0, 2, 39)]
    if interpreted(backend):
        cases = [(False, True, 5, 2), (True, False, 9, 39)]
    for magnitude, largest, k0, k1 in cases:
        check_topk(x, torch.tensor([k0, k1]), -1, None, magnitude, largest, backend)
    # the threshold of an all-zero row is a zero; by value the tie at 0 goes to the lowest index
    got = ops.topk_mask(x[1:], 2, backend=backend)
    assert got[0, :2].all() and got.sum() == 2


@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_exactly_k_with_all_ties(backend, triton_rows):
    """A row of equal values: exactly k, the first k indices, whatever the flags."""
    n = 40
    x = torch.full((2, n), -2.0)
    for magnitude, largest in FLAGS if not interpreted(backend) else FLAGS[1:2]:
        got = check_topk(x, torch.tensor([13, n]), -1, None, magnitude, largest, backend)
        assert got[0, :13].all() and not got[0, 13:].any()


@pytest.mark.parametrize("backend", [b for b in ROW_BACKENDS if not interpreted(b)])
def test_k_integer_dtypes_and_parameters(backend, gen):
    """k of any integer dtype; scores that require grad (nn.Parameter: pruning scores weights)."""
    w = torch.nn.Parameter(draw((5, 40), torch.float32, "ties", gen))
    k = torch.tensor([0, 3, 17, 39, 40])
    expected = check_topk(w.detach(), k, -1, None, True, True, backend)
    for dtype in (torch.int16, torch.uint8, torch.int32):
        assert torch.equal(ops.topk_mask(w, k.to(dtype), magnitude=True, backend=backend), expected)
    with torch.inference_mode():
        assert torch.equal(ops.topk_mask(w, k, magnitude=True, backend=backend), expected)
    assert torch.equal(ops.nm_mask(w, 2, 4, backend=backend), oracle_nm(w.detach(), 2, 4))
    got = ops.global_topk_masks([w, w[:2]], 50, backend=backend)
    assert all(torch.equal(g, e) for g, e in zip(got, oracle_global([w.detach(), w.detach()[:2]], 50)))


@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_nan_outside_the_candidates_is_fine(backend, triton_rows, gen):
    x = draw((2, 40), torch.float32, "ties", gen)
    mask = torch.rand(2, 40, generator=gen) < 0.5
    x[~mask] = NAN
    k = draw_k((2, 40), -1, mask, "int64", gen)
    check_topk(x, k, -1, mask, True, True, backend)


# ---------------------------------------------------------------------------------------------
# Global selection.

GLOBAL_SHAPES = [(3, 5), (0, 4), (7,), (2, 3, 4), (), (1,), (4, 6)]


def global_params():
    params = []
    for backend in GLOBAL_BACKENDS:
        for dtype in DTYPES:
            if dtype == torch.bfloat16 and interpreted(backend):
                continue
            params.append(pytest.param(backend, dtype, id=f"{backend}-{str(dtype)[6:]}"))
    return params


def check_global(tensors, k, masks, magnitude, largest, backend, oracle=None):
    """global_topk_masks equals the oracle (a GlobalOracle of the same arguments may be passed to
    rank once for several k); exactly k in total; only candidates; inputs left as they were."""
    before = [t.clone() for t in tensors] + ([m.clone() for m in masks] if masks else [])
    got = ops.global_topk_masks(tensors, k, masks=masks, magnitude=magnitude, largest=largest,
                                backend=backend)
    oracle = oracle or GlobalOracle(tensors, masks, magnitude, largest)
    expected = oracle.expected(k)
    assert isinstance(got, list) and len(got) == len(tensors)
    for i, (g, e, t) in enumerate(zip(got, expected, tensors)):
        assert g.dtype == torch.bool and g.shape == t.shape, (i, g.shape, t.shape)
        assert torch.equal(g, e), (f"tensor {i}: got {g.reshape(-1).int().tolist()[:60]}, "
                                   f"expected {e.reshape(-1).int().tolist()[:60]}")
        if masks is not None:
            assert not (g & ~masks[i]).any()
    assert sum(int(g.sum()) for g in got) == k
    after = list(tensors) + (list(masks) if masks else [])
    assert all(same_bits(a, b) for a, b in zip(before, after)), "an input was modified"


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("backend, dtype", global_params())
def test_global_random(backend, dtype, masked, gen):
    flags = FLAGS if not interpreted(backend) else [FLAGS[3]] if masked else [FLAGS[1]]
    for kind in ("ties", "continuous") if not interpreted(backend) else ("ties",):
        tensors = [draw(s, dtype, kind, gen) for s in GLOBAL_SHAPES]
        tensors[-1] = tensors[-1].t()  # a non-contiguous one: ranked by its own flat (row-major) index
        masks = [torch.rand(t.shape, generator=gen) < 0.6 for t in tensors] if masked else None
        total = sum(int(m.sum()) for m in masks) if masked else sum(t.numel() for t in tensors)
        ks = sorted({0, 1, total // 2, total}) if not interpreted(backend) else (1, total // 2, total)
        for magnitude, largest in flags:
            oracle = GlobalOracle(tensors, masks, magnitude, largest)
            for k in ks:
                check_global(tensors, k, masks, magnitude, largest, backend, oracle)


@pytest.mark.parametrize("backend", GLOBAL_BACKENDS)
def test_global_ties_across_tensors(backend):
    """Equal scores: tensor order first, then flat index."""
    a = torch.tensor([[1.0, 0.0], [-0.0, 2.0]])
    b = torch.tensor([0.0, -1.0, 0.0])
    c = torch.tensor([[[-2.0, 0.0]]])
    ts = [a, b, c]
    for magnitude, largest in FLAGS:
        oracle = GlobalOracle(ts, None, magnitude, largest)
        for k in range(0, 10) if not interpreted(backend) else (3, 6) if magnitude else (2, 7):
            check_global(ts, k, None, magnitude, largest, backend, oracle)
    # by |value|: 2 (a), -2 (c), then 1 (a), -1 (b), then zeros: a[0,1], a[1,0], b[0], b[2], c[0,0,1]
    got = ops.global_topk_masks(ts, 6, backend=backend)
    assert got[0].tolist() == [[True, True], [True, True]]
    assert got[1].tolist() == [False, True, False] and got[2].tolist() == [[[True, False]]]
    # all equal: the first k in tensor order
    zs = [torch.zeros(3), torch.zeros(2, 2), torch.zeros(1)]
    got = ops.global_topk_masks(zs, 5, backend=backend)
    assert [g.reshape(-1).tolist() for g in got] == [[True] * 3, [True, True, False, False], [False]]


@pytest.mark.parametrize("backend, dtype", [("cpp", torch.float32), ("cpp", torch.bfloat16), ("cpp", torch.float64),
                                            ("torch", torch.float32)], ids=lambda v: str(v).replace("torch.", ""))
def test_global_large(backend, dtype, gen):
    """Tensors of more than 65536 elements (several spans of the C++ kernel), ties spanning the
    spans and the tensors."""
    if backend not in GLOBAL_BACKENDS:
        pytest.skip(f"backend {backend} unavailable")
    shapes = [(30, 500), (5,), (2, 70000), (0,), (65537,)]
    tensors = [draw(s, dtype, "ties", gen) for s in shapes]
    total = sum(t.numel() for t in tensors)
    oracle = GlobalOracle(tensors, None, True, True)
    for k in (1, 123457, total // 2, total - 1):
        check_global(tensors, k, None, True, True, backend, oracle)
    masks = [torch.rand(s, generator=gen) < 0.3 for s in shapes]
    cand = sum(int(m.sum()) for m in masks)
    check_global(tensors, cand // 3, masks, False, False, backend)


@pytest.mark.parametrize("backend", GLOBAL_BACKENDS)
def test_global_single_and_all_empty(backend, gen):
    x = draw((5, 8), torch.float32, "ties", gen)
    check_global([x], 17, None, True, True, backend)
    # the global top-k of one tensor is its top-k over the flattened tensor
    assert torch.equal(ops.global_topk_masks([x], 17, backend=backend)[0],
                       ops.topk_mask(x.reshape(-1), 17, magnitude=True, backend="torch").reshape(5, 8))
    empties = [torch.empty(0), torch.empty(3, 0)]
    check_global(empties, 0, None, True, True, backend)
    check_global([x, torch.empty(0, 2)], 40, [torch.ones(5, 8, dtype=torch.bool), torch.ones(0, 2, dtype=torch.bool)],
                 False, True, backend)


@pytest.mark.parametrize("backend", GLOBAL_BACKENDS)
def test_global_nan_outside_the_candidates_is_fine(backend, gen):
    ts = [draw((4, 9), torch.float32, "ties", gen), draw((10,), torch.float32, "ties", gen)]
    ms = [torch.rand(t.shape, generator=gen) < 0.5 for t in ts]
    for t, m in zip(ts, ms):
        t[~m] = NAN
    cand = sum(int(m.sum()) for m in ms)
    check_global(ts, cand // 2, ms, True, True, backend)


# ---------------------------------------------------------------------------------------------
# N:M masks.

NM_SHAPES = ((2, 4), (1, 4), (4, 8), (0, 4), (4, 4), (3, 8), (1, 1), (2, 3), (5, 6), (16, 32))
# Triton runs N:M groups in its own kernel up to m = 32, beyond on its per-row selection, which
# the interpreter runs one program per group: one group of 40 there.
NM_BEYOND_DEDICATED = (7, 40)


def nm_params():
    return [pytest.param(backend, n, m, id=f"{backend}-{n}:{m}") for backend in ROW_BACKENDS for n, m in NM_SHAPES]


def check_nm(x, n, m, dim, magnitude, backend):
    before = x.clone()
    got = ops.nm_mask(x, n, m, dim, magnitude=magnitude, backend=backend)
    expected = oracle_nm(x, n, m, dim, magnitude)
    assert got.dtype == torch.bool and got.shape == x.shape
    assert torch.equal(got, expected), (x, got, expected)
    d = dim % x.dim()
    groups = got.movedim(d, -1).reshape(-1, m)
    assert (groups.sum(1) == n).all()  # exactly n per group
    assert same_bits(x, before)


@pytest.mark.parametrize("magnitude", [True, False], ids=["mag", "val"])
@pytest.mark.parametrize("backend, n, m", nm_params())
def test_nm_mask(backend, n, m, magnitude, gen):
    for dtype in DTYPES:
        if dtype == torch.bfloat16 and interpreted(backend):
            continue  # Triton's interpreter (numpy) has no bfloat16
        for kind in ("ties", "continuous"):
            x = draw((6, 4 * m), dtype, kind, gen)
            check_nm(x, n, m, -1, magnitude, backend)
            check_nm(x.t(), n, m, 0, magnitude, backend)  # along dim 0, non-contiguous
            x3 = draw((2 * m, 3, 5), dtype, kind, gen)
            check_nm(x3, n, m, 0, magnitude, backend)


@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_nm_many_groups(backend, gen):
    # More groups than one Triton program takes (1024); the NaN check names the first NaN group
    # even when a later program also finds one.
    x = draw((2500, 8), torch.float32, "ties", gen)
    check_nm(x, 2, 4, -1, True, backend)
    x[2400, 1] = NAN
    x[1050, 6] = NAN
    with pytest.raises(ValueError, match="NaN in slice 2101"):
        ops.nm_mask(x, 2, 4, backend=backend)


@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_nm_beyond_the_dedicated_kernel(backend, gen):
    n, m = NM_BEYOND_DEDICATED
    x = draw((1, m), torch.float32, "ties", gen)
    check_nm(x, n, m, -1, True, backend)


@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_nm_ties_lowest_index(backend):
    x = torch.tensor([[1.0, -1.0, 1.0, 1.0, 0.0, -0.0, 0.0, 3.0]])
    assert ops.nm_mask(x, 2, 4, backend=backend).tolist() == [[True, True, False, False, True, False, False, True]]
    assert ops.nm_mask(x, 2, 4, magnitude=False, backend=backend).tolist() == [
        [True, False, True, False, True, False, False, True]]
    assert ops.nm_mask(x, 4, 8, backend=backend).tolist() == [[True, True, True, False, False, False, False, True]]
    # dim 0 of the transpose is the same selection
    assert torch.equal(ops.nm_mask(x.t().contiguous(), 2, 4, dim=0, backend=backend),
                       ops.nm_mask(x, 2, 4, backend=backend).t())
    assert ops.nm_mask(torch.empty(3, 0), 2, 4, backend=backend).shape == (3, 0)
    assert ops.nm_mask(torch.tensor(5.0), 1, 1, backend=backend).tolist() is True  # 0-d: one group of 1


# ---------------------------------------------------------------------------------------------
# Bad input: TypeError / ValueError naming the value, on every backend (the C++ kernels use
# TORCH_CHECK_VALUE, which raises ValueError).

@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_bad_k(backend):
    x = torch.arange(15.0).reshape(3, 5)
    with pytest.raises(ValueError, match="-1"):
        ops.topk_mask(x, -1, backend=backend)
    with pytest.raises(ValueError, match=r"k = -2 for slice 1"):
        ops.topk_mask(x, torch.tensor([1, -2, 0]), backend=backend)
    with pytest.raises(ValueError, match=r"k = 6 for slice 0, which has 5 candidates"):
        ops.topk_mask(x, 6, backend=backend)
    with pytest.raises(ValueError, match=r"k = 6 for slice 2, which has 5 candidates"):
        ops.topk_threshold(x.t(), torch.tensor([1, 2, 6]), dim=0, backend=backend)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, :3] = False
    with pytest.raises(ValueError, match=r"k = 3 for slice 1, which has 2 candidates"):
        ops.topk_mask(x, 3, mask=mask, backend=backend)
    # the slice index is row-major over the dims other than `dim`: slice (1, 2) of (2, 5, 3) is 5
    x3 = torch.zeros(2, 5, 3)
    m3 = torch.ones(2, 5, 3, dtype=torch.bool)
    m3[1, :, 2] = False
    m3[1, 0, 2] = True
    with pytest.raises(ValueError, match=r"k = 2 for slice 5, which has 1 candidates"):
        ops.topk_mask(x3, 2, dim=1, mask=m3, backend=backend)
    # k tensors of the wrong shape or dtype
    with pytest.raises(ValueError, match=r"\(4,\)"):
        ops.topk_mask(x, torch.tensor([1, 1, 1, 1]), backend=backend)
    with pytest.raises(ValueError, match=r"\(3, 1\)"):
        ops.topk_mask(x, torch.ones(3, 1, dtype=torch.int64), backend=backend)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        ops.topk_mask(x, torch.tensor([1, 1, 1]), dim=0, backend=backend)  # needs (5,)
    with pytest.raises(TypeError, match="float32"):
        ops.topk_mask(x, torch.tensor([1.0, 1.0, 1.0]), backend=backend)
    with pytest.raises(TypeError, match="torch.bool"):
        ops.topk_mask(x, torch.tensor([True, True, False]), backend=backend)
    with pytest.raises(TypeError, match="True"):
        ops.topk_mask(x, True, backend=backend)
    with pytest.raises(TypeError, match="2.0"):
        ops.topk_mask(x, 2.0, backend=backend)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for a second device")
@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_bad_devices(backend):
    x = torch.zeros(3, 5)
    with pytest.raises(ValueError, match="cuda"):
        ops.topk_mask(x, torch.ones(3, dtype=torch.int64, device="cuda"), backend=backend)
    with pytest.raises(ValueError, match="cuda"):
        ops.topk_mask(x, 1, mask=torch.ones(3, 5, dtype=torch.bool, device="cuda"), backend=backend)
    with pytest.raises(ValueError, match="cuda"):
        ops.global_topk_masks([x, x.cuda()], 1, backend=backend)


@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_bad_nan(backend):
    x = torch.zeros(4, 6)
    x[2, 3] = NAN
    with pytest.raises(ValueError, match=r"NaN in slice 2"):
        ops.topk_mask(x, 1, backend=backend)
    with pytest.raises(ValueError, match=r"NaN in slice 2"):
        ops.topk_threshold(x, 0, backend=backend)  # even with k = 0
    # along dim 0 the NaN is in slice 3 (column 3); masked out, it is fine
    with pytest.raises(ValueError, match=r"NaN in slice 3"):
        ops.topk_mask(x, 1, dim=0, backend=backend)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[2, 3] = False
    assert ops.topk_mask(x, 1, mask=mask, backend=backend).sum() == 4


@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_bad_masks_and_scores(backend):
    x = torch.zeros(3, 5)
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        ops.topk_mask(x, 1, mask=torch.ones(3, 4, dtype=torch.bool), backend=backend)
    with pytest.raises(TypeError, match="torch.uint8"):
        ops.topk_mask(x, 1, mask=torch.ones(3, 5, dtype=torch.uint8), backend=backend)
    with pytest.raises(TypeError, match="torch.float32"):
        ops.topk_threshold(x, 1, mask=torch.ones(3, 5), backend=backend)
    with pytest.raises(TypeError, match="torch.int64"):
        ops.topk_mask(torch.zeros(3, 5, dtype=torch.int64), 1, backend=backend)
    with pytest.raises(TypeError, match="torch.complex64"):
        ops.topk_mask(torch.zeros(3, 5, dtype=torch.complex64), 1, backend=backend)
    with pytest.raises(TypeError, match="torch.int32"):
        ops.nm_mask(torch.zeros(3, 4, dtype=torch.int32), backend=backend)
    with pytest.raises(TypeError, match="list"):
        ops.topk_mask([1.0, 2.0], 1, backend=backend)
    with pytest.raises(ValueError, match="dim 2"):
        ops.topk_mask(x, 1, dim=2, backend=backend)
    with pytest.raises(TypeError, match="magnitude"):
        ops.topk_mask(x, 1, magnitude=1, backend=backend)


@pytest.mark.parametrize("backend", ROW_BACKENDS)
def test_bad_nm(backend):
    x = torch.zeros(3, 8)
    with pytest.raises(ValueError, match=r"n=5, m=4"):
        ops.nm_mask(x, 5, 4, backend=backend)
    with pytest.raises(ValueError, match=r"n=-1"):
        ops.nm_mask(x, -1, 4, backend=backend)
    with pytest.raises(ValueError, match=r"m=0"):
        ops.nm_mask(x, 0, 0, backend=backend)
    with pytest.raises(ValueError, match=r"length 3 along dim 0 is not divisible by m=4"):
        ops.nm_mask(x, 2, 4, dim=0, backend=backend)
    with pytest.raises(ValueError, match=r"length 8 along dim 1 is not divisible by m=3"):
        ops.nm_mask(x, 2, 3, backend=backend)
    with pytest.raises(TypeError, match="2.0"):
        ops.nm_mask(x, 2.0, 4, backend=backend)
    with pytest.raises(TypeError, match="True"):
        ops.nm_mask(x, True, 4, backend=backend)
    x[1, 5] = NAN
    with pytest.raises(ValueError, match="NaN in slice 3"):  # groups of 4 in row-major order
        ops.nm_mask(x, 2, 4, backend=backend)
    x[2, 0] = NAN
    with pytest.raises(ValueError, match="NaN in slice 3"):  # the first one
        ops.nm_mask(x, 2, 4, backend=backend)


@pytest.mark.parametrize("backend", GLOBAL_BACKENDS)
def test_bad_global(backend):
    a, b = torch.zeros(2, 3), torch.zeros(4)
    with pytest.raises(ValueError, match=r"tensors\[1\] is torch.float64"):
        ops.global_topk_masks([a, b.double()], 1, backend=backend)
    with pytest.raises(ValueError, match=r"k = 11 but the tensors hold 10 candidates"):
        ops.global_topk_masks([a, b], 11, backend=backend)
    with pytest.raises(ValueError, match=r"k = -1"):
        ops.global_topk_masks([a, b], -1, backend=backend)
    masks = [torch.ones(2, 3, dtype=torch.bool), torch.tensor([True, False, False, True])]
    with pytest.raises(ValueError, match=r"k = 9 but the tensors hold 8 candidates"):
        ops.global_topk_masks([a, b], 9, masks=masks, backend=backend)
    with pytest.raises(TypeError, match="True"):
        ops.global_topk_masks([a, b], True, backend=backend)
    with pytest.raises(TypeError, match="torch.int64"):
        ops.global_topk_masks([a, torch.zeros(3, dtype=torch.int64)], 1, backend=backend)
    with pytest.raises(TypeError, match="tensors"):
        ops.global_topk_masks([], 0, backend=backend)
    with pytest.raises(TypeError, match="tensors"):
        ops.global_topk_masks(a, 1, backend=backend)
    with pytest.raises(ValueError, match=r"1 masks for 2 tensors"):
        ops.global_topk_masks([a, b], 1, masks=masks[:1], backend=backend)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        ops.global_topk_masks([a, b], 1, masks=[masks[0], torch.ones(3, dtype=torch.bool)], backend=backend)
    with pytest.raises(TypeError, match="torch.float32"):
        ops.global_topk_masks([a, b], 1, masks=[masks[0], torch.ones(4)], backend=backend)
    bad = b.clone()
    bad[2] = NAN
    with pytest.raises(ValueError, match=r"tensors?\[?\s?1\]? contains NaN"):
        ops.global_topk_masks([a, bad], 1, backend=backend)
    ok = ops.global_topk_masks([a, bad], 1, masks=masks, backend=backend)  # the NaN is masked out
    assert sum(int(m.sum()) for m in ok) == 1


def test_native_kernels_raise_value_errors():
    """The C++ kernels themselves (called directly) raise ValueError for bad values."""
    if _backend.native is None:
        pytest.skip("lqkernels._C not loaded")
    op = torch.ops.lqkernels.row_topk_mask
    x = torch.zeros(3, 40)
    x[1, 7] = NAN
    with pytest.raises(ValueError, match="NaN in slice 1"):
        op(x, torch.zeros(3, dtype=torch.int64), None, True, True)
    with pytest.raises(ValueError, match="k = 41 for slice 2"):
        op(torch.zeros(3, 40), torch.tensor([0, 40, 41]), None, True, True)
    with pytest.raises(ValueError, match="k = 5 for slice 0, which has 4 candidates"):
        op(torch.zeros(3, 4), torch.tensor([5, 1, 1]), None, False, True)  # the short-row path
    with pytest.raises(ValueError, match="NaN"):
        torch.ops.lqkernels.global_topk_masks([torch.zeros(3), x], None, 1, True, True)
    with pytest.raises(ValueError, match="k = 4 but the tensors hold 3"):
        torch.ops.lqkernels.global_topk_masks([torch.zeros(3)], None, 4, True, True)


# ---------------------------------------------------------------------------------------------
# The ops as PyTorch sees them.

def opcheck_ops():
    names = ["row_topk_mask", "global_topk_masks"]
    return names + [f"{n}_triton" for n in names if _backend.available("triton", "cpu", n) is None]


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", opcheck_ops())
def test_opcheck(name, dtype, masked, gen):
    triton_cpu = name.endswith("_triton")
    if triton_cpu and (dtype, masked) not in ((torch.float32, True), (torch.float64, False)):
        pytest.skip("Triton's interpreter: no bfloat16, and few cases (it is slow)")
    op = getattr(torch.ops.lqkernels, name).default
    if name.startswith("row_topk_mask"):
        rows, n = (1, 12) if triton_cpu else (5, 40)
        x = draw((rows, n), dtype, "ties", gen)
        mask = torch.rand(rows, n, generator=gen) < 0.7 if masked else None
        cand = mask.sum(1) if masked else torch.full((rows,), n)
        k = (torch.rand(rows, generator=gen) * (cand + 1)).floor().long().minimum(cand)
        torch.library.opcheck(op, (x, k, mask, True, True))
        if not triton_cpu:
            torch.library.opcheck(op, (x[:, :9], k.clamp(max=3), None, False, False))  # short rows
    else:
        xs = [draw(s, dtype, "ties", gen) for s in ((3, 4), (5,), (2, 2, 2))]
        masks = [torch.rand(t.shape, generator=gen) < 0.7 for t in xs] if masked else None
        total = sum(int(m.sum()) for m in masks) if masked else sum(t.numel() for t in xs)
        torch.library.opcheck(op, (xs, masks, total // 2, True, True))


@pytest.mark.skipif(_backend.available("triton", "cpu", "row_topk_mask") is not None,
                    reason="Triton's interpreter is off (TRITON_INTERPRET=1 runs it on CPU tensors)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
def test_opcheck_nm_mask_triton(dtype, gen):
    for count, m in ((7, 4), (6, 4), (5, 3)):  # odd and even counts (two float16 groups a row), padding
        torch.library.opcheck(torch.ops.lqkernels.nm_mask_triton.default, (draw((count, m), dtype, "ties", gen), 2, True))


def test_meta_shapes():
    x = torch.empty(4, 9, device="meta", dtype=torch.bfloat16)
    out, thr = torch.ops.lqkernels.row_topk_mask(x, torch.empty(4, dtype=torch.int64, device="meta"), None,
                                                 True, True)
    assert out.shape == (4, 9) and out.dtype == torch.bool and thr.shape == (4,) and thr.dtype == torch.bfloat16
    outs = torch.ops.lqkernels.global_topk_masks([x, torch.empty(3, device="meta", dtype=torch.bfloat16)],
                                                 None, 2, True, True)
    assert [o.shape for o in outs] == [(4, 9), (3,)] and all(o.dtype == torch.bool for o in outs)


def select_everything(x, k, mask):
    return (ops.topk_mask(x, k, dim=1, mask=mask, magnitude=True),
            ops.topk_threshold(x, k, dim=1, mask=mask, magnitude=True),
            ops.nm_mask(x, 2, 4),
            ops.global_topk_masks([x, x[:2]], 30, magnitude=False))


def test_compile_fullgraph(gen):
    torch._dynamo.reset()
    x = draw((6, 48), torch.float32, "ties", gen)
    mask = torch.rand(6, 48, generator=gen) < 0.7
    k = (torch.rand(6, generator=gen) * (mask.sum(1) + 1)).floor().long().minimum(mask.sum(1))
    compiled = torch.compile(select_everything, fullgraph=True)
    got, expected = compiled(x, k, mask), select_everything(x, k, mask)
    for g, e in zip(got[:3], expected[:3]):
        assert torch.equal(g, e)
    assert all(torch.equal(g, e) for g, e in zip(got[3], expected[3]))
    exp_mask, exp_thr = oracle_topk(x, k, 1, mask, True, True)
    assert torch.equal(got[0], exp_mask) and torch.equal(got[1], exp_thr)
    assert torch.equal(got[2], oracle_nm(x, 2, 4))
    # another k (same shapes): no recompilation needed for correctness
    k2 = (k // 2).contiguous()
    assert torch.equal(compiled(x, k2, mask)[0], oracle_topk(x, k2, 1, mask, True, True)[0])
