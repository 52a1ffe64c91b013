"""Triton kernels of y = x · Wᵀ + b with a compressed W: ops lqkernels::bitmap_linear_triton,
csr16_linear_triton and bsr_linear_triton, same contracts as the kernel-level ops in
lqkernels/_ops.py ("sparse linear"), and the same autograd.

* bitmap / csr16 (unstructured, decode-shaped x): one program per (row of W, tile of x rows);
  it walks the row's kept values BLOCK_K at a time (bitmap: unpacks 32-bit words into lanes and
  finds each kept value's slot with a prefix sum), gathers x at their columns and accumulates in
  float32. A row's cost is its kept values, and the launch holds many more programs than the GPU
  has slots, so rows of different densities balance across the machine.
* bsr (larger batches): one program per (32-row block of W, BLOCK_M rows of x) multiplies each
  kept 32x32 tile with tl.dot on the tensor cores; empty tiles are never read.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from lqkernels import _ops
from lqkernels._triton import device_types

BLOCK_K = 64  # kept values (csr16) or columns (bitmap) per step


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _m_block(m: int) -> int:
    return min(16, triton.next_power_of_2(max(m, 1)))


@triton.jit
def _store_rows(y_ptr, acc, bias_ptr, row, offs_m, m_rows, out_features, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        acc += tl.load(bias_ptr + row).to(acc.dtype)
    tl.store(y_ptr + offs_m.to(tl.int64) * out_features + row, acc.to(y_ptr.dtype.element_ty),
             mask=offs_m < m_rows)


@triton.jit
def _csr16_linear_kernel(x_ptr, values_ptr, offsets_ptr, columns_ptr, bias_ptr, y_ptr, m_rows, in_features,
                         out_features, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_K: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    begin = tl.load(offsets_ptr + row)
    end = tl.load(offsets_ptr + row + 1)
    acc = tl.zeros([BLOCK_M], dtype=ACC)
    lanes = tl.arange(0, BLOCK_K)
    for k in range(begin, end, BLOCK_K):
        kept = k + lanes < end
        cols = tl.load(columns_ptr + k + lanes, mask=kept, other=0).to(tl.int32) & 0xFFFF
        w = tl.load(values_ptr + k + lanes, mask=kept, other=0.0).to(ACC)
        xs = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * in_features + cols[None, :],
                     mask=(offs_m[:, None] < m_rows) & kept[None, :], other=0.0).to(ACC)
        acc += tl.sum(xs * w[None, :], 1)
    _store_rows(y_ptr, acc, bias_ptr, row, offs_m, m_rows, out_features, HAS_BIAS)


@triton.jit
def _bitmap_linear_kernel(x_ptr, values_ptr, offsets_ptr, bitmap_ptr, bias_ptr, y_ptr, m_rows, in_features,
                          out_features, words, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_K: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    slot = tl.load(offsets_ptr + row)
    acc = tl.zeros([BLOCK_M], dtype=ACC)
    WORDS: tl.constexpr = BLOCK_K // 32
    bit = tl.arange(0, 32)
    for w0 in range(0, words, WORDS):
        widx = w0 + tl.arange(0, WORDS)
        word = tl.load(bitmap_ptr + row.to(tl.int64) * words + widx, mask=widx < words, other=0)
        kept = tl.reshape((word[:, None] >> bit[None, :]) & 1, [BLOCK_K])
        pos = slot + tl.cumsum(kept, 0) - kept  # slot of each kept value among the row's values
        cols = w0 * 32 + tl.arange(0, BLOCK_K)
        w = tl.load(values_ptr + pos, mask=kept != 0, other=0.0).to(ACC)
        xs = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * in_features + cols[None, :],
                     mask=(offs_m[:, None] < m_rows) & (kept[None, :] != 0), other=0.0).to(ACC)
        acc += tl.sum(xs * w[None, :], 1)
        slot += tl.sum(kept, 0)
    _store_rows(y_ptr, acc, bias_ptr, row, offs_m, m_rows, out_features, HAS_BIAS)


@triton.jit
def _bsr_linear_kernel(x_ptr, values_ptr, offsets_ptr, block_columns_ptr, bias_ptr, y_ptr, m_rows,
                       in_features, out_features, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                       B: tl.constexpr, IEEE: tl.constexpr, ACC: tl.constexpr):
    block_row = tl.program_id(0)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_b = tl.arange(0, B)
    acc = tl.zeros([BLOCK_M, B], dtype=ACC)
    for blk in range(tl.load(offsets_ptr + block_row), tl.load(offsets_ptr + block_row + 1)):
        cols = tl.load(block_columns_ptr + blk) * B + offs_b
        xs = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * in_features + cols[None, :],
                     mask=(offs_m[:, None] < m_rows) & (cols[None, :] < in_features), other=0.0)
        tile = tl.load(values_ptr + blk * B * B + offs_b[:, None] * B + offs_b[None, :])  # blk: int64
        # fp32 inputs: exact products (tf32 would miss the float32 tolerance of the tests).
        if IEEE:
            acc += tl.dot(xs, tl.trans(tile), input_precision="ieee", out_dtype=ACC)
        else:
            acc += tl.dot(xs, tl.trans(tile), out_dtype=ACC)
    rows = block_row * B + offs_b
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=rows < out_features, other=0.0).to(ACC)[None, :]
    tl.store(y_ptr + offs_m[:, None].to(tl.int64) * out_features + rows[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < m_rows) & (rows[None, :] < out_features))


def _launch_rows(kernel, x, values, offsets, index, bias, extra=()):
    x = x.contiguous()
    out_features = offsets.shape[0] - 1
    y = torch.empty((x.shape[0], out_features), dtype=x.dtype, device=x.device)
    if x.shape[0] and out_features:
        block_m = _m_block(x.shape[0])
        kernel[(out_features, triton.cdiv(x.shape[0], block_m))](
            x, values.contiguous(), offsets.contiguous(), index.contiguous(),
            bias if bias is not None else y, y, x.shape[0], x.shape[1], out_features, *extra,
            HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_K=BLOCK_K, ACC=_acc_dtype(x.dtype))
    return y


@torch.library.custom_op("lqkernels::csr16_linear_triton", mutates_args=(), device_types=device_types())
def csr16_linear_triton(x: torch.Tensor, values: torch.Tensor, row_offsets: torch.Tensor, columns: torch.Tensor,
                        bias: torch.Tensor | None) -> torch.Tensor:
    _ops._check_csr16(x, values, row_offsets, columns, bias, "csr16_linear_triton")
    return _launch_rows(_csr16_linear_kernel, x, values, row_offsets, columns, bias)


@torch.library.custom_op("lqkernels::bitmap_linear_triton", mutates_args=(), device_types=device_types())
def bitmap_linear_triton(x: torch.Tensor, values: torch.Tensor, row_offsets: torch.Tensor, bitmap: torch.Tensor,
                         bias: torch.Tensor | None) -> torch.Tensor:
    _ops._check_bitmap(x, values, row_offsets, bitmap, bias, "bitmap_linear_triton")
    return _launch_rows(_bitmap_linear_kernel, x, values, row_offsets, bitmap, bias, (bitmap.shape[1],))


@torch.library.custom_op("lqkernels::bsr_linear_triton", mutates_args=(), device_types=device_types())
def bsr_linear_triton(x: torch.Tensor, values: torch.Tensor, block_row_offsets: torch.Tensor,
                      block_columns: torch.Tensor, block_mask: torch.Tensor, bias: torch.Tensor | None,
                      out_features: int) -> torch.Tensor:
    _ops._check_bsr(x, values, block_row_offsets, block_columns, block_mask, bias, out_features,
                    "bsr_linear_triton")
    x = x.contiguous()
    y = torch.empty((x.shape[0], out_features), dtype=x.dtype, device=x.device)
    if x.shape[0] and out_features:
        # tl.dot needs at least 16 rows; larger tiles reuse each W tile across more x rows.
        block_m = max(16, min(64, triton.next_power_of_2(x.shape[0])))
        _bsr_linear_kernel[(block_row_offsets.shape[0] - 1, triton.cdiv(x.shape[0], block_m))](
            x, values.contiguous(), block_row_offsets.contiguous(), block_columns.contiguous(),
            bias if bias is not None else y, y, x.shape[0], x.shape[1], out_features,
            HAS_BIAS=bias is not None, BLOCK_M=block_m, B=_ops.BSR_BLOCK,
            IEEE=x.dtype in (torch.float32, torch.float64), ACC=_acc_dtype(x.dtype))
    return y


csr16_linear_triton.register_fake(_ops._csr16_linear_fake)
bitmap_linear_triton.register_fake(_ops._bitmap_linear_fake)
bsr_linear_triton.register_fake(_ops._bsr_linear_fake)
for _name, _fmt in (("csr16_linear_triton", "csr16"), ("bitmap_linear_triton", "bitmap"),
                    ("bsr_linear_triton", "bsr")):
    _ops.register_sparse_linear_autograd(f"lqkernels::{_name}", _fmt)
