"""Triton kernels of selection: ops lqkernels::row_topk_mask_triton and global_topk_masks_triton,
same contracts as lqkernels::row_topk_mask / global_topk_masks (lqkernels/_ops.py), and
nm_mask_triton, N:M groups without the generic per-row machinery. The callers in
lqkernels.selection check NaN and k before calling (nm_mask_triton reports NaN for its caller).

Scores are ranked by order keys (csrc/selection_common.h): unsigned integers whose order is the
ranking, so the k-th best is found bit by bit (rows) or digit by digit over histograms (global),
exactly, and ties at the boundary are resolved by a prefix count in index order.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lqkernels import _ops
from lqkernels._triton import device_types
from lqkernels._triton import measures

BLOCK = 1024
DIGIT_BITS = 11  # global selection: 2048-bin histograms, 3 passes for 32-bit keys
# Rows up to measures.ROW_ON_CHIP entries (the power sums' limit) are held in registers and selected
# with 8-bit digits: 4 histograms of 256 bins per row for 32-bit keys, 8 for 64-bit ones.
DIGIT_BITS_ON_CHIP = 8


@triton.jit
def _order_key(x, MAGNITUDE: tl.constexpr, LARGEST: tl.constexpr, KEY: tl.constexpr, KEY_BITS: tl.constexpr):
    """Order key of scores x (float32, or float64 when KEY_BITS is 64); see selection_common.h."""
    if KEY_BITS == 64:
        bits = tl.where(x == 0, 0.0, x).to(tl.float64).to(tl.uint64, bitcast=True)
    else:
        bits = tl.where(x == 0, 0.0, x).to(tl.float32).to(tl.uint32, bitcast=True)
    sign = tl.full([], 1, KEY) << (KEY_BITS - 1)
    ones = sign | (sign - 1)  # x ^ ones is ~x (spelled so Triton's interpreter keeps it unsigned)
    if MAGNITUDE:
        key = bits & (sign - 1)
    else:
        key = tl.where((bits & sign) != 0, bits ^ ones, bits | sign)
    if not LARGEST:
        key = key ^ ones
    return key


@triton.jit
def _candidate_keys(x_ptr, mask_ptr, offsets, inside, HAS_MASK: tl.constexpr, MAGNITUDE: tl.constexpr,
                    LARGEST: tl.constexpr, KEY: tl.constexpr, KEY_BITS: tl.constexpr):
    """(candidate flags, order keys) of the scores at `offsets` (where `inside`)."""
    cand = inside
    if HAS_MASK:
        cand = cand & (tl.load(mask_ptr + offsets, mask=inside, other=0) != 0)
    return cand, _order_key(tl.load(x_ptr + offsets, mask=cand, other=0.0), MAGNITUDE, LARGEST, KEY, KEY_BITS)


@triton.jit
def _row_topk_kernel(x_ptr, k_ptr, mask_ptr, out_ptr, kth_ptr, n, HAS_MASK: tl.constexpr,
                     MAGNITUDE: tl.constexpr, LARGEST: tl.constexpr, KEY: tl.constexpr,
                     KEY_BITS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = row.to(tl.int64) * n
    k = tl.load(k_ptr + row)
    offs = tl.arange(0, BLOCK)
    # The k-th largest key, bit by bit from the top: the largest t with #(keys >= t) >= k.
    kth = tl.zeros([], dtype=KEY)
    for bit in tl.static_range(KEY_BITS - 1, -1, -1):
        trial = kth | (tl.full([], 1, KEY) << bit)
        count = tl.zeros([], dtype=tl.int64)
        for start in range(0, n, BLOCK):
            idx = start + offs
            cand = idx < n
            if HAS_MASK:
                cand = cand & (tl.load(mask_ptr + base + idx, mask=idx < n, other=0) != 0)
            key = _order_key(tl.load(x_ptr + base + idx, mask=cand, other=0.0), MAGNITUDE, LARGEST, KEY, KEY_BITS)
            count += tl.sum((cand & (key >= trial)).to(tl.int64), 0)
        kth = tl.where(count >= k, trial, kth)
    # Above the boundary, then the first (k - #above) candidates on it in index order.
    above_total = tl.zeros([], dtype=tl.int64)
    for start in range(0, n, BLOCK):
        idx = start + offs
        cand, key = _candidate_keys(x_ptr, mask_ptr, base + idx, idx < n, HAS_MASK, MAGNITUDE, LARGEST, KEY, KEY_BITS)
        above_total += tl.sum((cand & (key > kth)).to(tl.int64), 0)
    take = k - above_total
    tied_before = tl.zeros([], dtype=tl.int64)
    for start in range(0, n, BLOCK):
        idx = start + offs
        cand, key = _candidate_keys(x_ptr, mask_ptr, base + idx, idx < n, HAS_MASK, MAGNITUDE, LARGEST, KEY, KEY_BITS)
        tie = cand & (key == kth)
        rank = tied_before + tl.cumsum(tie.to(tl.int64), 0)
        keep = (cand & (key > kth)) | (tie & (rank <= take))
        tl.store(out_ptr + base + idx, keep & (k > 0), mask=idx < n)
        tied_before += tl.sum(tie.to(tl.int64), 0)
    tl.store(kth_ptr + row, kth.to(tl.int64 if KEY_BITS == 64 else tl.int32, bitcast=True))


@triton.jit
def _row_topk_on_chip_kernel(x_ptr, k_ptr, mask_ptr, out_ptr, kth_ptr, n, HAS_MASK: tl.constexpr,
                             MAGNITUDE: tl.constexpr, LARGEST: tl.constexpr, KEY: tl.constexpr,
                             KEY_BITS: tl.constexpr, ROW: tl.constexpr, DIGIT_BITS: tl.constexpr):
    """A row of at most ROW entries, read once: its keys stay in registers through a radix select
    of DIGIT_BITS-bit digits (one histogram per digit), then the mask is written."""
    BINS: tl.constexpr = 1 << DIGIT_BITS
    row = tl.program_id(0)
    offs = tl.arange(0, ROW)
    inside = offs < n
    base = row.to(tl.int64) * n
    key = _order_key(tl.load(x_ptr + base + offs, mask=inside, other=0.0), MAGNITUDE, LARGEST, KEY, KEY_BITS)
    cand = inside
    if HAS_MASK:
        cand = cand & (tl.load(mask_ptr + base + offs, mask=inside, other=0) != 0)
    k = tl.load(k_ptr + row).to(tl.int32)
    # Digit by digit from the top: the digit of the need-th best key among those agreeing with the
    # digits chosen so far (prefix), and how many of them rank above it.
    bins = tl.arange(0, BINS)
    prefix = tl.zeros([], dtype=KEY)
    decided = tl.zeros([], dtype=KEY)
    need = k
    for step in tl.static_range(KEY_BITS // DIGIT_BITS):
        live = cand & ((key & decided) == prefix)
        shift = KEY_BITS - (step + 1) * DIGIT_BITS  # a compile-time value (as are step and the widths)
        hist = tl.histogram(((key >> shift) & (BINS - 1)).to(tl.int32), BINS, mask=live)
        at_or_above = tl.sum(hist, 0) - tl.cumsum(hist, 0) + hist  # per digit: live keys with that digit or a higher one
        digit = tl.max(tl.where(at_or_above >= need, bins, 0), 0)
        need -= tl.sum(tl.where(bins > digit, hist, 0), 0)
        prefix = prefix | (digit.to(KEY) << shift)
        decided = decided | (tl.full([], BINS - 1, KEY) << shift)
    # Above the k-th key, then the first `need` keys equal to it in index order.
    tie = cand & (key == prefix)
    keep = cand & (key > prefix)
    if tl.sum(tie.to(tl.int32), 0) > need:  # ties beyond the boundary: rank them by index
        keep = keep | (tie & (tl.cumsum(tie.to(tl.int32), 0) <= need))
    else:
        keep = keep | tie
    tl.store(out_ptr + base + offs, keep & (k > 0), mask=inside)
    tl.store(kth_ptr + row, prefix.to(tl.int64 if KEY_BITS == 64 else tl.int32, bitcast=True))


def _key_dtype(dtype):
    """(torch dtype holding the keys' bits, Triton key type, key bits) for scores of `dtype`."""
    return (torch.int64, tl.uint64, 64) if dtype == torch.float64 else (torch.int32, tl.uint32, 32)


def key_values(keys: torch.Tensor, magnitude: bool, largest: bool) -> torch.Tensor:
    """The ranked score (|score| if magnitude) of each order key, held as the bits of a signed
    int32/int64 tensor, as float32/float64 (inverse of _order_key)."""
    k = keys if largest else ~keys
    sign_clear = torch.iinfo(k.dtype).max  # every bit but the sign
    raw = k if magnitude else torch.where(k < 0, k & sign_clear, ~k)
    return raw.view(torch.float64 if k.dtype == torch.int64 else torch.float32)


@torch.library.custom_op("lqkernels::row_topk_mask_triton", mutates_args=(), device_types=device_types())
def row_topk_mask_triton(x: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, magnitude: bool,
                         largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    _ops.check_rows(x, mask, "row_topk_mask_triton")
    x = x.contiguous()
    mask = mask.contiguous() if mask is not None else None
    rows, n = x.shape
    key_torch, key_tl, key_bits = _key_dtype(x.dtype)
    out = torch.empty((rows, n), dtype=torch.bool, device=x.device)
    kth = torch.empty(rows, dtype=key_torch, device=x.device)
    if rows > 0 and n <= measures.ROW_ON_CHIP:
        row = triton.next_power_of_2(max(n, 1))
        _row_topk_on_chip_kernel[(rows,)](x, k.contiguous(), mask if mask is not None else x, out, kth, n,
                                          HAS_MASK=mask is not None, MAGNITUDE=magnitude, LARGEST=largest,
                                          KEY=key_tl, KEY_BITS=key_bits, ROW=row, DIGIT_BITS=DIGIT_BITS_ON_CHIP,
                                          num_warps=measures.on_chip_warps(row))
    elif rows > 0:
        _row_topk_kernel[(rows,)](x, k.contiguous(), mask if mask is not None else x, out, kth, n,
                                  HAS_MASK=mask is not None, MAGNITUDE=magnitude, LARGEST=largest,
                                  KEY=key_tl, KEY_BITS=key_bits,
                                  BLOCK=min(BLOCK, triton.next_power_of_2(max(n, 1))))
    threshold = key_values(kth, magnitude, largest)
    threshold = torch.where(k > 0, threshold, math.inf if largest else -math.inf)
    return out, threshold.to(x.dtype)


@row_topk_mask_triton.register_fake
def _(x, k, mask, magnitude, largest):
    return _ops._row_topk_mask_fake(x, k, mask, magnitude, largest)


# ---- N:M groups ------------------------------------------------------------------------------
# Groups of m consecutive scores. A program takes a tile of rows of PER_ROW groups each (two bf16
# 2:4 groups make one 16-byte load); a thread holds whole rows, so an entry's rank within its
# group is counted against the other entries in registers (m compares of order keys each: no
# sort, no shared memory, no per-group buffers), and the n best are kept.

ROWS_PER_PROGRAM = 512
NM_MAX_M = 32  # m compares per entry: beyond this the generic per-row selection is cheaper


@triton.jit
def _nm_mask_kernel(x_ptr, out_ptr, nan_ptr, groups, N: tl.constexpr, M: tl.constexpr, MP: tl.constexpr,
                    PER_ROW: tl.constexpr, MAGNITUDE: tl.constexpr, KEY: tl.constexpr,
                    KEY_BITS: tl.constexpr, ROWS: tl.constexpr):
    WIDTH: tl.constexpr = PER_ROW * MP  # MP = m rounded up to a power of two; lanes >= m pad a group
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    lane = tl.arange(0, WIDTH)
    group = row[:, None] * PER_ROW + lane[None, :] // MP
    entry = lane[None, :] % MP
    if M == MP:  # the same offsets and bounds, spelled so the compiler sees whole rows (16-byte loads)
        offsets = row[:, None] * WIDTH + lane[None, :]
        inside = (row < groups // PER_ROW)[:, None] & (lane < WIDTH)[None, :]  # the launcher: PER_ROW divides groups
    else:
        offsets = group * M + entry
        inside = (group < groups) & (entry < M)
    x = tl.load(x_ptr + offsets, mask=inside, other=0.0)
    key = _order_key(x, MAGNITUDE, True, KEY, KEY_BITS)
    # rank: the entries of the same group ranked before this one (a better key, or the same key
    # at a lower index); lane j's key is taken out of each row by a select the compiler resolves
    # per register.
    rank = tl.zeros([ROWS, WIDTH], dtype=tl.int32)
    for j in tl.static_range(WIDTH):
        if j % MP < M:
            other = tl.sum(tl.where(lane[None, :] == j, key, 0), 1)[:, None]
            same_group = (lane[None, :] // MP) == j // MP
            before = (other > key) | ((other == key) & (j < lane[None, :]))
            rank += (same_group & before).to(tl.int32)
    tl.store(out_ptr + offsets, rank < N, mask=inside)
    # The first group holding a NaN, for the caller to raise on: an atomic only for a row with one.
    first_nan = tl.min(tl.where(inside & (x != x), group, groups), 1)
    tl.atomic_min(nan_ptr + tl.zeros_like(row), first_nan, mask=first_nan < groups, sem="relaxed")


@torch.library.custom_op("lqkernels::nm_mask_triton", mutates_args=(), device_types=device_types())
def nm_mask_triton(groups: torch.Tensor, n: int, magnitude: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, first NaN group) of groups (count, m): the n best-ranked entries of each row (ties:
    lowest index), and the index of the first row holding a NaN (count if none), for the caller
    to raise on."""
    _ops.check_rows(groups, None, "nm_mask_triton")
    count, m = groups.shape
    if not 0 <= n <= m or not 1 <= m <= NM_MAX_M:
        raise ValueError(f"nm_mask_triton: needs 0 <= n <= m <= {NM_MAX_M}, got n={n}, m={m}")
    groups = groups.contiguous()
    key_torch, key_tl, key_bits = _key_dtype(groups.dtype)
    out = torch.empty((count, m), dtype=torch.bool, device=groups.device)
    first_nan = torch.full((1,), count, dtype=torch.int64, device=groups.device)
    if count > 0:
        mp = triton.next_power_of_2(m)
        per_row = max(1, 16 // (mp * groups.element_size()))  # a row of groups fills a 16-byte load
        if m != mp or count % per_row:
            per_row = 1
        _nm_mask_kernel[(triton.cdiv(count, ROWS_PER_PROGRAM * per_row),)](
            groups, out, first_nan, count, N=n, M=m, MP=mp, PER_ROW=per_row, MAGNITUDE=magnitude,
            KEY=key_tl, KEY_BITS=key_bits, ROWS=ROWS_PER_PROGRAM)
    return out, first_nan


@nm_mask_triton.register_fake
def _(groups, n, magnitude):
    return groups.new_empty(groups.shape, dtype=torch.bool), groups.new_empty((1,), dtype=torch.int64)


# ---- global selection -----------------------------------------------------------------------

@triton.jit
def _digit_histogram_kernel(x_ptr, mask_ptr, numel, prefix_ptr, decided, hist_ptr, shift, digit_mask,
                            HAS_MASK: tl.constexpr, MAGNITUDE: tl.constexpr, LARGEST: tl.constexpr,
                            KEY: tl.constexpr, KEY_BITS: tl.constexpr, BLOCK: tl.constexpr):
    """Counts the candidates whose key agrees with the prefix on the `decided` bits, by their
    digit (key >> shift) & digit_mask."""
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    cand, key = _candidate_keys(x_ptr, mask_ptr, idx, idx < numel, HAS_MASK, MAGNITUDE, LARGEST, KEY, KEY_BITS)
    decided = decided.to(KEY)
    agrees = (key & decided) == (tl.load(prefix_ptr).to(KEY, bitcast=True) & decided)
    digit = ((key >> shift) & digit_mask).to(tl.int32)
    tl.atomic_add(hist_ptr + digit, 1, mask=cand & agrees)


@triton.jit
def _mark_kernel(x_ptr, mask_ptr, numel, kth_ptr, out_ptr, ties_ptr, budget_ptr, TIES_ONLY: tl.constexpr,
                 HAS_MASK: tl.constexpr, MAGNITUDE: tl.constexpr, LARGEST: tl.constexpr, KEY: tl.constexpr,
                 KEY_BITS: tl.constexpr, BLOCK: tl.constexpr):
    """First call: marks keys above the boundary and counts each block's ties. Second call
    (TIES_ONLY): marks the first `budget` ties of each block."""
    block = tl.program_id(0)
    idx = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    cand, key = _candidate_keys(x_ptr, mask_ptr, idx, idx < numel, HAS_MASK, MAGNITUDE, LARGEST, KEY, KEY_BITS)
    kth = tl.load(kth_ptr).to(KEY, bitcast=True)
    tie = cand & (key == kth)
    if TIES_ONLY:
        budget = tl.load(budget_ptr + block)
        keep = tie & (tl.cumsum(tie.to(tl.int64), 0) <= budget)
        tl.store(out_ptr + idx, True, mask=keep)
    else:
        tl.store(out_ptr + idx, cand & (key > kth), mask=idx < numel)
        tl.store(ties_ptr + block, tl.sum(tie.to(tl.int64), 0))


@torch.library.custom_op("lqkernels::global_topk_masks_triton", mutates_args=(), device_types=device_types(),
                         schema="(Tensor[] xs, Tensor[]? masks, int k, bool magnitude, bool largest) -> Tensor[]")
def global_topk_masks_triton(xs: list[torch.Tensor], masks: list[torch.Tensor] | None, k: int,
                             magnitude: bool, largest: bool) -> list[torch.Tensor]:
    xs = [x.contiguous() for x in xs]
    masks = [m.contiguous() for m in masks] if masks is not None else None
    device = xs[0].device
    key_torch, key_tl, key_bits = _key_dtype(xs[0].dtype)
    outs = [torch.zeros(x.shape, dtype=torch.bool, device=device) for x in xs]
    if k == 0:
        return outs
    flags = dict(MAGNITUDE=magnitude, LARGEST=largest, KEY=key_tl, KEY_BITS=key_bits, BLOCK=BLOCK)

    def launches():
        for i, x in enumerate(xs):
            m = masks[i] if masks is not None else None
            yield i, x, m, (triton.cdiv(x.numel(), BLOCK),)

    # Digit by digit from the top: histogram, then the digit holding the remaining-th largest key
    # (on the device: no synchronisation).
    prefix = torch.zeros(1, dtype=torch.int64, device=device)  # the key's decided bits (unsigned)
    remaining = torch.full((1,), k, dtype=torch.int64, device=device)
    decided = 0  # mask of the key bits decided so far
    for top in range(key_bits, 0, -DIGIT_BITS):
        shift = max(top - DIGIT_BITS, 0)
        bits = top - shift
        hist = torch.zeros(1 << DIGIT_BITS, dtype=torch.int32, device=device)
        for i, x, m, grid in launches():
            if x.numel():
                _digit_histogram_kernel[grid](x, m if m is not None else x, x.numel(), prefix.to(key_torch),
                                              decided, hist, shift, (1 << bits) - 1, HAS_MASK=m is not None,
                                              **flags)
        from_top = hist[: 1 << bits].flip(0).to(torch.int64).cumsum(0)
        position = torch.searchsorted(from_top, remaining)  # first count from the top >= remaining
        remaining = remaining - torch.where(position > 0, from_top[(position - 1).clamp_min(0)], 0)
        digit = (1 << bits) - 1 - position
        prefix = prefix | (digit << shift)
        decided |= ((1 << bits) - 1) << shift
    kth = prefix.to(key_torch)
    ties, budgets = [], []
    for i, x, m, grid in launches():
        ties.append(torch.zeros(grid[0], dtype=torch.int64, device=device))
        if x.numel():
            _mark_kernel[grid](x, m if m is not None else x, x.numel(), kth, outs[i], ties[-1], ties[-1],
                               TIES_ONLY=False, HAS_MASK=m is not None, **flags)
    all_ties = torch.cat(ties)
    before = all_ties.cumsum(0) - all_ties
    budget = (remaining - before).clamp(min=0).minimum(all_ties)
    for (i, x, m, grid), block_budget in zip(launches(), budget.split([t.numel() for t in ties])):
        if x.numel():
            _mark_kernel[grid](x, m if m is not None else x, x.numel(), kth, outs[i], ties[i], block_budget,
                               TIES_ONLY=True, HAS_MASK=m is not None, **flags)
    return outs


@global_topk_masks_triton.register_fake
def _(xs, masks, k, magnitude, largest):
    return _ops._global_topk_masks_fake(xs, masks, k, magnitude, largest)
