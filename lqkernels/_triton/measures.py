"""Triton kernels of the per-slice measures: ops lqkernels::row_powsum_triton and row_gini_triton,
same contracts as lqkernels::row_powsum / row_gini (lqkernels/_ops.py).

Power sums take one of two kernels:
- rows of at most ROW_ON_CHIP entries (a weight's rows, dim=1 or 0): one program holds its whole
  row in registers, read once with 16-byte loads; it takes the row max, scales by its reciprocal
  and sums each exponent's terms, each exponent's formula chosen at compile time (q=1: |x|, q=2: a
  multiply, q=0.5: one sqrt, other q: one fast log2 per element shared by all of them and one exp2
  per exponent, or a few multiplies for a multiple 2..8 of the smallest). No loop, no running
  rescale; counts and NaN flags cost nothing without a mask (a NaN makes every sum NaN by itself).
- longer rows and dim=None: each row is split into parts that one program reduces in BLOCK-wide
  chunks, each lane keeping sums relative to a power of two below its running maximum (no block
  reduction in the loop); merge_parts combines the parts.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from lqkernels import _ops
from lqkernels._triton import device_types, interpreted

BLOCK = 1024
MAX_SPLITS = 1024
# 16384 float32 entries over 16 warps: 32 per thread, and as many more for the shared log2 (below
# the 128-register budget of benchmarks/gpu_static.py). A longer row takes the chunked kernel.
ROW_ON_CHIP = 16384

# Exponent kinds that have a cheaper exact formula: per exponent in the on-chip kernel, for a lone
# exponent in the chunked one.
KIND_GENERAL, KIND_ONE, KIND_TWO, KIND_HALF = 0, 1, 2, 3


def exponent_kind(q: float) -> int:
    return {1.0: KIND_ONE, 2.0: KIND_TWO, 0.5: KIND_HALF}.get(float(q), KIND_GENERAL)


def exponent_kinds(qs) -> int:
    """Every exponent's kind in one compile-time integer: 2 bits per exponent, the first lowest."""
    return sum(exponent_kind(q) << (2 * i) for i, q in enumerate(qs))


def exponent_steps(qs) -> tuple[int, int]:
    """(index of the smallest general exponent q_b, 4 bits per exponent: k where the exponent is
    k·q_b with k in 2..8, else 0). Such exponents are powers of r^q_b (0.2, 0.4, ..., 0.8: one exp2
    and multiplies instead of four exp2)."""
    general = [i for i, q in enumerate(qs) if exponent_kind(q) == KIND_GENERAL]
    if not general:
        return 0, 0
    base = min(general, key=lambda i: qs[i])
    steps = 0
    for i in general:
        k = round(qs[i] / qs[base])
        if 2 <= k <= 8 and abs(qs[i] - k * qs[base]) <= 1e-12 * qs[i]:
            steps |= k << (4 * i)
    return base, steps


