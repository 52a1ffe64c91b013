"""The operator registry: every lqkernels schema, its fake kernel and its PyTorch reference.

Kernels work on a (rows, n) view; `lqkernels.ops` maps any `dim` onto it. For each schema the
C++ CPU and CUDA kernels register themselves from `lqkernels._C` (csrc/), the Triton kernel is its
own op `<name>_triton` (lqkernels/_triton/), and the reference below is the test oracle. The
reference is also registered as the CompositeExplicitAutograd kernel, so it serves any device for
which no native kernel was built (a machine where `_C` failed to build, say).

Per-slice statistics (every measure is a function of them; see csrc/measures_common.h):
    scale = max |x| over survivors     (0 for none; NaN if any survivor is NaN)
    T_q   = sum over survivors of (|x| / scale)^q, with 0/0 = 0 and inf/inf = 1
    count = number of survivors
Sums relative to the maximum never overflow or underflow; Σ|x|^q = scale^q · T_q.
"""
from __future__ import annotations

import math

import torch

lib = torch.library.Library("lqkernels", "FRAGMENT")

MAX_EXPONENTS = 8  # csrc/measures_common.h: kMaxExponents


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 accumulation for float16, bfloat16 and float32; float64 stays float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_rows(x: torch.Tensor, mask: torch.Tensor | None, op: str) -> None:
    """The preconditions the C++ kernels TORCH_CHECK, for the Python (Triton) kernels."""
    if x.dim() != 2:
        raise ValueError(f"{op}: expects a (rows, n) tensor, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"{op}: unsupported dtype {x.dtype} (float16, bfloat16, float32 or float64)")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"{op}: mask must be bool, got {mask.dtype}")
        if mask.shape != x.shape:
            raise ValueError(f"{op}: mask shape {tuple(mask.shape)} does not match x shape {tuple(x.shape)}")
        if mask.device != x.device:
            raise ValueError(f"{op}: mask is on {mask.device} but x is on {x.device}")


def check_exponents(qs, op: str) -> None:
    if len(qs) > MAX_EXPONENTS:
        raise ValueError(f"{op}: at most {MAX_EXPONENTS} exponents per pass, got {len(qs)}")
    for q in qs:
        if not (q > 0 and q != float("inf")):
            raise ValueError(f"{op}: exponents must be finite and > 0, got {q}")


# row_powsum: per-row (T_q for each q, survivors, scale) of x (rows, n), in one pass over x.
lib.define("row_powsum(Tensor x, Tensor? mask, float[] qs) -> (Tensor, Tensor, Tensor)")


@torch.library.register_fake("lqkernels::row_powsum")
def _row_powsum_fake(x, mask, qs):
    acc = acc_dtype(x.dtype)
    rows = x.shape[0]
    return (x.new_empty((len(qs), rows), dtype=acc), x.new_empty((rows,), dtype=torch.int64),
            x.new_empty((rows,), dtype=acc))


def relative_magnitudes(x: torch.Tensor, mask: torch.Tensor | None):
    """|x| / scale per row with the conventions above, the scale and the survivor counts."""
    a = x.to(acc_dtype(x.dtype)).abs()
    if mask is not None:
        a = a.where(mask, 0)
        count = mask.sum(1)
    else:
        count = torch.full((x.shape[0],), x.shape[1], dtype=torch.int64, device=x.device)
    scale = a.amax(1) if x.shape[1] > 0 else a.new_zeros(x.shape[0])
    r = torch.where(scale[:, None] == 0, 0.0, a / scale[:, None])  # NaN scale keeps NaN
    r = torch.where(a.isinf(), 1.0, r)
    return r, scale, count


def row_powsum_reference(x: torch.Tensor, mask: torch.Tensor | None, qs):
    r, scale, count = relative_magnitudes(x, mask)
    sums = torch.stack([r.pow(q).sum(1) for q in qs]) if len(qs) else r.new_empty((0, x.shape[0]))
    return sums, count, scale


lib.impl("row_powsum", row_powsum_reference, "CompositeExplicitAutograd")


# row_gini: per-row Gini index (Hurley–Rickard) of the survivors' magnitudes.
lib.define("row_gini(Tensor x, Tensor? mask) -> Tensor")


@torch.library.register_fake("lqkernels::row_gini")
def _row_gini_fake(x, mask):
    return x.new_empty((x.shape[0],), dtype=acc_dtype(x.dtype))


def gini_from_sorted(c: torch.Tensor, pruned_first: torch.Tensor) -> torch.Tensor:
    """Gini per row of magnitudes c sorted ascending, where the first `pruned_first[i]` entries of
    row i are pruned: 1 - 2 Σ_pos c_pos (n - pos - 1/2) / (d Σ c) over the survivors."""
    n = c.shape[1]
    pos = torch.arange(n, device=c.device)
    survivor = pos[None, :] >= pruned_first[:, None]
    c = c.where(survivor, 0)
    d = (n - pruned_first).to(c.dtype)
    total = c.sum(1)
    weighted = (c * (n - pos - 0.5).to(c.dtype)).sum(1)
    gini = 1 - 2 * weighted / (d * total)
    return torch.where(total > 0, gini, torch.where(total.isnan(), total, 0.0))


def row_gini_reference(x: torch.Tensor, mask: torch.Tensor | None):
    r, _, count = relative_magnitudes(x, mask)
    if mask is not None:  # pruned entries sort first
        r = r.where(mask, -1.0)
    return gini_from_sorted(r.sort(1).values, x.shape[1] - count)


lib.impl("row_gini", row_gini_reference, "CompositeExplicitAutograd")


# ---- selection ----
# Scores are ranked by value (by |value| if magnitude; reversed if not largest); among equal
# scores (-0 == +0) the lowest index ranks first, so the boundary of every selection is exact and
# identical on every backend. Only candidates (mask True) are ranked.

# row_topk_mask: per row, the k[row] best-ranked candidates (bool, x's shape) and the k-th ranked
# score (x's dtype; +inf for k = 0 when largest, else -inf).
lib.define("row_topk_mask(Tensor x, Tensor k, Tensor? mask, bool magnitude, bool largest) -> (Tensor, Tensor)")


@torch.library.register_fake("lqkernels::row_topk_mask")
def _row_topk_mask_fake(x, k, mask, magnitude, largest):
    return x.new_empty(x.shape, dtype=torch.bool), x.new_empty((x.shape[0],))


def ranking(x: torch.Tensor, mask: torch.Tensor | None, magnitude: bool, largest: bool, dim: int = -1):
    """(ranked scores in float64, order): `order` lists positions along `dim` best first, ties by
    lowest index, candidates before every non-candidate."""
    v = x.double().abs() if magnitude else x.double()
    v = v + 0.0  # -0 ranks with +0
    order = torch.arange(x.shape[dim], device=x.device).expand(x.shape)
    if mask is not None:  # non-candidates rank last: worst value, and after candidates (stable)
        v = v.where(mask, -math.inf if largest else math.inf)
        order = torch.sort((~mask).to(torch.uint8), dim=dim, stable=True).indices
    ranked = v.gather(dim, order).sort(dim=dim, descending=largest, stable=True)
    return ranked.values, order.gather(dim, ranked.indices)


def row_topk_mask_reference(x, k, mask, magnitude, largest):
    values, order = ranking(x, mask, magnitude, largest)
    rank = torch.arange(x.shape[1], device=x.device)[None, :]
    out = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    out.scatter_(1, order, rank < k[:, None])
    boundary = (k - 1).clamp_min(0)[:, None]
    kth = values.gather(1, boundary).squeeze(1) if x.shape[1] else values.new_empty(x.shape[0])
    threshold = torch.where(k > 0, kth, math.inf if largest else -math.inf)
    return out, threshold.to(x.dtype)


lib.impl("row_topk_mask", row_topk_mask_reference, "CompositeExplicitAutograd")

# global_topk_masks: the k best-ranked candidates over all tensors together (ties: tensor order,
# then flat index), one bool mask per tensor, without concatenating them.
lib.define("global_topk_masks(Tensor[] xs, Tensor[]? masks, int k, bool magnitude, bool largest) -> Tensor[]")


@torch.library.register_fake("lqkernels::global_topk_masks")
def _global_topk_masks_fake(xs, masks, k, magnitude, largest):
    return [x.new_empty(x.shape, dtype=torch.bool) for x in xs]


def global_topk_masks_reference(xs, masks, k, magnitude, largest):
    flat = torch.cat([x.reshape(-1) for x in xs])
    flat_mask = torch.cat([m.reshape(-1) for m in masks]) if masks is not None else None
    _, order = ranking(flat, flat_mask, magnitude, largest)
    chosen = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    chosen[order[:k]] = True
    return [c.view(x.shape) for c, x in zip(chosen.split([x.numel() for x in xs]), xs)]


lib.impl("global_topk_masks", global_topk_masks_reference, "CompositeExplicitAutograd")


# ---- sparse linear ----
# y = x · Wᵀ + b with a pruned W kept compressed (lqkernels.nn.SparseLinear packs it). x is
# (M, in_features), y (M, out_features); `values` holds the kept weights in x's dtype, row by row.
# Three formats (byte arithmetic in README.md, "Sparse layers"):
#   bitmap  row_offsets int64 (out+1) into values; bitmap int32 (out, ceil(in/32)), bit j of word w
#           marks column 32w + j (bits past in_features are 0).
#   csr16   row_offsets int64 (out+1); columns int16 (nnz,), each the column as an unsigned 16-bit
#           number (so in_features <= 65536).
#   bsr     values (blocks, 32, 32), a 32x32 tile of W padded with zeros at the edges;
#           block_row_offsets int64 (ceil(out/32)+1) into the blocks; block_columns int32 (blocks,);
#           block_mask int32 (blocks, 32), bit j of word i marks entry (i, j) of the tile as kept
#           (the forward does not read it; gradients flow only to kept entries).
# The gradient reaches x, the kept values and the bias only: a pruned weight stays exactly 0 under
# fine-tuning.

BSR_BLOCK = 32
SPARSE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

lib.define("bitmap_linear(Tensor x, Tensor values, Tensor row_offsets, Tensor bitmap, Tensor? bias) -> Tensor")
lib.define("csr16_linear(Tensor x, Tensor values, Tensor row_offsets, Tensor columns, Tensor? bias) -> Tensor")
lib.define("bsr_linear(Tensor x, Tensor values, Tensor block_row_offsets, Tensor block_columns, "
           "Tensor block_mask, Tensor? bias, SymInt out_features) -> Tensor")


def check_sparse_linear(op: str, x, values, offsets, index: dict, bias, out_features) -> None:
    """The shape, dtype and device preconditions the C++ kernels TORCH_CHECK, for the Python
    (reference and Triton) kernels. `index` maps each index tensor's name to (tensor, dtype)."""
    if x.dim() != 2:
        raise ValueError(f"{op}: x must be (M, in_features), got shape {tuple(x.shape)}")
    if x.dtype not in SPARSE_DTYPES:
        raise TypeError(f"{op}: unsupported dtype {x.dtype} (float16, bfloat16, float32 or float64)")
    if values.dtype != x.dtype:
        raise TypeError(f"{op}: values dtype {values.dtype} does not match x dtype {x.dtype}")
    if offsets.dtype != torch.int64 or offsets.dim() != 1 or offsets.shape[0] < 1:
        raise TypeError(f"{op}: row offsets must be a non-empty 1-d int64 tensor, got "
                        f"{offsets.dtype} of shape {tuple(offsets.shape)}")
    tensors = {"values": values, "row offsets": offsets, **{k: t for k, (t, _) in index.items()}}
    if bias is not None:
        tensors["bias"] = bias
        if bias.dtype != x.dtype or bias.shape != (out_features,):
            raise ValueError(f"{op}: bias must be ({out_features},) of dtype {x.dtype}, got "
                             f"{tuple(bias.shape)} {bias.dtype}")
    for name, (t, dtype) in index.items():
        if t.dtype != dtype:
            raise TypeError(f"{op}: {name} must be {dtype}, got {t.dtype}")
    for name, t in tensors.items():
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")


def _check_bitmap(x, values, row_offsets, bitmap, bias, op="bitmap_linear"):
    out_features = row_offsets.shape[0] - 1
    check_sparse_linear(op, x, values, row_offsets, {"bitmap": (bitmap, torch.int32)}, bias, out_features)
    words = (x.shape[1] + 31) // 32
    if values.dim() != 1 or bitmap.shape != (out_features, words):
        raise ValueError(f"{op}: for x of shape {tuple(x.shape)} and {out_features} rows expected a "
                         f"({out_features}, {words}) bitmap and 1-d values, got bitmap "
                         f"{tuple(bitmap.shape)} and values {tuple(values.shape)}")


def _check_csr16(x, values, row_offsets, columns, bias, op="csr16_linear"):
    out_features = row_offsets.shape[0] - 1
    check_sparse_linear(op, x, values, row_offsets, {"columns": (columns, torch.int16)}, bias, out_features)
    if x.shape[1] > 65536:
        raise ValueError(f"{op}: 16-bit columns address at most 65536 inputs, got in_features {x.shape[1]}")
    if values.dim() != 1 or columns.shape != values.shape:
        raise ValueError(f"{op}: values and columns must be 1-d of one length, got "
                         f"{tuple(values.shape)} and {tuple(columns.shape)}")


def _check_bsr(x, values, block_row_offsets, block_columns, block_mask, bias, out_features,
               op="bsr_linear"):
    check_sparse_linear(op, x, values, block_row_offsets,
                        {"block columns": (block_columns, torch.int32),
                         "block mask": (block_mask, torch.int32)}, bias, out_features)
    b = BSR_BLOCK
    blocks = block_columns.shape[0]
    if block_row_offsets.shape[0] != (out_features + b - 1) // b + 1:
        raise ValueError(f"{op}: {out_features} output features need {(out_features + b - 1) // b + 1} "
                         f"block row offsets, got {block_row_offsets.shape[0]}")
    if values.shape != (blocks, b, b) or block_mask.shape != (blocks, b) or block_columns.dim() != 1:
        raise ValueError(f"{op}: expected values ({blocks}, {b}, {b}) and block mask ({blocks}, {b}), "
                         f"got {tuple(values.shape)} and {tuple(block_mask.shape)}")


def _unpack_bits(words: torch.Tensor, width: int) -> torch.Tensor:
    """(..., k) int32 words -> (..., width) bool, bit j of word w at position 32w + j.

    Works on the words' little-endian bytes (x86, ARM and CUDA devices): 10x faster than shifting
    int32 words 32 ways."""
    octets = words.contiguous().view(torch.uint8)
    shifts = torch.arange(8, dtype=torch.uint8, device=words.device)
    bits = (octets.unsqueeze(-1) >> shifts).bitwise_and_(1).view(torch.bool)
    return bits.flatten(-2)[..., :width]


def bitmap_mask(bitmap: torch.Tensor, in_features: int) -> torch.Tensor:
    return _unpack_bits(bitmap, in_features)


def _csr16_flat_index(row_offsets, columns, in_features):
    """Position r * in_features + c in the flattened W of every kept value (static shapes)."""
    rows = torch.repeat_interleave(torch.arange(row_offsets.shape[0] - 1, device=columns.device),
                                   row_offsets.diff(), output_size=columns.shape[0])
    return rows * in_features + columns.long().bitwise_and(0xFFFF)


def bitmap_to_dense(values, row_offsets, bitmap, in_features: int) -> torch.Tensor:
    """W * mask (out, in) from the bitmap format; differentiable in `values`."""
    mask = bitmap_mask(bitmap, in_features)
    return values.new_zeros(mask.shape).masked_scatter(mask, values)


def csr16_to_dense(values, row_offsets, columns, in_features: int) -> torch.Tensor:
    out_features = row_offsets.shape[0] - 1
    flat = _csr16_flat_index(row_offsets, columns, in_features)
    return values.new_zeros(out_features * in_features).index_put((flat,), values).view(
        out_features, in_features)


def _bsr_block_rows(block_row_offsets, blocks: int):
    return torch.repeat_interleave(torch.arange(block_row_offsets.shape[0] - 1, device=block_row_offsets.device),
                                   block_row_offsets.diff(), output_size=blocks)


def bsr_to_dense(values, block_row_offsets, block_columns, block_mask, out_features: int, in_features: int):
    """W * mask from the bsr format; differentiable in `values`, with zero gradient outside the
    block mask (so the reference trains exactly like the kernels' shared backward)."""
    b = BSR_BLOCK
    kept = values * _unpack_bits(block_mask.unsqueeze(-1), b).to(values.dtype)
    grid = values.new_zeros(block_row_offsets.shape[0] - 1, (in_features + b - 1) // b, b, b)
    grid = grid.index_put((_bsr_block_rows(block_row_offsets, values.shape[0]), block_columns.long()), kept)
    return grid.transpose(1, 2).flatten(0, 1).flatten(1)[:out_features, :in_features]


def _dense_grad_to_kept(fmt: str, dW: torch.Tensor, values, offsets, index):
    """The adjoint of <fmt>_to_dense: the gradient of the kept values from a dense (out, in) one."""
    if fmt == "bitmap":
        mask = bitmap_mask(index[0], dW.shape[1])
        return torch.ops.aten.masked_scatter_backward(dW, mask, values.shape)
    if fmt == "csr16":
        return dW.reshape(-1)[_csr16_flat_index(offsets, index[0], dW.shape[1])]
    b = BSR_BLOCK
    block_columns, block_mask = index
    rows, cols = -(-dW.shape[0] // b), -(-dW.shape[1] // b)
    grid = torch.nn.functional.pad(dW, (0, cols * b - dW.shape[1], 0, rows * b - dW.shape[0]))
    grid = grid.view(rows, b, cols, b).transpose(1, 2)
    kept = grid[_bsr_block_rows(offsets, values.shape[0]), block_columns.long()]
    return kept * _unpack_bits(block_mask.unsqueeze(-1), b).to(kept.dtype)


def _sparse_to_dense(fmt: str, values, offsets, index, out_features: int, in_features: int):
    if fmt == "bitmap":
        return bitmap_to_dense(values, offsets, index[0], in_features)
    if fmt == "csr16":
        return csr16_to_dense(values, offsets, index[0], in_features)
    return bsr_to_dense(values, offsets, index[0], index[1], out_features, in_features)


def bitmap_linear_reference(x, values, row_offsets, bitmap, bias):
    _check_bitmap(x, values, row_offsets, bitmap, bias)
    return torch.nn.functional.linear(x, bitmap_to_dense(values, row_offsets, bitmap, x.shape[1]), bias)


def csr16_linear_reference(x, values, row_offsets, columns, bias):
    _check_csr16(x, values, row_offsets, columns, bias)
    return torch.nn.functional.linear(x, csr16_to_dense(values, row_offsets, columns, x.shape[1]), bias)


def bsr_linear_reference(x, values, block_row_offsets, block_columns, block_mask, bias, out_features):
    _check_bsr(x, values, block_row_offsets, block_columns, block_mask, bias, out_features)
    w = bsr_to_dense(values, block_row_offsets, block_columns, block_mask, out_features, x.shape[1])
    return torch.nn.functional.linear(x, w, bias)


lib.impl("bitmap_linear", bitmap_linear_reference, "CompositeExplicitAutograd")
lib.impl("csr16_linear", csr16_linear_reference, "CompositeExplicitAutograd")
lib.impl("bsr_linear", bsr_linear_reference, "CompositeExplicitAutograd")


@torch.library.register_fake("lqkernels::bitmap_linear")
def _bitmap_linear_fake(x, values, row_offsets, bitmap, bias):
    return x.new_empty((x.shape[0], row_offsets.shape[0] - 1))


@torch.library.register_fake("lqkernels::csr16_linear")
def _csr16_linear_fake(x, values, row_offsets, columns, bias):
    return x.new_empty((x.shape[0], row_offsets.shape[0] - 1))


@torch.library.register_fake("lqkernels::bsr_linear")
def _bsr_linear_fake(x, values, block_row_offsets, block_columns, block_mask, bias, out_features):
    return x.new_empty((x.shape[0], out_features))


# Backward kernels of bitmap and csr16 (C++ on the CPU; elsewhere these references, which go
# through the dense W):
#   <fmt>_linear_grad_input(dy, values, row_offsets, index, in_features) = dy · (W ∘ mask), (M, in)
#   <fmt>_linear_grad_values(dy, x, values, row_offsets, index) = the kept entries of dyᵀ · x, in
#                                                                 the values' order and shape
# Both are linear in each tensor argument but `values` of grad_values (which only gives its
# shape), so their own gradients are these same ops and the forward: double backward works.
_SPARSE_GRAD_CHECKS = {"bitmap": ("bitmap", _check_bitmap), "csr16": ("columns", _check_csr16)}
SPARSE_GRAD_REFERENCES = {}  # op name -> reference (the tests' second path besides the dispatcher)


def _check_output_gradient(op: str, dy, rows, out_features: int, like) -> None:
    """dy of y = x · Wᵀ + b: (rows or any, out_features), of `like`'s dtype and device."""
    if dy.dim() != 2 or dy.shape[1] != out_features or (rows is not None and dy.shape[0] != rows):
        raise ValueError(f"{op}: dy must be ({'M' if rows is None else rows}, {out_features}), got shape "
                         f"{tuple(dy.shape)}")
    if dy.dtype != like.dtype or dy.device != like.device:
        raise TypeError(f"{op}: dy is {dy.dtype} on {dy.device}, the layer {like.dtype} on {like.device}")


def _define_sparse_grads(fmt: str) -> None:
    index_name, check = _SPARSE_GRAD_CHECKS[fmt]
    grad_input, grad_values = f"{fmt}_linear_grad_input", f"{fmt}_linear_grad_values"
    lib.define(f"{grad_input}(Tensor dy, Tensor values, Tensor row_offsets, Tensor {index_name}, "
               f"int in_features) -> Tensor")
    lib.define(f"{grad_values}(Tensor dy, Tensor x, Tensor values, Tensor row_offsets, "
               f"Tensor {index_name}) -> Tensor")

    def grad_input_reference(dy, values, row_offsets, index, in_features):
        if in_features < 0:
            raise ValueError(f"{grad_input}: in_features must be >= 0, got {in_features}")
        check(dy.new_empty((0, in_features)), values, row_offsets, index, None, grad_input)
        _check_output_gradient(grad_input, dy, None, row_offsets.shape[0] - 1, values)
        return dy @ _sparse_to_dense(fmt, values, row_offsets, [index], dy.shape[1], in_features)

    def grad_values_reference(dy, x, values, row_offsets, index):
        check(x, values, row_offsets, index, None, grad_values)
        _check_output_gradient(grad_values, dy, x.shape[0], row_offsets.shape[0] - 1, x)
        return _dense_grad_to_kept(fmt, dy.t() @ x, values, row_offsets, [index])

    for name, reference in ((grad_input, grad_input_reference), (grad_values, grad_values_reference)):
        lib.impl(name, reference, "CompositeExplicitAutograd")
        SPARSE_GRAD_REFERENCES[name] = reference
    torch.library.register_fake(f"lqkernels::{grad_input}",
                                lambda dy, values, row_offsets, index, in_features:
                                dy.new_empty((dy.shape[0], in_features)))
    torch.library.register_fake(f"lqkernels::{grad_values}",
                                lambda dy, x, values, row_offsets, index: values.new_empty(values.shape))
    forward = getattr(torch.ops.lqkernels, f"{fmt}_linear")
    grad_input_op, grad_values_op = getattr(torch.ops.lqkernels, grad_input), getattr(torch.ops.lqkernels, grad_values)

    def save_tensors(ctx, inputs, output):
        ctx.save_for_backward(*(t for t in inputs if isinstance(t, torch.Tensor)))

    def grad_input_backward(ctx, g):  # g like dy · W: (M, in)
        dy, values, row_offsets, index = ctx.saved_tensors
        need_dy, need_values = ctx.needs_input_grad[:2]
        return (forward(g, values, row_offsets, index, None) if need_dy else None,
                grad_values_op(dy, g, values, row_offsets, index) if need_values else None, None, None, None)

    def grad_values_backward(ctx, g):  # g like values
        dy, x, values, row_offsets, index = ctx.saved_tensors
        need_dy, need_x = ctx.needs_input_grad[:2]
        return (forward(x, g, row_offsets, index, None) if need_dy else None,
                grad_input_op(dy, g, row_offsets, index, x.shape[1]) if need_x else None, None, None, None)

    torch.library.register_autograd(f"lqkernels::{grad_input}", grad_input_backward, setup_context=save_tensors)
    torch.library.register_autograd(f"lqkernels::{grad_values}", grad_values_backward, setup_context=save_tensors)


for _fmt in _SPARSE_GRAD_CHECKS:
    _define_sparse_grads(_fmt)


# Autograd, shared by every format and backend (the Triton ops register the same functions):
#   grad_x = dy · W,  grad_values = kept entries of dyᵀ · x,  grad_bias = Σ dy.
# bitmap and csr16 run their backward kernels above; bsr goes through the dense W (its tiles are
# the large-batch GPU format, where the dense products are tensor-core GEMMs).
# Every op's inputs are (x, values, offsets, *index tensors, bias[, out_features]).
SPARSE_INDEX_TENSORS = {"bitmap": 1, "csr16": 1, "bsr": 2}


def register_sparse_linear_autograd(op: str, fmt: str) -> None:
    """Registers the shared backward for `op` (a kernel-level or Triton op of format `fmt`)."""
    n_index = SPARSE_INDEX_TENSORS[fmt]
    kernels = fmt in _SPARSE_GRAD_CHECKS  # bitmap, csr16: their backward ops
    grad_input = getattr(torch.ops.lqkernels, f"{fmt}_linear_grad_input") if kernels else None
    grad_values = getattr(torch.ops.lqkernels, f"{fmt}_linear_grad_values") if kernels else None

    def setup_context(ctx, inputs, output):
        x, values, offsets, *index = inputs[:3 + n_index]
        ctx.n_inputs = len(inputs)
        ctx.save_for_backward(x, values, offsets, *index)

    def backward(ctx, dy):
        x, values, offsets, *index = ctx.saved_tensors
        grads = [None] * ctx.n_inputs
        if ctx.needs_input_grad[0]:
            grads[0] = (grad_input(dy, values, offsets, index[0], x.shape[1]) if kernels
                        else dy @ _sparse_to_dense(fmt, values, offsets, index, dy.shape[1], x.shape[1]))
        if ctx.needs_input_grad[1]:
            grads[1] = (grad_values(dy, x, values, offsets, index[0]) if kernels
                        else _dense_grad_to_kept(fmt, dy.t() @ x, values, offsets, index))
        if ctx.needs_input_grad[3 + n_index]:
            grads[3 + n_index] = dy.sum(0)
        return tuple(grads)

    torch.library.register_autograd(op, backward, setup_context=setup_context)


for _name, _fmt in (("bitmap_linear", "bitmap"), ("csr16_linear", "csr16"), ("bsr_linear", "bsr")):
    register_sparse_linear_autograd(f"lqkernels::{_name}", _fmt)
