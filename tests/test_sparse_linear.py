"""Sparse layers: the kernel-level ops (bitmap_linear, csr16_linear, bsr_linear) on every backend,
and lqkernels.nn.SparseLinear / sparsify_ / densify_.

The oracle is F.linear(x, W * mask, b) in float64. Tolerances: float32 and float64 against a bound
from the magnitudes; float16 / bfloat16 within 2x PyTorch's own same-dtype error (F.linear in that
dtype against the same float64 oracle) plus one ulp of the output scale, as flash-attention does.
Triton runs on the CPU under TRITON_INTERPRET=1: tiny shapes, no bfloat16.
"""
from __future__ import annotations

import copy
import functools
import io
import math

import pytest
import torch
import torch.nn.utils.prune  # noqa: F401  (torch.nn.utils does not import it)
from torch import nn
from torch.nn import functional as F

import lqkernels
from lqkernels import _ops, _triton
from lqkernels import nn as lqnn
from lqkernels.nn import SparseLinear, pack_weight
from conftest import DEVICES, available_pairs


def interpreted(backend: str) -> bool:
    """True when `backend` runs under Triton's interpreter (tiny shapes, no bfloat16)."""
    return backend == "triton" and _triton.interpreted()


FORMATS = ("bitmap", "csr16", "bsr")
OP_OF = {"bitmap": "bitmap_linear", "csr16": "csr16_linear", "bsr": "bsr_linear"}
INDEX_OF = {"bitmap": ("row_offsets", "bitmap"), "csr16": ("row_offsets", "columns"),
            "bsr": ("block_row_offsets", "block_columns", "block_mask")}
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# (M, out_features, in_features): decode and tiled strategies of the C++ kernels (M <= 8, tiles of
# 16 / 32 / 64 rows), column chunks (in > 512), in_features not a multiple of 32, empty batches.
SHAPES = [(1, 24, 70), (5, 17, 64), (9, 33, 40), (0, 8, 16), (3, 0, 16)]
LARGE_SHAPES = [(20, 12, 600), (40, 20, 100), (70, 9, 33)]  # not under Triton's interpreter


def kernel_cases():
    cases = []
    for fmt in FORMATS:
        for device, backend in available_pairs(kernels=(OP_OF[fmt],)):
            for dtype in DTYPES:
                if interpreted(backend) and dtype == torch.bfloat16:
                    continue
                for shape in SHAPES + ([] if interpreted(backend) else LARGE_SHAPES):
                    cases.append(pytest.param(fmt, device, backend, dtype, shape,
                                              id=f"{fmt}-{device}-{backend}-{str(dtype)[6:]}-{shape}"))
    return cases


