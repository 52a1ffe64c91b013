"""Triton kernels of the per-slice measures: ops lqkernels::row_powsum_triton and row_gini_triton,
same contracts as lqkernels::row_powsum / row_gini (lqkernels/_ops.py).

One program reduces one part of one row in BLOCK-wide chunks, keeping sums relative to its running
maximum; every exponent is evaluated on a (exponents × BLOCK) tile that shares one log2 per element.
Long rows are split over several programs whose partial states merge_parts combines.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from lqkernels import _ops
from lqkernels._triton import device_types

BLOCK = 1024
MAX_SPLITS = 1024

# Exponent kinds that have a cheaper exact formula, for the single-exponent case.
KIND_GENERAL, KIND_ONE, KIND_TWO, KIND_HALF = 0, 1, 2, 3


def exponent_kind(q: float) -> int:
    return {1.0: KIND_ONE, 2.0: KIND_TWO, 0.5: KIND_HALF}.get(float(q), KIND_GENERAL)


@triton.jit
def _rescale_factor(old, new, q):
    # (old / new)^q: 1 when equal (inf included), 0 when both are zero.
    ratio = tl.where(new > 0, old / tl.where(new > 0, new, 1.0), 0.0)
    return tl.where(old == new, 1.0, tl.exp2(q * tl.log2(ratio)))


@triton.jit
def _row_powsum_kernel(x_ptr, mask_ptr, qs_ptr, sums_ptr, scale_ptr, count_ptr, n, span, splits,
                       out_stride, HAS_MASK: tl.constexpr, NQ: tl.constexpr, QPAD: tl.constexpr,
                       KIND: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0)
    part = tl.program_id(1)
    begin = part * span
    end = tl.minimum(begin + span, n)
    qidx = tl.arange(0, QPAD)
    qv = tl.load(qs_ptr + qidx, mask=qidx < NQ, other=1.0).to(ACC)
    sums = tl.zeros([QPAD], dtype=ACC)
    scale = tl.zeros([], dtype=ACC)
    count = tl.zeros([], dtype=tl.int64)
    nans = tl.zeros([], dtype=tl.int32)
    offs = tl.arange(0, BLOCK)
    row_start = row.to(tl.int64) * n
    for start in range(begin, end, BLOCK):
        idx = start + offs
        inside = idx < end
        keep = inside
        if HAS_MASK:
            keep = keep & (tl.load(mask_ptr + row_start + idx, mask=inside, other=0) != 0)
        a = tl.abs(tl.load(x_ptr + row_start + idx, mask=keep, other=0.0).to(ACC))
        count += tl.sum(keep.to(tl.int64))
        nans += tl.sum((a != a).to(tl.int32))
        new_scale = tl.maximum(scale, tl.max(tl.where(a == a, a, 0.0), 0))
        sums = sums * _rescale_factor(scale, new_scale, qv)
        scale = new_scale
        safe = tl.where(scale > 0, scale, 1.0)
        r = tl.where(scale == float("inf"), tl.where(a == float("inf"), 1.0, 0.0), a / safe)
        r = tl.where(scale > 0, r, 0.0)
        if KIND == 1:
            sums += tl.sum(r, 0)
        elif KIND == 2:
            sums += tl.sum(r * r, 0)
        elif KIND == 3:
            sums += tl.sum(tl.sqrt(r), 0)
        else:
            log2r = tl.log2(r)
            terms = tl.where(r[None, :] > 0, tl.exp2(qv[:, None] * log2r[None, :]), 0.0)
            sums += tl.sum(terms, 1)
    out = row * splits + part
    nan = nans > 0
    tl.store(sums_ptr + qidx * out_stride + out, tl.where(nan, float("nan"), sums), mask=qidx < NQ)
    tl.store(scale_ptr + out, tl.where(nan, float("nan"), scale))
    tl.store(count_ptr + out, count)


def merge_parts(part_sums, part_count, part_scale, qs):
    """Combines per-part states (exponents, rows, parts) / (rows, parts) into per-row states."""
    scale = part_scale.amax(1)  # NaN propagates
    q = torch.tensor(qs, dtype=part_sums.dtype, device=part_sums.device)[:, None, None]
    ratio = torch.where(scale[:, None] > 0, part_scale / scale[:, None], 0.0)
    factor = torch.where(part_scale == scale[:, None], 1.0, ratio.pow(q))
    return (part_sums * factor).sum(2), part_count.sum(1), scale


def powsum_geometry(rows: int, n: int, lanes: int) -> tuple[int, int]:
    """(splits, span) of a row_powsum_triton launch: each row split into parts of `span` entries
    until rows x splits programs fill `lanes` (2 per SM), never below 16 blocks per part. The span
    is a whole number of blocks: a span that is not a multiple of 16 entries (222426 for a bf16
    14336 x 4096 tensor reduced whole) misaligns every part's first load, and Triton then loads 2
    bytes at a time instead of 16."""
    splits = max(1, min(MAX_SPLITS, -(-lanes // max(rows, 1)), -(-n // (16 * BLOCK))))
    per_part = -(-n // splits)
    span = max(1, -(-per_part // BLOCK)) * BLOCK  # whole blocks; one for an empty row
    return max(1, -(-n // span)), span


@torch.library.custom_op("lqkernels::row_powsum_triton", mutates_args=(), device_types=device_types())
def row_powsum_triton(x: torch.Tensor, mask: torch.Tensor | None,
                      qs: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _ops.check_rows(x, mask, "row_powsum_triton")
    _ops.check_exponents(qs, "row_powsum_triton")
    x = x.contiguous()
    mask = mask.contiguous() if mask is not None else None
    rows, n = x.shape
    acc = _ops.acc_dtype(x.dtype)
    lanes = torch.cuda.get_device_properties(x.device).multi_processor_count * 2 if x.is_cuda else 4
    splits, span = powsum_geometry(rows, n, lanes)
    sums = torch.empty((len(qs), rows * splits), dtype=acc, device=x.device)
    scale = torch.empty(rows * splits, dtype=acc, device=x.device)
    count = torch.empty(rows * splits, dtype=torch.int64, device=x.device)
    if rows > 0:
        qs_t = torch.tensor(qs or [1.0], dtype=acc, device=x.device)
        _row_powsum_kernel[(rows, splits)](
            x, mask if mask is not None else x, qs_t, sums, scale, count, n, span, splits,
            rows * splits, HAS_MASK=mask is not None, NQ=len(qs),
            QPAD=triton.next_power_of_2(max(len(qs), 1)),
            KIND=exponent_kind(qs[0]) if len(qs) == 1 else KIND_GENERAL, BLOCK=BLOCK,
            ACC=tl.float64 if acc == torch.float64 else tl.float32)
    if splits == 1:
        return sums, count, scale
    return merge_parts(sums.view(len(qs), rows, splits), count.view(rows, splits),
                       scale.view(rows, splits), qs)


@row_powsum_triton.register_fake
def _(x, mask, qs):
    return _ops._row_powsum_fake(x, mask, qs)


@triton.jit
def _row_gini_kernel(sorted_ptr, pruned_ptr, out_ptr, n, BLOCK: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0)
    row_start = row.to(tl.int64) * n
    pruned = tl.load(pruned_ptr + row)
    total = tl.zeros([], dtype=ACC)
    weighted = tl.zeros([], dtype=ACC)
    offs = tl.arange(0, BLOCK)
    for start in range(0, n, BLOCK):
        pos = start + offs
        c = tl.load(sorted_ptr + row_start + pos, mask=(pos < n) & (pos >= pruned), other=0.0)
        c = c.to(ACC)
        total += tl.sum(c, 0)
        weighted += tl.sum(c * ((n - pos).to(ACC) - 0.5), 0)
    d = (n - pruned).to(ACC)
    gini = 1.0 - 2.0 * weighted / (d * tl.where(total > 0, total, 1.0))
    tl.store(out_ptr + row, tl.where(total > 0, gini, tl.where(total != total, total, 0.0)))


@torch.library.custom_op("lqkernels::row_gini_triton", mutates_args=(), device_types=device_types())
def row_gini_triton(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # Gini needs each row's survivors in order: torch's segmented sort, then one Triton reduction.
    _ops.check_rows(x, mask, "row_gini_triton")
    r, _, count = _ops.relative_magnitudes(x, mask)
    if mask is not None:
        r = r.where(mask, -1.0)
    rows, n = x.shape
    out = torch.empty(rows, dtype=r.dtype, device=x.device)
    if rows > 0:
        # Summed in float64: a whole tensor's weighted sum in float32 drifts past 1e-5.
        _row_gini_kernel[(rows,)](r.sort(1).values.contiguous(), (n - count).contiguous(), out, n,
                                  BLOCK=BLOCK, ACC=tl.float64)
    return out


@row_gini_triton.register_fake
def _(x, mask):
    return _ops._row_gini_fake(x, mask)
