"""The selection ops on CUDA tensors, GPU-sized (an H200: tens of millions of elements a case),
for the CUDA C++ and the Triton backends, against the oracle of test_selection.py (torch.sort,
stable, with the documented ranking rule), which runs on the GPU here too.

Covered: 4096 x 4096 float32 / bfloat16 rows with k_i uniform in [0.05n, 0.95n] under every
ranking flag; 14336 x 4096 bfloat16 rows; integer-valued scores (ties everywhere, boundary ties
across the CUDA kernel's 256-entry tiles and the Triton kernel's 1024-entry blocks); masks;
float64 and float16; short rows (the one-thread-per-row kernel: N:M on 4096 x 4096 and rows of
1..33 entries); non-contiguous inputs; global selection over 16 tensors of ~17M elements; the
error paths (NaN, k out of range, devices); opcheck and torch.compile on CUDA tensors.

Triton cases are skipped under TRITON_INTERPRET=1 (the interpreter would take hours here) and
keep to a few kernel specialisations, since each one is compiled on first use.
"""
from __future__ import annotations

import pytest
import torch

from lqkernels import _backend, ops
from lqkernels._triton import interpreted as _triton_interpreted
from test_selection import FLAG_IDS, FLAGS, GlobalOracle, check_global, check_topk, draw, oracle_nm, oracle_topk

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEVICE = "cuda"
BACKENDS = ("cuda", "triton")
N = 4096


def need(backend: str, op: str = "row_topk_mask") -> None:
    """Skip unless `backend` runs `op` on DEVICE tensors at GPU speed."""
    reason = _backend.available(backend, torch.device(DEVICE).type, op)
    if reason is not None:
        pytest.skip(reason)
    if backend == "triton" and _triton_interpreted():
        pytest.skip("TRITON_INTERPRET=1: Triton's interpreter is far too slow for GPU-sized inputs")


@pytest.fixture
def dgen(gen) -> torch.Generator:
    """A generator on the GPU, seeded from the test's node id like `gen`: GPU-sized inputs are
    drawn where they are used."""
    return torch.Generator(device=DEVICE).manual_seed(gen.initial_seed())


def k_uniform(rows: int, n, dgen, lo: float = 0.05, hi: float = 0.95) -> torch.Tensor:
    """k_i uniform in [lo * n_i, hi * n_i] (n: an int or the candidates per row)."""
    n = torch.as_tensor(n, device=DEVICE).to(torch.float64)
    u = torch.rand(rows, generator=dgen, device=DEVICE, dtype=torch.float64)
    return (n * (lo + (hi - lo) * u)).floor().to(torch.int64)


def k_any(candidates: torch.Tensor, dgen) -> torch.Tensor:
    """k_i uniform in [0, candidates_i], the first row 0 and the last all its candidates."""
    u = torch.rand(candidates.shape, generator=dgen, device=DEVICE, dtype=torch.float64)
    k = (u * (candidates + 1)).floor().to(torch.int64).minimum(candidates)
    k[0], k[-1] = 0, candidates[-1]
    return k


# ---------------------------------------------------------------------------------------------
# Per-row selection, long rows (one block a row).

def row_params():
    """Every flag for the CUDA kernel; Triton: every flag on float32, two on bfloat16."""
    params = []
    for backend in BACKENDS:
        for dtype in (torch.float32, torch.bfloat16):
            for flags, flag_id in zip(FLAGS, FLAG_IDS):
                if backend == "triton" and dtype == torch.bfloat16 and flags != (True, True):
                    continue
                params.append(pytest.param(backend, dtype, *flags, id=f"{backend}-{str(dtype)[6:]}-{flag_id}"))
    return params