def random_layer(gen, out_features, in_features, dtype, device="cpu", block_pruned=False):
    """W, a mask whose rows have very different densities (row 0 fully kept, row 1 empty, the
    rest anywhere from 0 to 1), and a bias."""
    w = torch.randn(out_features, in_features, generator=gen)
    density = torch.rand(out_features, 1, generator=gen)
    mask = torch.rand(out_features, in_features, generator=gen) < density
    if block_pruned:  # whole 32x32 tiles empty, others partly kept
        tiles = torch.rand(-(-out_features // 32), -(-in_features // 32), generator=gen) < 0.5
        mask &= tiles.repeat_interleave(32, 0).repeat_interleave(32, 1)[:out_features, :in_features]
    if out_features > 1:
        mask[0], mask[1] = True, False
    b = torch.randn(out_features, generator=gen)
    return w.to(device, dtype), mask.to(device), b.to(device, dtype)


def oracle(x, w, mask, b):
    return F.linear(x.double(), (w * mask).double(), None if b is None else b.double())


def assert_close_to(y, expected, own, reduced: int):
    """y against its float64 value `expected`, where `own` is PyTorch's result in y's dtype and
    `reduced` the length of the sums behind each entry."""
    assert y.dtype == own.dtype and y.shape == expected.shape
    err = (y.double() - expected).abs().max().item() if y.numel() else 0.0
    scale = 1.0 + (expected.abs().max().item() if y.numel() else 0.0)
    if y.dtype in (torch.float16, torch.bfloat16):
        own_err = (own.double() - expected).abs().max().item() if y.numel() else 0.0
        bound = 2 * own_err + torch.finfo(y.dtype).eps * scale
    else:
        bound = (1e-5 if y.dtype == torch.float32 else 1e-12) * scale * (1 + reduced ** 0.5)
    assert err <= bound, f"max error {err} above {bound}"


def assert_close_to_oracle(y, x, w, mask, b):
    assert_close_to(y, oracle(x, w, mask, b), F.linear(x, w * mask, b), x.shape[1])


def kernel_of(fmt, backend):
    from lqkernels import _backend
    return _backend.kernel(OP_OF[fmt], backend)


def call(fmt, backend, x, packed, b, out_features):
    extra = (out_features,) if fmt == "bsr" else ()
    return kernel_of(fmt, backend)(x, packed["values"], *[packed[n] for n in INDEX_OF[fmt]], b, *extra)


@pytest.mark.parametrize("fmt, device, backend, dtype, shape", kernel_cases())
def test_kernel_matches_masked_dense(fmt, device, backend, dtype, shape, gen):
    m, out_features, in_features = shape
    w, mask, b = random_layer(gen, out_features, in_features, dtype, device, block_pruned=fmt == "bsr")
    x = torch.randn(m, in_features, generator=gen).to(device, dtype)
    packed = pack_weight(w, mask, fmt)
    assert_close_to_oracle(call(fmt, backend, x, packed, b, out_features), x, w, mask, b)
    assert_close_to_oracle(call(fmt, backend, x, packed, None, out_features), x, w, mask, None)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("device, backend", available_pairs(kernels=tuple(OP_OF.values())))
def test_kernel_non_contiguous_x_and_all_pruned(fmt, device, backend, gen):
    w, mask, b = random_layer(gen, 10, 48, torch.float32, device)
    x = torch.randn(48, 6, generator=gen).to(device).t()  # a transposed view
    assert_close_to_oracle(call(fmt, backend, x, pack_weight(w, mask, fmt), b, 10), x, w, mask, b)
    empty = torch.zeros_like(mask)
    y = call(fmt, backend, x, pack_weight(w, empty, fmt), b, 10)
    torch.testing.assert_close(y, b.expand(6, 10).contiguous())


def gradcheck_cases():
    return [pytest.param(fmt, d, b, id=f"{fmt}-{d}-{b}") for fmt in FORMATS
            for d, b in available_pairs(kernels=(OP_OF[fmt],))]


@pytest.mark.parametrize("fmt, device, backend", gradcheck_cases())
def test_gradcheck_x_values_bias(fmt, device, backend, gen):
    """Gradients reach x, the kept values and the bias (float64). bsr tiles also store zeros for
    pruned entries, whose gradient is 0 by design: check the function of the kept entries only."""
    w, mask, b = random_layer(gen, 7, 40, torch.float64, device, block_pruned=fmt == "bsr")
    packed = pack_weight(w, mask, fmt)
    index = [packed[n] for n in INDEX_OF[fmt]]
    extra = (7,) if fmt == "bsr" else ()
    x = torch.randn(3, 40, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    b = b.clone().requires_grad_()
    op = kernel_of(fmt, backend)
    if fmt == "bsr":
        kept = _ops._unpack_bits(packed["block_mask"].unsqueeze(-1), 32)
        values = packed["values"][kept].clone().requires_grad_()

        def f(x, v, b):
            return op(x, packed["values"].new_zeros(kept.shape).masked_scatter(kept, v), *index, b, *extra)
    else:
        values = packed["values"].clone().requires_grad_()

        def f(x, v, b):
            return op(x, v, *index, b, *extra)
    # The interpreter runs ~20 ms per program: fast mode (random projections) keeps it to seconds.
    assert torch.autograd.gradcheck(f, (x, values, b), fast_mode=interpreted(backend))


@pytest.mark.parametrize("fmt, device, backend", gradcheck_cases())
def test_values_gradient_is_masked_dense_gradient(fmt, device, backend, gen):
    """The kept values' gradient equals the dense gradient at the kept positions, and nothing
    flows to pruned weights (bsr: not even to the stored zeros inside kept tiles)."""
    w, mask, b = random_layer(gen, 9, 70, torch.float64, device, block_pruned=fmt == "bsr")
    layer = SparseLinear.from_linear(dense_linear(w, b), mask, format=fmt, backend=backend)
    x = torch.randn(4, 70, generator=gen, dtype=torch.float64).to(device)
    layer(x).square().sum().backward()
    wd = (w * mask).clone().requires_grad_()
    F.linear(x, wd, b).square().sum().backward()
    grad_dense = _ops._sparse_to_dense(fmt, layer.values.grad, INDEX_BUFFERS(layer)[0], INDEX_BUFFERS(layer)[1:],
                                       9, 70)
    torch.testing.assert_close(grad_dense, wd.grad * mask)


# ---- backward kernels (bitmap, csr16): dy · (W ∘ mask) and the kept entries of dyᵀ · x ----
GRAD_FORMATS = ("bitmap", "csr16")
GRAD_SHAPES = SHAPES + LARGE_SHAPES + [(16, 7, 50), (3, 5, 0), (2, 4, 1)]  # + a full tile, no inputs, one input


def grad_ops(fmt, path):
    """(grad_input, grad_values) of `fmt` through the dispatcher (the C++ kernels for CPU tensors,
    the references elsewhere) or the references themselves."""
    names = (f"{fmt}_linear_grad_input", f"{fmt}_linear_grad_values")
    if path == "reference":
        return tuple(_ops.SPARSE_GRAD_REFERENCES[n] for n in names)
    return tuple(getattr(torch.ops.lqkernels, n) for n in names)


@pytest.mark.parametrize("path", ["dispatcher", "reference"])
@pytest.mark.parametrize("shape", GRAD_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", GRAD_FORMATS)
def test_backward_kernels_match_float64(fmt, device, dtype, shape, path, gen):
    m, out_features, in_features = shape
    w, mask, _ = random_layer(gen, out_features, in_features, dtype, device)
    packed = pack_weight(w, mask, fmt)
    index = [packed[n] for n in INDEX_OF[fmt]]
    x = torch.randn(m, in_features, generator=gen).to(device, dtype)
    dy = torch.randn(out_features, m, generator=gen).to(device, dtype).t()  # a transposed view
    grad_input, grad_values = grad_ops(fmt, path)
    wm = w * mask
    assert_close_to(grad_input(dy, packed["values"], *index, in_features), dy.double() @ wm.double(), dy @ wm,
                    out_features)
    assert_close_to(grad_values(dy, x, packed["values"], *index), (dy.double().t() @ x.double())[mask],
                    (dy.t() @ x)[mask], m)


@pytest.mark.parametrize("fmt", GRAD_FORMATS)
@pytest.mark.parametrize("device", DEVICES)
def test_backward_kernels_opcheck_and_double_backward(fmt, device, gen):
    w, mask, b = random_layer(gen, 6, 40, torch.float64, device)
    packed = pack_weight(w, mask, fmt)
    index = [packed[n] for n in INDEX_OF[fmt]]
    x = torch.randn(3, 40, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    dy = torch.randn(3, 6, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    values = packed["values"].clone().requires_grad_()
    grad_input, grad_values = (getattr(torch.ops.lqkernels, f"{fmt}_linear_grad_{n}") for n in ("input", "values"))
    torch.library.opcheck(grad_input.default, (dy, values, *index, 40))
    torch.library.opcheck(grad_values.default, (dy, x, values, *index))
    op = getattr(torch.ops.lqkernels, OP_OF[fmt])
    assert torch.autograd.gradgradcheck(lambda x, v: op(x, v, *index, b), (x, values))


def test_backward_kernel_errors_name_the_value(gen):
    w, mask, _ = random_layer(gen, 6, 40, torch.float32)
    p = pack_weight(w, mask, "bitmap")
    dy, x = torch.randn(2, 6), torch.randn(2, 40)
    grad_input, grad_values = torch.ops.lqkernels.bitmap_linear_grad_input, torch.ops.lqkernels.bitmap_linear_grad_values
    with pytest.raises((RuntimeError, ValueError), match=r"dy must be \(M, 6\)"):
        grad_input(dy[:, :5], p["values"], p["row_offsets"], p["bitmap"], 40)
    with pytest.raises((RuntimeError, ValueError), match="in_features must be >= 0, got -1"):
        grad_input(dy, p["values"], p["row_offsets"], p["bitmap"], -1)
    with pytest.raises((RuntimeError, ValueError), match=r"\(6, 1\) bitmap"):
        grad_input(dy, p["values"], p["row_offsets"], p["bitmap"], 20)
    with pytest.raises((RuntimeError, ValueError), match=r"dy must be \(3, 6\)"):
        grad_values(dy, torch.randn(3, 40), p["values"], p["row_offsets"], p["bitmap"])
    with pytest.raises((RuntimeError, TypeError), match="dy dtype|dy is torch.float64"):
        grad_values(dy.double(), x, p["values"], p["row_offsets"], p["bitmap"])
    bad = p["bitmap"].clone()
    bad[3, 0] ^= 1  # one bit more than row 3's offsets hold
    with pytest.raises(RuntimeError, match="row 3 of the bitmap marks"):
        grad_values(dy, x, p["values"], p["row_offsets"], bad)
    with pytest.raises(RuntimeError, match="row 3 of the bitmap marks"):
        grad_input(dy, p["values"], p["row_offsets"], bad, 40)


def INDEX_BUFFERS(layer):  # noqa: N802  (the layer's index tensors, in op order)
    return [getattr(layer, n) for n in INDEX_OF[layer.format]]


def opcheck_cases():
    cases = []
    for fmt in FORMATS:
        for device, backend in available_pairs(kernels=(OP_OF[fmt],)):
            if backend != "torch":
                cases.append(pytest.param(fmt, device, backend, id=f"{fmt}-{device}-{backend}"))
    return cases


@pytest.mark.parametrize("fmt, device, backend", opcheck_cases())
def test_opcheck(fmt, device, backend, gen):
    w, mask, b = random_layer(gen, 6, 40, torch.float32, device)
    packed = pack_weight(w, mask, fmt)
    x = torch.randn(3, 40, generator=gen).to(device)
    extra = (6,) if fmt == "bsr" else ()
    name = OP_OF[fmt] + ("_triton" if backend == "triton" else "")
    op = getattr(torch.ops.lqkernels, name).default
    args = (x, packed["values"].requires_grad_(), *[packed[n] for n in INDEX_OF[fmt]], b, *extra)
    torch.library.opcheck(op, args)


# ---- bad input ----

def test_kernel_errors_name_the_value(gen):
    w, mask, b = random_layer(gen, 6, 40, torch.float32)
    p = pack_weight(w, mask, "bitmap")
    x = torch.randn(2, 40)
    op = torch.ops.lqkernels.bitmap_linear
    with pytest.raises((RuntimeError, ValueError), match=r"\(6, 3\) bitmap"):
        op(torch.randn(2, 70), p["values"], p["row_offsets"], p["bitmap"], b)
    with pytest.raises((RuntimeError, TypeError), match="values dtype"):
        op(x, p["values"].double(), p["row_offsets"], p["bitmap"], b)
    with pytest.raises((RuntimeError, TypeError), match="int64"):
        op(x, p["values"], p["row_offsets"].int(), p["bitmap"], b)
    with pytest.raises((RuntimeError, ValueError), match="bias"):
        op(x, p["values"], p["row_offsets"], p["bitmap"], b[:3])
    bad = p["bitmap"].clone()
    bad[2, 0] ^= 1  # one bit more or less than the offsets say
    with pytest.raises(RuntimeError, match="row 2 of the bitmap"):
        op(x, p["values"], p["row_offsets"], bad, b)
    bad = p["bitmap"].clone()
    bad[0, 0] &= ~1  # row 0 keeps all 40 columns: move the bit of column 0 ...
    bad[0, 1] |= 1 << 20  # ... to column 52 of a 40-column layer
    with pytest.raises(RuntimeError, match="past in_features"):
        op(x, p["values"], p["row_offsets"], bad, b)
    c = pack_weight(w, mask, "csr16")
    cols = c["columns"].clone()
    cols[39] = 45  # the last of row 0's 40 columns
    with pytest.raises(RuntimeError, match="column 45"):
        torch.ops.lqkernels.csr16_linear(x, c["values"], c["row_offsets"], cols, b)
    row0 = c["columns"][:40].flip(0).contiguous()  # row 0 keeps all 40 columns
    with pytest.raises(RuntimeError, match="distinct and ascending"):
        torch.ops.lqkernels.csr16_linear(x, c["values"], c["row_offsets"], torch.cat([row0, c["columns"][40:]]), b)
    offsets = c["row_offsets"].clone()
    offsets[-1] += 1
    with pytest.raises(RuntimeError, match="row offsets must run from 0"):
        torch.ops.lqkernels.csr16_linear(x, c["values"], offsets, c["columns"], b)


@pytest.mark.parametrize("device", DEVICES)
def test_csr16_column_check_every_position(device, gen):
    """The column check compares 32 columns at a time: a repeat or a descent anywhere in a long row
    (either side of a 32-column boundary, in the tail) is caught, and columns past 32767 (negative
    as int16) rank above smaller ones."""
    in_features = 65536
    kept = torch.cat([torch.arange(0, 50), torch.arange(32740, 32800), torch.arange(65500, 65536)])
    mask = torch.zeros(2, in_features, dtype=torch.bool)
    mask[0, kept] = True
    mask[1, kept[::7]] = True
    w = torch.randn(2, in_features, generator=gen)
    x = torch.randn(3, in_features, generator=gen)
    c = {k: v.to(device) for k, v in pack_weight(w, mask, "csr16").items()}
    op = torch.ops.lqkernels.csr16_linear
    expected = F.linear(x.double(), (w * mask).double())
    torch.testing.assert_close(op(x.to(device), c["values"], c["row_offsets"], c["columns"], None).cpu().double(),
                               expected, rtol=1e-5, atol=1e-4)
    for position in (1, 31, 32, 33, 63, 64, 100, len(kept) - 1):
        for how in ("repeat", "descend"):
            cols = c["columns"].clone()
            cols[position] = cols[position - 1] if how == "repeat" else cols[position - 1] - 1
            with pytest.raises(RuntimeError, match="row 0 must be distinct and ascending"):
                op(x.to(device), c["values"], c["row_offsets"], cols, None)


def test_module_errors_name_the_value(gen):
    w, mask, b = random_layer(gen, 6, 40, torch.float32)
    layer = SparseLinear.from_linear(dense_linear(w, b), mask, format="bitmap")
    with pytest.raises(ValueError, match="in_features=40.*\\(2, 41\\)"):
        layer(torch.randn(2, 41))
    with pytest.raises(TypeError, match="float64.*float32"):
        layer(torch.randn(2, 40, dtype=torch.float64))
    with pytest.raises(ValueError, match="meta"):
        layer(torch.randn(2, 40, device="meta"))
    with pytest.raises(ValueError, match="mask shape \\(6, 39\\)"):
        SparseLinear.from_linear(dense_linear(w, b), mask[:, :39])
    with pytest.raises(TypeError, match="bool"):
        SparseLinear.from_linear(dense_linear(w, b), mask.float())
    with pytest.raises(ValueError, match="unknown format 'coo'"):
        SparseLinear.from_linear(dense_linear(w, b), mask, format="coo")
    with pytest.raises(ValueError, match="65536"):
        pack_weight(torch.zeros(1, 70000), torch.zeros(1, 70000, dtype=torch.bool), "csr16")


# ---- the module ----

def dense_linear(w, b=None):
    linear = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        linear.weight.copy_(w)
        if b is not None:
            linear.bias.copy_(b)
    return linear


ALL_FORMATS = FORMATS + ("dense", "auto")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_module_matches_masked_linear_any_leading_shape(fmt, device, gen):
    w, mask, b = random_layer(gen, 20, 72, torch.float32, device)
    layer = SparseLinear.from_linear(dense_linear(w, b), mask, format=fmt)
    for shape in [(72,), (3, 72), (2, 5, 72), (0, 72), (2, 0, 72)]:
        x = torch.randn(*shape, generator=gen).to(device)
        assert_close_to_oracle(layer(x).reshape(-1, 20), x.reshape(-1, 72), w, mask, b)
        assert layer(x).shape == (*shape[:-1], 20)
    x = torch.randn(72, 7, generator=gen).to(device).t()
    assert_close_to_oracle(layer(x), x, w, mask, b)
    torch.testing.assert_close(layer.weight, w * mask)
    torch.testing.assert_close(layer.mask, mask if fmt != "dense" else mask)
    back = layer.to_linear()
    assert type(back) is nn.Linear
    torch.testing.assert_close(back.weight, w * mask)


def test_mask_from_prune_and_from_zeros(gen):
    linear = nn.Linear(64, 16)
    nn.utils.prune.l1_unstructured(linear, "weight", amount=0.8)
    layer = SparseLinear.from_dense(linear, format="csr16")
    assert torch.equal(layer.mask, linear.weight_mask.bool())
    assert layer.nnz == int(linear.weight_mask.sum())
    x = torch.randn(3, 64, generator=gen)
    torch.testing.assert_close(layer(x), linear(x))
    w = torch.randn(8, 40, generator=gen) * (torch.rand(8, 40, generator=gen) < 0.3)
    layer = SparseLinear.from_linear(dense_linear(w))
    assert torch.equal(layer.mask, w != 0) and layer.bias is None


def test_nbytes_and_repr_report_compression(gen):
    w = torch.randn(64, 512, generator=gen)
    mask = torch.rand(64, 512, generator=gen) < 0.1
    layer = SparseLinear.from_linear(dense_linear(w, torch.zeros(64)), mask, format="bitmap")
    nnz = int(mask.sum())
    assert layer.nbytes == nnz * 4 + 64 * 512 // 8 + 65 * 8 + 64 * 4
    assert layer.nbytes < 0.2 * 64 * 512 * 4
    text = repr(layer)
    for part in ("format=bitmap", f"sparsity={1 - nnz / (64 * 512):.3f}", "nbytes=", "backend=cpp"):
        assert part in text
    csr = SparseLinear.from_linear(dense_linear(w), mask, format="csr16")
    assert csr.nbytes == nnz * 6 + 65 * 8


def test_auto_keeps_dense_where_sparse_is_slower(gen):
    """The cost model's choices (calibrate=False; measured choices: test_calibration_*)."""
    w = torch.randn(32, 64, generator=gen)
    full = SparseLinear.from_linear(dense_linear(w), torch.ones(32, 64, dtype=torch.bool), calibrate=False)
    assert full.format == "dense" and "auto:dense" in repr(full)
    tiny = SparseLinear.from_linear(dense_linear(w), torch.rand(32, 64, generator=gen) < 0.05)
    assert tiny.format == "dense"  # too small for a sparse call's fixed cost to pay (never measured)
    w = torch.randn(256, 512, generator=gen)
    sparse = SparseLinear.from_linear(dense_linear(w), torch.rand(256, 512, generator=gen) < 0.05, calibrate=False)
    assert sparse.format in ("bitmap", "csr16")
    assert sparse.resolved_backend(1) == "cpp"


def test_cost_model_tables_interpolate_in_density():
    d = lqnn.COST_DENSITIES
    assert list(d) == sorted(d)
    for kind, entries in lqnn.COST_MODEL.items():
        largest = [m for m, _ in entries]
        assert largest == sorted(largest) and largest[-1] == math.inf, kind
        for _, costs in entries:
            for table in costs.values():
                assert len(table) == len(d) and min(table) > 0, kind
    table = lqnn.COST_MODEL["cpu"][0][1]["bitmap"]
    big = 1 << 40  # bytes: larger than any cache, so the "cpu" table
    cost = functools.partial(lqnn.predicted_cost, "bitmap", batch=1, device_type="cpu", dense_bytes=big)
    assert cost(d[3]) == pytest.approx(table[3])
    assert cost((d[3] + d[4]) / 2) == pytest.approx((table[3] + table[4]) / 2)
    assert cost(0.0) == pytest.approx(table[0]) and cost(1.0) == pytest.approx(table[-1])  # flat outside
    assert lqnn.predicted_cost("dense", 0.3, 1, "cpu", big) == 1.0
    assert lqnn.predicted_cost("bsr", 0.3, 1, "cpu", big) == math.inf  # not modelled on the CPU


def test_cost_model_follows_the_last_level_cache(monkeypatch, gen):
    """A dense W larger than the last-level cache uses the "cpu" table (the dense product reads
    memory), one that fits the cautious "cpu-cached" table; an unknown cache size counts as fitting."""
    assert lqnn.LAST_LEVEL_CACHE_BYTES == lqnn._last_level_cache_bytes() >= 0
    for cache, kind in ((32 << 20, "cpu"), (1 << 30, "cpu-cached"), (0, "cpu-cached")):
        monkeypatch.setattr(lqnn, "LAST_LEVEL_CACHE_BYTES", cache)
        assert lqnn.cost_model_kind("cpu", 64 << 20) == kind
        assert lqnn.cost_model_kind("cuda", 64 << 20) == "cuda"
    w = torch.randn(512, 256, generator=gen)
    half = torch.rand(512, 256, generator=gen) < 0.5
    for cache, expected in ((1 << 10, "bitmap"), (1 << 30, "dense")):  # W: 512 KB
        monkeypatch.setattr(lqnn, "LAST_LEVEL_CACHE_BYTES", cache)
        assert SparseLinear.from_linear(dense_linear(w), half, calibrate=False).format == expected


@pytest.fixture
def fake_timer(monkeypatch):
    """Calibration with made-up timings: `speed[name]` seconds per call of candidate `name`
    ("dense", "bitmap", "csr16" when a format is chosen; "dense", "sparse" per batch range), and a
    log of every measurement. The process-wide cache starts empty and is restored afterwards."""
    speed, log = {}, []

    def time_calls(calls, rounds=lqnn.CALIBRATION_ROUNDS):
        for call in calls.values():
            call()  # the candidates run, as in a real measurement
        log.append(sorted(calls))
        return {name: speed[name] / speed["dense"] for name in calls}

    monkeypatch.setattr(lqnn, "_time_calls", time_calls)
    monkeypatch.setattr(lqnn, "_calibrated", {})
    return speed, log


def test_calibration_chooses_the_measured_format(gen, fake_timer):
    speed, log = fake_timer
    w = torch.randn(256, 512, generator=gen)
    mask = torch.rand(256, 512, generator=gen) < 0.05  # the cost model says csr16 here
    speed.update(dense=1.0, bitmap=0.5, csr16=2.0)
    assert SparseLinear.from_linear(dense_linear(w), mask).format == "bitmap"
    assert log == [["bitmap", "csr16", "dense"]] * len(lqnn.CALIBRATION_BATCHES)
    assert SparseLinear.from_linear(dense_linear(w), mask).format == "bitmap"  # cached: no new timing
    assert len(log) == len(lqnn.CALIBRATION_BATCHES)
    speed.update(dense=1.0, bitmap=0.9, csr16=1.5)  # within the margin: not worth it
    other = torch.rand(256, 512, generator=gen) < 0.3
    layer = SparseLinear.from_linear(dense_linear(w), other)
    assert layer.format == "dense" and "calibrated" in repr(layer)
    x = torch.randn(3, 512, generator=gen)
    assert_close_to_oracle(layer(x), x, w, other, None)
    assert SparseLinear.from_linear(dense_linear(w), other, calibrate=False).format == "bitmap"  # the model's


def test_auto_chooses_for_the_batch_sizes_asked(gen, monkeypatch):
    """batch_sizes: the format is measured at those batch sizes only (e.g. (1,) for decode), and
    the cost model sums its predictions over them; sparsify_ passes them on."""
    speeds = {1: dict(dense=1.0, bitmap=0.5, csr16=0.8), 16: dict(dense=1.0, bitmap=3.0, csr16=0.7)}
    seen = []

    def time_calls(calls, rounds=lqnn.CALIBRATION_ROUNDS):
        batch = calls["dense"]().shape[0]  # the candidates run on a random x of the batch measured
        seen.append(batch)
        return {name: speeds[batch][name] for name in calls}

    monkeypatch.setattr(lqnn, "_time_calls", time_calls)
    monkeypatch.setattr(lqnn, "_calibrated", {})
    w = torch.randn(256, 512, generator=gen)
    mask = torch.rand(256, 512, generator=gen) < 0.3
    assert SparseLinear.from_linear(dense_linear(w), mask).format == "csr16" and seen == [1, 16]  # 1.5 vs 3.5
    seen.clear()
    assert SparseLinear.from_linear(dense_linear(w), mask, batch_sizes=(1,)).format == "bitmap" and seen == [1]
    seen.clear()
    model = nn.Sequential(dense_linear(w))
    model[0].weight.data *= mask
    lqkernels.sparsify_(model, lambda module, fqn: isinstance(module, nn.Linear), batch_sizes=[16])
    assert model[0].format == "csr16" and seen == [16]
    # The cost model (calibrate=False): this density is bitmap's at batch 1, dense's at 512.
    density = mask.float().mean().item()
    by_model = {b: lqnn.choose_format(density, "cpu", (b,), weights=w.numel(), dense_bytes=w.numel() * 4)
                for b in (1, 512)}
    assert by_model[1] != by_model[512]
    for b, expected in by_model.items():
        assert SparseLinear.from_linear(dense_linear(w), mask, calibrate=False, batch_sizes=(b,)).format == expected
    assert SparseLinear.from_linear(dense_linear(w), mask, calibrate=False).format == by_model[1]  # default: decode
    for bad, error in (((), ValueError), ((0,), ValueError), ((2.0,), ValueError), ((True,), ValueError),
                       ((lqnn.MAX_CALIBRATION_BATCH + 1,), ValueError), ("16", TypeError), (16, TypeError)):
        with pytest.raises(error, match="batch_sizes"):
            SparseLinear.from_linear(dense_linear(w), mask, batch_sizes=bad)
        with pytest.raises(error, match="batch_sizes"):
            lqkernels.sparsify_(nn.Sequential(dense_linear(w)), batch_sizes=bad)


def test_calibration_per_batch_range(gen, fake_timer):
    """A calibrated layer runs whichever of its kernel and the dense product measured faster for
    the call's power-of-two batch range, measured once per range, on the call's own x."""
    speed, log = fake_timer
    w, mask, b = random_layer(gen, 256, 512, torch.float32)
    speed.update(dense=1.0, bitmap=0.5, csr16=0.6)
    layer = SparseLinear.from_linear(dense_linear(w, b), mask)
    log.clear()
    speed.update(dense=1.0, sparse=0.5)
    x = torch.randn(3, 512, generator=gen)
    assert_close_to_oracle(layer(x), x, w, mask, b)
    assert layer.resolved_backend(3) == "cpp" and log == [["dense", "sparse"]]
    layer(torch.randn(2, 512, generator=gen))  # 2 and 3 share the range [2, 4)
    assert len(log) == 1
    speed.update(dense=1.0, sparse=1.2)
    x = torch.randn(40, 512, generator=gen)
    assert_close_to_oracle(layer(x), x, w, mask, b)
    with torch.no_grad():
        assert layer.resolved_backend(40) == "dense" and layer.resolved_backend(3) == "cpp" and len(log) == 2
    # Training runs the sparse kernels, whose backward is sparse too (the dense path would densify
    # W and its gradient every step).
    assert layer.resolved_backend(40) == "cpp"
    twin = SparseLinear.from_linear(dense_linear(w, b), mask)  # same shape, format, density: shared
    twin(x)
    with torch.no_grad():
        assert twin.resolved_backend(40) == "dense" and len(log) == 2
    half = copy.deepcopy(layer).half()  # another dtype: measured anew
    half(x.half())
    assert len(log) == 3


def test_calibration_for_real_and_compiled(gen):
    """Real timings: whatever they decide, the output is right; torch.compile uses the measured
    decisions without tracing a timer."""
    w, mask, b = random_layer(gen, 256, 512, torch.float32)
    layer = SparseLinear.from_linear(dense_linear(w, b), mask)
    assert layer.format in ("bitmap", "csr16", "dense")
    x = torch.randn(5, 512, generator=gen)
    with torch.no_grad():
        assert_close_to_oracle(layer(x), x, w, mask, b)
        measured = layer.resolved_backend(5)
        torch._dynamo.reset()
        assert_close_to_oracle(torch.compile(layer, fullgraph=True)(x), x, w, mask, b)
    assert layer.resolved_backend(5) == measured
    with pytest.raises(TypeError, match="calibrate must be True or False"):
        SparseLinear.from_linear(dense_linear(w, b), mask, calibrate="yes")


def test_fine_tuning_keeps_pruned_weights_at_zero(gen):
    w, mask, b = random_layer(gen, 12, 64, torch.float32, block_pruned=True)
    for fmt in ("bitmap", "csr16", "bsr", "dense"):
        sparse = nn.Sequential(dense_linear(w, b), nn.ReLU(), nn.Linear(12, 3))
        nn.utils.prune.custom_from_mask(sparse[0], "weight", mask)
        lqkernels.sparsify_(sparse, lambda mod, fqn: fqn == "0", format=fmt)
        assert isinstance(sparse[0], SparseLinear) and isinstance(sparse[2], nn.Linear)
        opt = torch.optim.SGD(sparse.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            sparse(torch.randn(5, 64, generator=gen)).square().mean().backward()
            opt.step()
        assert torch.equal(sparse[0].weight[~mask], torch.zeros(int((~mask).sum()))), fmt
        assert not torch.equal(sparse[0].weight[mask], (w * mask)[mask]), fmt


def test_sparsify_and_densify_round_trip(gen):
    model = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 10), nn.Linear(10, 10))
    nn.utils.prune.l1_unstructured(model[0], "weight", amount=0.9)
    with torch.no_grad():
        model[2].weight[model[2].weight.abs() < 0.1] = 0
    x = torch.randn(4, 40, generator=gen)
    expected = model(x)
    lqkernels.sparsify_(model)
    assert [type(m) for m in model] == [SparseLinear, nn.ReLU, SparseLinear, nn.Linear]  # 3: unpruned
    torch.testing.assert_close(model(x), expected)
    lqkernels.densify_(model)
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear, nn.Linear]
    torch.testing.assert_close(model(x), expected)
    single = lqkernels.sparsify_(nn.Linear(8, 4), lambda m, fqn: True, format="bitmap")
    assert isinstance(single, SparseLinear)
    with pytest.raises(ValueError, match="unknown format"):
        lqkernels.sparsify_(nn.Sequential(nn.Linear(4, 4)), lambda m, fqn: True, format="nope")


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_state_dict_deepcopy_save_load(fmt, gen):
    w, mask, b = random_layer(gen, 40, 70, torch.float32)
    layer = SparseLinear.from_linear(dense_linear(w, b), mask, format=fmt)
    x = torch.randn(3, 70, generator=gen)
    expected = layer(x)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = SparseLinear(70, 40, format="csr16" if fmt != "csr16" else "bitmap")
    fresh.load_state_dict(state)
    assert (fresh.format, fresh.auto) == (layer.format, layer.auto)
    assert torch.equal(fresh(x), expected)
    for name, tensor in layer.state_dict().items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(fresh.state_dict()[name], tensor), name
    assert torch.equal(copy.deepcopy(layer)(x), expected)
    with pytest.raises(RuntimeError, match="holds a 40x70 layer"):
        SparseLinear(40, 70).load_state_dict(state)


@pytest.mark.parametrize("fmt", ("bitmap", "csr16"))
def test_to_and_half(fmt, gen):
    w, mask, b = random_layer(gen, 16, 48, torch.float32)
    layer = SparseLinear.from_linear(dense_linear(w, b), mask, format=fmt)
    x = torch.randn(5, 48, generator=gen)
    as_double = copy.deepcopy(layer).to(torch.float64)
    assert as_double.values.dtype == torch.float64 and as_double.row_offsets.dtype == torch.int64
    assert_close_to_oracle(as_double(x.double()), x.double(), w.double(), mask, b.double())
    half = copy.deepcopy(layer).half()
    assert half.values.dtype == torch.float16 and half.bias.dtype == torch.float16
    assert_close_to_oracle(half(x.half()), x.half(), w.half(), mask, b.half())


def test_compile_fullgraph_auto(gen):
    """format="auto" decides per call between its sparse kernel and the dense product; both
    decisions compile without graph breaks (the cost model reads no files while tracing)."""
    # W of 512 KB: the "cpu-cached" table on any CPU with a last-level cache of 1 MB or more
    for density, batch, path in ((0.05, 3, "cpp"), (0.3, 100, "dense"), (0.6, 3, "dense")):
        w = torch.randn(256, 512, generator=gen)
        mask = torch.rand(256, 512, generator=gen) < density
        layer = SparseLinear.from_linear(dense_linear(w), mask, calibrate=False)
        with torch.no_grad():
            assert layer.resolved_backend(batch) == path, (density, batch)
        x = torch.randn(batch, 512, generator=gen)
        torch._dynamo.reset()
        with torch.no_grad():
            assert_close_to_oracle(torch.compile(layer, fullgraph=True)(x), x, w, mask, None)


def test_compile_fullgraph(gen):
    """Inference through inductor and training through AOTAutograd, without graph breaks."""
    w, mask, b = random_layer(gen, 24, 64, torch.float32)
    model = nn.Sequential(SparseLinear.from_linear(dense_linear(w, b), mask, format="bitmap"), nn.ReLU(),
                          SparseLinear.from_linear(dense_linear(w[:, :24], b), mask[:, :24], format="csr16"),
                          nn.ReLU(),  # "dense" unpacks its bitmap in every training forward
                          SparseLinear.from_linear(dense_linear(w[:, 24:48], b), mask[:, 24:48], format="dense"))
    x = torch.randn(2, 3, 64, generator=gen)
    torch._dynamo.reset()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).sum().backward()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.cuda
@pytest.mark.parametrize("m", [1, 7, 16, 64, 65, 300])
@pytest.mark.parametrize("fmt", FORMATS)
def test_cuda_decode_shapes_bf16(fmt, m, gen):
    """The CUDA C++ decode kernels (and Triton bsr) at realistic widths, M around the 64-row limit."""
    w, mask, b = random_layer(gen, 1000, 4096, torch.bfloat16, "cuda", block_pruned=fmt == "bsr")
    layer = SparseLinear.from_linear(dense_linear(w, b), mask, format=fmt)
    x = torch.randn(m, 4096, generator=gen).to("cuda", torch.bfloat16)
    assert_close_to_oracle(layer(x), x, w, mask, b)