def on_chip_warps(row: int) -> int:
    """Warps of an on-chip program for a row padded to `row` entries: 1024 entries per warp (32
    per thread), 1 to 16 warps."""
    return max(1, min(16, row // 1024))


@functools.lru_cache(maxsize=64)
def exponents_on(qs: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The exponents as a tensor on `device`, made once per (qs, dtype, device): a call does not
    pay a host-to-device copy for them."""
    return torch.tensor(qs, dtype=dtype, device=device)


@triton.jit
def _row_powsum_on_chip_kernel(x_ptr, mask_ptr, qs_ptr, sums_ptr, scale_ptr, count_ptr, n, out_stride,
                               HAS_MASK: tl.constexpr, NQ: tl.constexpr, KINDS: tl.constexpr,
                               GENERAL: tl.constexpr, STEPS: tl.constexpr, BASE: tl.constexpr,
                               ROW: tl.constexpr, ACC: tl.constexpr, TINY: tl.constexpr, BOOST: tl.constexpr,
                               FAST: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, ROW)
    inside = offs < n
    row_start = row.to(tl.int64) * n
    a = tl.abs(tl.load(x_ptr + row_start + offs, mask=inside, other=0.0).to(ACC))
    if HAS_MASK:  # loaded beside x, not before it: one memory round trip
        keep = inside & (tl.load(mask_ptr + row_start + offs, mask=inside, other=0) != 0)
        a = tl.where(keep, a, 0.0)
    scale = tl.max(tl.where(a == a, a, 0.0), 0)  # NaNs are left to the sums (below)
    if scale < TINY:  # 1 / scale would overflow (or scale is 0): scale both by an exact power of two
        a = a * BOOST
        inv = tl.where(scale > 0, 1.0 / (scale * BOOST), 0.0)
    else:
        inv = tl.where(scale < float("inf"), 1.0 / scale, 0.0)
    # a * (1/scale) is a / scale within 1.5 ulp, without a division per entry; with an infinite
    # scale, infinities count 1 and finite entries 0; a NaN stays NaN and makes every sum NaN.
    r = tl.where(a == float("inf"), 1.0, a * inv)
    if GENERAL:
        if FAST:
            log2r = libdevice.fast_log2f(r)  # lg2.approx: one MUFU op; log2(0) = -inf, 2^-inf = 0
        else:
            log2r = tl.log2(r)
    if STEPS != 0:  # exponents k·q_BASE (k = 2..8) as powers of t = r^q_BASE: multiplies, not exp2
        t = tl.exp2(tl.load(qs_ptr + BASE) * log2r)
    probe = tl.zeros([], dtype=ACC)
    for i in tl.static_range(NQ):
        # the exponent's kind, decided at compile time (a local name would be a runtime value)
        if ((KINDS >> (2 * i)) & 3) == 1:
            total = tl.sum(r, 0)
        elif ((KINDS >> (2 * i)) & 3) == 2:
            total = tl.sum(r * r, 0)
        elif ((KINDS >> (2 * i)) & 3) == 3:
            total = tl.sum(tl.sqrt(r), 0)
        elif ((STEPS >> (4 * i)) & 15) >= 2:
            power = t
            for _ in tl.static_range(((STEPS >> (4 * i)) & 15) - 1):
                power = power * t
            total = tl.sum(power, 0)
        else:
            total = tl.sum(tl.exp2(tl.load(qs_ptr + i) * log2r), 0)
        tl.store(sums_ptr + i * out_stride + row, total)
        if i == 0:
            probe = total
    if NQ == 0:
        probe = tl.sum(r, 0)
    tl.store(scale_ptr + row, tl.where(probe != probe, float("nan"), scale))
    if HAS_MASK:
        tl.store(count_ptr + row, tl.sum(keep.to(tl.int32), 0).to(tl.int64))
    else:
        tl.store(count_ptr + row, tl.zeros([], dtype=tl.int64) + n)


@triton.jit
def _exponent(a, ACC: tl.constexpr):
    """floor(log2(a)) of finite a >= 0 from its exponent bits, at least the smallest normal's (a
    subnormal or zero counts as 2^-126 / 2^-1022): exact, no MUFU."""
    if ACC == tl.float64:
        return tl.maximum(((a.to(tl.int64, bitcast=True) >> 52) & 0x7FF).to(tl.int32) - 1023, -1022)
    return tl.maximum(((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -126)


@triton.jit
def _power_of_two(e, ACC: tl.constexpr):
    """2^e, exactly, for an integer e in the normal range."""
    if ACC == tl.float64:
        return ((e + 1023).to(tl.int64) << 52).to(tl.float64, bitcast=True)
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _row_powsum_kernel(x_ptr, mask_ptr, qs_ptr, sums_ptr, scale_ptr, count_ptr, n, span, splits,
                       out_stride, HAS_MASK: tl.constexpr, NQ: tl.constexpr, QPAD: tl.constexpr,
                       KIND: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr, FAST: tl.constexpr):
    """One part of one row, in BLOCK-wide chunks, without a block reduction until the end: each
    lane keeps its sums relative to a power of two 2^E at or below its running maximum (the
    entry scaled by 2^-E exactly; on a new maximum the sums shrink by 2^(q·ΔE)), its maximum, and
    its counts of infinities and NaNs. The lanes merge once, relative to the part's maximum
    (within rounding: unlike the on-chip kernel, a lone entry's norm is not bit-exact)."""
    row = tl.program_id(0)
    part = tl.program_id(1)
    begin = part * span
    end = tl.minimum(begin + span, n)
    qidx = tl.arange(0, QPAD)
    qv = tl.load(qs_ptr + qidx, mask=qidx < NQ, other=1.0).to(ACC)
    sums = tl.zeros([QPAD, BLOCK], dtype=ACC)  # several exponents: one row each
    acc = tl.zeros([BLOCK], dtype=ACC)  # a lone exponent: a plain vector (no 2-D layout to convert)
    q0 = tl.load(qs_ptr).to(ACC)
    lane_exp = tl.full([BLOCK], -1022 if ACC == tl.float64 else -126, tl.int32)
    lane_max = tl.zeros([BLOCK], dtype=ACC)
    infs = tl.zeros([BLOCK], dtype=tl.int32)
    nans = tl.zeros([BLOCK], dtype=tl.int32)
    count = tl.zeros([BLOCK], dtype=tl.int32)
    offs = tl.arange(0, BLOCK)
    row_start = row.to(tl.int64) * n
    for start in range(begin, end, BLOCK):
        idx = start + offs
        inside = idx < end
        a = tl.abs(tl.load(x_ptr + row_start + idx, mask=inside, other=0.0).to(ACC))
        if HAS_MASK:
            keep = inside & (tl.load(mask_ptr + row_start + idx, mask=inside, other=0) != 0)
            a = tl.where(keep, a, 0.0)
            count += keep.to(tl.int32)
        finite = a < float("inf")  # False for inf and NaN
        infs += (a == float("inf")).to(tl.int32)
        nans += (a != a).to(tl.int32)
        a = tl.where(finite, a, 0.0)
        lane_max = tl.maximum(lane_max, a)
        new_exp = tl.maximum(lane_exp, _exponent(a, ACC))
        r = a * _power_of_two(-new_exp, ACC)  # in [0, 2): exact
        shrink = (lane_exp - new_exp).to(ACC)  # <= 0; 0 unless this lane's maximum grew
        if KIND == 1:
            acc = acc * tl.exp2(shrink) + r
        elif KIND == 2:
            acc = acc * tl.exp2(2.0 * shrink) + r * r
        elif KIND == 3:
            acc = acc * tl.exp2(0.5 * shrink) + tl.sqrt(r)
        else:
            if FAST:
                log2r = libdevice.fast_log2f(r)  # log2(0) = -inf: a zero adds 0
            else:
                log2r = tl.log2(r)
            if NQ == 1:
                acc = acc * tl.exp2(q0 * shrink) + tl.exp2(q0 * log2r)
            else:
                sums = sums * tl.exp2(qv[:, None] * shrink[None, :]) + tl.exp2(qv[:, None] * log2r[None, :])
        lane_exp = new_exp
    # Merge the lanes relative to the part's maximum: Σ_lanes sums · (2^E_lane / scale)^q.
    scale = tl.max(lane_max, 0)
    safe = tl.where(scale > 0, scale, 1.0)
    if NQ == 1:
        total = tl.sum(acc * tl.exp2(q0 * (lane_exp.to(ACC) - tl.log2(safe))), 0) + tl.zeros([QPAD], dtype=ACC)
    else:
        total = tl.sum(sums * tl.exp2(qv[:, None] * (lane_exp.to(ACC)[None, :] - tl.log2(safe))), 1)
    total = tl.where(scale > 0, total, 0.0)
    inf_total = tl.sum(infs, 0)
    nan = tl.sum(nans, 0) > 0
    # With an infinity the slice is its limit: infinities count 1 each, finite entries 0.
    total = tl.where(inf_total > 0, inf_total.to(ACC), total)
    scale = tl.where(inf_total > 0, float("inf"), scale)
    out = row * splits + part
    tl.store(sums_ptr + qidx * out_stride + out, tl.where(nan, float("nan"), total), mask=qidx < NQ)
    tl.store(scale_ptr + out, tl.where(nan, float("nan"), scale))
    if HAS_MASK:
        tl.store(count_ptr + out, tl.sum(count, 0).to(tl.int64))
    else:
        tl.store(count_ptr + out, tl.maximum(end - begin, 0).to(tl.int64))


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
    if n <= ROW_ON_CHIP:
        return _row_powsum_on_chip(x, mask, qs, acc)
    lanes = torch.cuda.get_device_properties(x.device).multi_processor_count * 2 if x.is_cuda else 4
    splits, span = powsum_geometry(rows, n, lanes)
    sums = torch.empty((len(qs), rows * splits), dtype=acc, device=x.device)
    scale = torch.empty(rows * splits, dtype=acc, device=x.device)
    count = torch.empty(rows * splits, dtype=torch.int64, device=x.device)
    if rows > 0:
        qs_t = exponents_on(tuple(float(q) for q in qs) or (1.0,), acc, x.device)
        _row_powsum_kernel[(rows, splits)](
            x, mask if mask is not None else x, qs_t, sums, scale, count, n, span, splits,
            rows * splits, HAS_MASK=mask is not None, NQ=len(qs),
            QPAD=triton.next_power_of_2(max(len(qs), 1)),
            KIND=exponent_kind(qs[0]) if len(qs) == 1 else KIND_GENERAL, BLOCK=BLOCK,
            ACC=tl.float64 if acc == torch.float64 else tl.float32,
            FAST=acc != torch.float64 and not interpreted())
    if splits == 1:
        return sums, count, scale
    return merge_parts(sums.view(len(qs), rows, splits), count.view(rows, splits),
                       scale.view(rows, splits), qs)


@row_powsum_triton.register_fake
def _(x, mask, qs):
    return _ops._row_powsum_fake(x, mask, qs)


def on_chip_constexprs(qs, acc: torch.dtype, n: int, has_mask: bool, fast: bool) -> dict:
    """The compile-time arguments of _row_powsum_on_chip_kernel (shared with the static check)."""
    f64 = acc == torch.float64
    tiny_exponent = 1000 if f64 else 120  # below 2^-tiny, 1 / scale overflows (or nearly)
    base, steps = exponent_steps(qs)
    return dict(HAS_MASK=has_mask, NQ=len(qs), KINDS=exponent_kinds(qs),
                GENERAL=any(exponent_kind(q) == KIND_GENERAL for q in qs), STEPS=steps, BASE=base,
                ROW=triton.next_power_of_2(max(n, 1)),
                ACC=tl.float64 if f64 else tl.float32, TINY=2.0 ** -tiny_exponent, BOOST=2.0 ** tiny_exponent,
                FAST=fast and not f64)


def _row_powsum_on_chip(x, mask, qs, acc):
    rows, n = x.shape
    sums = torch.empty((len(qs), rows), dtype=acc, device=x.device)
    scale = torch.empty(rows, dtype=acc, device=x.device)
    count = torch.empty(rows, dtype=torch.int64, device=x.device)
    if rows == 0:
        return sums, count, scale
    constexprs = on_chip_constexprs(qs, acc, n, mask is not None, fast=not interpreted())
    exponents = exponents_on(tuple(float(q) for q in qs), acc, x.device) if constexprs["GENERAL"] else sums
    _row_powsum_on_chip_kernel[(rows,)](x, mask if mask is not None else x, exponents, sums, scale, count, n, rows,
                                        num_warps=on_chip_warps(constexprs["ROW"]), **constexprs)
    return sums, count, scale


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