@pytest.mark.parametrize("backend, dtype, magnitude, largest", row_params())
def test_rows_4096(backend, dtype, magnitude, largest, dgen):
    """4096 x 4096, k_i uniform in [0.05n, 0.95n] (the pruning benchmark's shape)."""
    need(backend)
    x = draw((N, N), dtype, "continuous", dgen)
    k = k_uniform(N, N, dgen)
    check_topk(x, k, -1, None, magnitude, largest, backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_ties_and_masks(backend, dtype, dgen):
    """Integer-valued scores (thousands of ties at every boundary) with a mask (~70% candidates),
    k_i in [0, candidates_i] including 0 and all of them."""
    need(backend)
    rows = 2048 if dtype == torch.float64 else N
    x = draw((rows, N), dtype, "ties", dgen)
    mask = torch.rand(rows, N, generator=dgen, device=DEVICE) < 0.7
    mask[1] = False  # a row without candidates (k = 0)
    mask[2] = True
    k = k_any(mask.sum(1), dgen)
    flags = FLAGS if backend == "cuda" else [(True, True)]  # Triton: few specialisations to compile
    for magnitude, largest in flags:
        check_topk(x, k, -1, mask, magnitude, largest, backend)
    check_topk(x, k_uniform(rows, N, dgen), -1, None, True, True, backend)  # no mask


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_14336x4096_bf16(backend, dgen):
    """An MLP weight of a 7-8B model: 14336 rows of 4096 bfloat16."""
    need(backend)
    rows = 14336
    x = draw((rows, N), torch.bfloat16, "continuous", dgen)
    check_topk(x, k_uniform(rows, N, dgen), -1, None, True, True, backend)
    mask = torch.rand(rows, N, generator=dgen, device=DEVICE) < 0.5  # half already pruned
    check_topk(x, k_uniform(rows, mask.sum(1), dgen), -1, mask, True, True, backend, threshold=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_float64(backend, dgen):
    need(backend)
    x = draw((1024, N), torch.float64, "continuous", dgen)
    x[:, 1::4] = x[:, ::4]  # exact float64 duplicates inside each row (ties that need all 64 bits)
    mask = torch.rand(1024, N, generator=dgen, device=DEVICE) < 0.8
    check_topk(x, k_uniform(1024, N, dgen), -1, None, True, True, backend)
    check_topk(x, k_any(mask.sum(1), dgen), -1, mask, False, False, backend)
    check_topk(x.t(), k_uniform(1024, N, dgen), 0, None, True, False, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_all_equal(backend, dgen):
    """Rows of one value (and of -0/+0): the first k_i indices, whatever k_i, so the tie scan
    across warps, tiles and blocks must count in index order."""
    need(backend)
    rows = 512
    k = torch.randint(0, N + 1, (rows,), generator=dgen, device=DEVICE)
    x = torch.full((rows, N), 3.0, device=DEVICE)
    x[rows // 2:] = torch.where(torch.rand(rows // 2, N, generator=dgen, device=DEVICE) < 0.5, -0.0, 0.0)
    got = check_topk(x, k, -1, None, False, True, backend)
    assert torch.equal(got, torch.arange(N, device=DEVICE)[None, :] < k[:, None])
    got = check_topk(x, k, -1, None, True, False, backend)
    assert torch.equal(got, torch.arange(N, device=DEVICE)[None, :] < k[:, None])


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_non_contiguous(backend, dgen):
    """Slices along dim 0 of a transposed 4096 x 4096 weight, a strided view, a 3-D tensor."""
    need(backend)
    x = draw((N, N), torch.bfloat16, "ties", dgen)
    mask = torch.rand(N, N, generator=dgen, device=DEVICE) < 0.6
    check_topk(x.t(), k_any(mask.t().sum(0), dgen), 0, mask.t(), True, True, backend)
    strided = x[::4, ::2]  # (1024, 2048)
    check_topk(strided, k_uniform(1024, 2048, dgen), -1, None, True, True, backend)
    x3 = draw((8, 512, 1000), torch.float32, "ties", dgen)
    k3 = torch.randint(0, 513, (8, 1000), generator=dgen, device=DEVICE)
    check_topk(x3, k3, 1, None, True, False, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_edge_shapes(backend, dgen):
    need(backend)
    check_topk(torch.empty(0, N, device=DEVICE), 0, -1, None, True, True, backend)
    check_topk(torch.empty(0, N, device=DEVICE), torch.empty(0, dtype=torch.int64, device=DEVICE), -1, None,
               True, True, backend)
    one = draw((N, 1), torch.float32, "ties", dgen)
    check_topk(one, torch.randint(0, 2, (N,), generator=dgen, device=DEVICE), -1, None, True, True, backend)
    scalar = torch.tensor(-2.0, device=DEVICE)
    check_topk(scalar, 1, 0, None, True, True, backend)
    check_topk(scalar, torch.tensor(0, device=DEVICE), 0, None, True, True, backend)
    x = torch.tensor([[0.0, -0.0, float("inf"), -float("inf"), 1e-40, -1e-40] + [0.0] * 40], device=DEVICE)
    for magnitude, largest in FLAGS if backend == "cuda" else [(True, True)]:
        for k in (1, 3, 5, 46):
            check_topk(x, k, -1, None, magnitude, largest, backend)


# ---------------------------------------------------------------------------------------------
# Short rows (at most 32 entries: one thread a row in the CUDA kernel).

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_nm_2_4_on_4096x4096(backend, dtype, dgen):
    need(backend)
    x = draw((N, N), dtype, "continuous", dgen)
    for dim in (-1, 0):
        got = ops.nm_mask(x, 2, 4, dim, backend=backend)
        assert torch.equal(got, oracle_nm(x, 2, 4, dim, True))
        assert (got.movedim(dim % 2, -1).reshape(-1, 4).sum(1) == 2).all()
    ties = draw((N, N), dtype, "ties", dgen)
    assert torch.equal(ops.nm_mask(ties, 2, 4, backend=backend), oracle_nm(ties, 2, 4, -1, True))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nm_other_patterns(backend, dgen):
    need(backend)
    x = draw((2048, N), torch.float16, "ties", dgen)
    for n, m in ((1, 4), (4, 8), (0, 4), (4, 4), (16, 32), (3, 64)):  # Triton: its N:M kernel up to m = 32
        for magnitude in (True, False):
            got = ops.nm_mask(x, n, m, magnitude=magnitude, backend=backend)
            assert torch.equal(got, oracle_nm(x, n, m, -1, magnitude)), (n, m, magnitude)


@pytest.mark.parametrize("backend", BACKENDS)
def test_short_rows(backend, dgen):
    """Rows of 1..33 entries (33: the block-per-row kernel), many rows, ties, masks, per-row k."""
    need(backend)
    rows = 100_000
    lengths = range(1, 34) if backend == "cuda" else (4, 17, 32, 33)
    for n in lengths:
        x = draw((rows, n), torch.float32, "ties", dgen)
        mask = torch.rand(rows, n, generator=dgen, device=DEVICE) < 0.7
        k = k_any(mask.sum(1), dgen)
        magnitude, largest = FLAGS[n % 4] if backend == "cuda" else (True, True)
        check_topk(x, k, -1, mask, magnitude, largest, backend)
        if backend == "cuda" and n in (4, 17, 32):
            for magnitude, largest in FLAGS:
                check_topk(x.double(), torch.randint(0, n + 1, (rows,), generator=dgen, device=DEVICE), -1, None,
                           magnitude, largest, backend)


# ---------------------------------------------------------------------------------------------
# Global selection: 16 tensors, ~17M elements.

GLOBAL_SHAPES = [(4096, 1024), (1024, 4096), (2048, 1024), (1024, 1024), (1024, 1024), (1024, 1024),
                 (1024, 1024), (512, 512), (512, 512), (512, 512), (512, 512), (0, 128), (3,),
                 (1000, 1000), (333, 777), (4097,)]


def global_params():
    cases = [("cuda", torch.float32, "ties"), ("cuda", torch.float32, "continuous"),
             ("cuda", torch.bfloat16, "ties"), ("cuda", torch.float16, "ties"),
             ("cuda", torch.float64, "continuous"), ("triton", torch.float32, "continuous"),
             ("triton", torch.bfloat16, "ties"), ("triton", torch.float64, "ties")]
    return [pytest.param(b, d, kind, id=f"{b}-{str(d)[6:]}-{kind}") for b, d, kind in cases]


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("backend, dtype, kind", global_params())
def test_global_16_tensors(backend, dtype, kind, masked, dgen):
    need(backend, "global_topk_masks")
    tensors = [draw(s, dtype, kind, dgen) for s in GLOBAL_SHAPES]
    tensors[1] = tensors[1].t()  # non-contiguous: ranked by its own row-major flat index
    assert sum(t.numel() for t in tensors) > 16_000_000
    masks = [torch.rand(t.shape, generator=dgen, device=DEVICE) < 0.6 for t in tensors] if masked else None
    flags = [(True, True), (False, False)] if backend == "cuda" else [(True, True)]
    for magnitude, largest in flags:
        oracle = GlobalOracle(tensors, masks, magnitude, largest)
        for k in (0, 1, oracle.total // 2, oracle.total):
            check_global(tensors, k, masks, magnitude, largest, backend, oracle)


@pytest.mark.parametrize("backend", BACKENDS)
def test_global_ties_across_tensors(backend, dgen):
    """Equal scores everywhere: the first k in tensor order, then flat index."""
    need(backend, "global_topk_masks")
    tensors = [torch.zeros(1000, 1000, device=DEVICE), torch.full((3000,), -0.0, device=DEVICE),
               torch.zeros(0, device=DEVICE), torch.zeros(2048, 512, device=DEVICE)]
    total = sum(t.numel() for t in tensors)
    for k in (1, 999_999, 1_000_000, 1_001_500, 1_003_000, total - 1):
        got = ops.global_topk_masks(tensors, k, backend=backend)
        flat = torch.cat([g.reshape(-1) for g in got])
        assert int(flat.sum()) == k and bool(flat[:k].all())
    check_global(tensors, 1_002_345, None, False, True, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_global_matches_per_tensor_cpu(backend, dgen):
    """The GPU kernels and the C++ CPU kernel pick the same entries."""
    need(backend, "global_topk_masks")
    if _backend.available("cpp", "cpu", "global_topk_masks") is not None:
        pytest.skip("no C++ CPU kernel")
    tensors = [draw(s, torch.bfloat16, "ties", dgen) for s in ((2048, 2048), (300, 700), (65537,))]
    total = sum(t.numel() for t in tensors)
    got = ops.global_topk_masks(tensors, total // 3, backend=backend)
    cpu = ops.global_topk_masks([t.cpu() for t in tensors], total // 3, backend="cpp")
    assert all(torch.equal(g.cpu(), c) for g, c in zip(got, cpu))


# ---------------------------------------------------------------------------------------------
# Bad input on CUDA tensors.

@pytest.mark.parametrize("backend", BACKENDS)
def test_errors(backend, dgen):
    need(backend)
    x = draw((64, N), torch.float32, "continuous", dgen)
    bad = x.clone()
    bad[37, 1234] = float("nan")
    with pytest.raises(ValueError, match=r"NaN in slice 37"):
        ops.topk_mask(bad, 10, backend=backend)
    with pytest.raises(ValueError, match=r"NaN in slice 1234"):
        ops.topk_threshold(bad, 10, dim=0, backend=backend)
    mask = torch.ones(64, N, dtype=torch.bool, device=DEVICE)
    mask[37, 1234] = False
    assert int(ops.topk_mask(bad, 10, mask=mask, backend=backend).sum()) == 640  # NaN masked out: fine
    with pytest.raises(ValueError, match=rf"k = {N + 1} for slice 0, which has {N} candidates"):
        ops.topk_mask(x, N + 1, backend=backend)
    k = torch.full((64,), 5, device=DEVICE)
    k[40] = N
    one_pruned = torch.ones(64, N, dtype=torch.bool, device=DEVICE)
    one_pruned[40, 17] = False
    with pytest.raises(ValueError, match=rf"k = {N} for slice 40, which has {N - 1} candidates"):
        ops.topk_mask(x, k, mask=one_pruned, backend=backend)
    k[40] = -3
    with pytest.raises(ValueError, match=r"k = -3 for slice 40"):
        ops.topk_mask(x, k, backend=backend)
    # short rows (one thread a row)
    short = draw((1000, 8), torch.bfloat16, "ties", dgen)
    short[999, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN in slice 999"):
        ops.topk_mask(short, 2, backend=backend)
    with pytest.raises(ValueError, match=r"NaN"):
        ops.nm_mask(short, 2, 4, backend=backend)
    with pytest.raises(ValueError, match=r"k = 9 for slice 0, which has 8 candidates"):
        ops.topk_mask(short[:998], 9, backend=backend)
    # devices
    with pytest.raises(ValueError, match="cpu"):
        ops.topk_mask(x, torch.full((64,), 3), backend=backend)
    with pytest.raises(ValueError, match="cpu"):
        ops.topk_mask(x, 3, mask=torch.ones(64, N, dtype=torch.bool), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_global_errors(backend, dgen):
    need(backend, "global_topk_masks")
    a = draw((1024, 1024), torch.float32, "continuous", dgen)
    b = draw((5000,), torch.float32, "continuous", dgen)
    b_nan = b.clone()
    b_nan[4321] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ops.global_topk_masks([a, b_nan], 10, backend=backend)
    masks = [torch.ones_like(a, dtype=torch.bool), torch.ones_like(b, dtype=torch.bool)]
    masks[1][4321] = False
    assert sum(int(m.sum()) for m in ops.global_topk_masks([a, b_nan], 10, masks=masks, backend=backend)) == 10
    total = a.numel() + b.numel()
    with pytest.raises(ValueError, match=rf"k = {total + 1} but the tensors hold {total} candidates"):
        ops.global_topk_masks([a, b], total + 1, backend=backend)
    with pytest.raises(ValueError, match=rf"k = {total} but the tensors hold {total - 1} candidates"):
        ops.global_topk_masks([a, b], total, masks=masks, backend=backend)
    with pytest.raises(ValueError, match="cpu"):
        ops.global_topk_masks([a, b.cpu()], 1, backend=backend)
    with pytest.raises(ValueError, match="cpu"):
        ops.global_topk_masks([a, b], 1, masks=[masks[0], masks[1].cpu()], backend=backend)
    with pytest.raises(ValueError, match="torch.bfloat16"):
        ops.global_topk_masks([a, b.bfloat16()], 1, backend=backend)


# ---------------------------------------------------------------------------------------------
# Backends agree with each other, auto, opcheck, torch.compile.

def test_cuda_matches_cpp(dgen):
    need("cuda")
    if _backend.available("cpp", "cpu", "row_topk_mask") is not None:
        pytest.skip("no C++ CPU kernel")
    x = draw((1024, N), torch.bfloat16, "ties", dgen)
    mask = torch.rand(1024, N, generator=dgen, device=DEVICE) < 0.7
    k = k_any(mask.sum(1), dgen)
    for magnitude, largest in FLAGS:
        kw = dict(mask=mask, magnitude=magnitude, largest=largest)
        gpu = ops.topk_mask(x, k, backend="cuda", **kw)
        cpu = ops.topk_mask(x.cpu(), k.cpu(), backend="cpp", **{**kw, "mask": mask.cpu()})
        assert torch.equal(gpu.cpu(), cpu)
        assert torch.equal(ops.topk_threshold(x, k, backend="cuda", **kw).cpu(),
                           ops.topk_threshold(x.cpu(), k.cpu(), backend="cpp", **{**kw, "mask": mask.cpu()}))


def test_auto_backend(dgen):
    chosen = _backend.resolve("row_topk_mask", None, torch.device(DEVICE))
    if chosen == "triton" and _triton_interpreted():
        pytest.skip("auto picks Triton, which runs in its interpreter here")
    x = draw((N, 1000), torch.float32, "ties", dgen)
    k = k_uniform(N, 1000, dgen)
    expected, _ = oracle_topk(x, k, -1, None, True, True)
    assert torch.equal(ops.topk_mask(x, k, magnitude=True), expected)
    assert torch.equal(ops.global_topk_masks([x], 12345)[0], GlobalOracle([x]).expected(12345)[0])


def opcheck_cases():
    cases = []
    for name in ("row_topk_mask", "global_topk_masks", "row_topk_mask_triton", "global_topk_masks_triton"):
        for dtype in (torch.float32, torch.bfloat16):
            for masked in (False, True):
                cases.append(pytest.param(name, dtype, masked,
                                          id=f"{name}-{str(dtype)[6:]}-{'mask' if masked else 'nomask'}"))
    return cases


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_opcheck_nm_mask_triton_cuda(dtype, dgen):
    need("triton", "row_topk_mask")
    for count, m in ((1001, 4), (1000, 4), (77, 6)):  # odd and even counts (two bf16 groups a row), padding
        torch.library.opcheck(torch.ops.lqkernels.nm_mask_triton.default,
                              (draw((count, m), dtype, "ties", dgen), 2, True))


@pytest.mark.parametrize("name, dtype, masked", opcheck_cases())
def test_opcheck_cuda(name, dtype, masked, dgen):
    base = name.removesuffix("_triton")
    need("triton" if name.endswith("_triton") else "cuda", base)
    op = getattr(torch.ops.lqkernels, name).default
    if base == "row_topk_mask":
        # the CUDA kernels: block per row and thread per row (Triton: one shape, one compile)
        for rows, n in ((7, 300), (9, 12)) if not name.endswith("_triton") else ((7, 300),):
            x = draw((rows, n), dtype, "ties", dgen)
            mask = torch.rand(rows, n, generator=dgen, device=DEVICE) < 0.7 if masked else None
            cand = mask.sum(1) if masked else torch.full((rows,), n, device=DEVICE)
            torch.library.opcheck(op, (x, k_any(cand, dgen), mask, True, True))
    else:
        xs = [draw(s, dtype, "ties", dgen) for s in ((30, 40), (500,), (0, 3))]
        masks = [torch.rand(t.shape, generator=dgen, device=DEVICE) < 0.7 for t in xs] if masked else None
        total = sum(int(m.sum()) for m in masks) if masked else sum(t.numel() for t in xs)
        torch.library.opcheck(op, (xs, masks, total // 2, True, True))


def select_everything(x, k, mask):
    return (ops.topk_mask(x, k, mask=mask, magnitude=True),
            ops.topk_threshold(x, k, mask=mask, magnitude=True),
            ops.nm_mask(x, 2, 4))


@pytest.mark.skipif(_triton_interpreted(),
                    reason="TRITON_INTERPRET=1 would run inductor's Triton kernels in the interpreter")
def test_compile_fullgraph_cuda(dgen):
    torch._dynamo.reset()
    x = draw((256, 1024), torch.bfloat16, "ties", dgen)
    mask = torch.rand(256, 1024, generator=dgen, device=DEVICE) < 0.7
    k = k_any(mask.sum(1), dgen)
    got = torch.compile(select_everything, fullgraph=True)(x, k, mask)
    expected = select_everything(x, k, mask)
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
    exp_mask, exp_thr = oracle_topk(x, k, -1, mask, True, True)
    assert torch.equal(got[0], exp_mask) and torch.equal(got[1], exp_thr)
