"""ℓq norms and sparsity indices over any `dim`, on every backend (public in `lqkernels.ops`).

Every measure here is computed from one pass over x (`lqkernels::row_powsum`): per slice, the
largest magnitude `scale`, the sums T_q = Σ (|x|/scale)^q and the survivor count d, from which
    ‖x‖_q = scale · T_q^{1/q}        power mean M_q = scale · (T_q / d)^{1/q}
and the indices below are ratios of power means (scale cancels). Sums relative to the maximum
cannot overflow or underflow, so a float32 slice of 1e30s or 1e-30s gives finite, exact results.

Conventions shared by all ops:
  * x: float16, bfloat16, float32 or float64, any layout; low precision accumulates in float32.
  * dim: None (all dims), an int or a tuple of ints; the result has x's shape without `dim`
    (kept as size 1 with keepdim=True).
  * mask: a bool tensor of x's shape; only entries where it is True (the survivors of pruning)
    count, and d is their number. Without a mask every entry counts.
  * An all-zero, empty or fully masked slice gives 0 for every index (and a norm of 0).
  * NaN in a slice gives NaN; an infinite entry gives the limit (norm inf; indices as if the
    infinite entries were equal and every finite entry were zero).
  * backend: "auto" (default), "cpp", "cuda", "triton" or "torch" (the reference); the
    LQK_BACKEND variable sets the default. See lqkernels._backend.
  * Bad input (q <= 0 or NaN, p >= q, dim out of range or repeated, a mask of the wrong shape,
    dtype or device, integer or complex x) raises ValueError or TypeError naming the value.
  * Not differentiable: these are measurements (use torch.linalg.vector_norm for a penalty).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch

from lqkernels import _backend, _distributed, _ops
from lqkernels._checks import check_mask, check_scores, user_terms

__all__ = ["lq_norm", "lq_powsum", "pq_index", "sparsity_index", "hoyer", "gini", "PowSums"]

Dim = int | Sequence[int] | None


class PowSums(NamedTuple):
    """`sums[j]` = Σ|x|^{qs[j]} over the survivors of each slice; `count` = survivors (d)."""
    sums: torch.Tensor
    count: torch.Tensor


def _check_exponent(name: str, value, op: str, allow_inf: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: {name} must be a number, got {value!r}")
    value = float(value)
    if not value > 0 or (value == math.inf and not allow_inf):
        allowed = "> 0 (or inf)" if allow_inf else "finite and > 0"
        raise ValueError(f"{op}: {name} must be {allowed}, got {value}")
    return value


def _reduced_dims(ndim: int, dim: Dim, op: str) -> list[int]:
    rank = max(ndim, 1)  # a 0-d tensor reduces like a 1-element vector, as in torch
    if dim is None:
        return list(range(rank))
    if isinstance(dim, int) and not isinstance(dim, bool):
        dims = [dim]
    elif isinstance(dim, (tuple, list)):
        dims = list(dim)
    else:
        raise TypeError(f"{op}: dim must be None, an int or a tuple of ints, got {dim!r}")
    if not dims:
        raise ValueError(f"{op}: dim=() reduces nothing; pass None to reduce every dim")
    out = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int):
            raise TypeError(f"{op}: dim must be an int or a tuple of ints, got {dim!r}")
        if not -rank <= d < rank:
            raise ValueError(f"{op}: dim {d} is out of range for a tensor with {ndim} dims")
        if d % rank in out:
            raise ValueError(f"{op}: dim {d} appears more than once in {dim!r}")
        out.append(d % rank)
    return out


def _as_rows(x: torch.Tensor, dim: Dim, mask: torch.Tensor | None, op: str):
    """(x2d, mask2d, out_shape, keepdim_shape): the reduced dims flattened into rows of x2d."""
    check_scores(x, op)
    check_mask(mask, x, op)
    scalar = x.dim() == 0
    if scalar:
        x = x.reshape(1)
        mask = mask.reshape(1) if mask is not None else None
    reduced = _reduced_dims(0 if scalar else x.dim(), dim, op)
    kept = [d for d in range(x.dim()) if d not in reduced]
    out_shape = [x.shape[d] for d in kept]
    keep_shape = [] if scalar else [1 if d in reduced else x.shape[d] for d in range(x.dim())]
    rows = math.prod(out_shape)
    n = math.prod([x.shape[d] for d in reduced])
    perm = kept + reduced
    x2d = x.permute(perm).reshape(rows, n)
    mask2d = mask.permute(perm).reshape(rows, n) if mask is not None else None
    return x2d, mask2d, out_shape, keep_shape


class _Out(NamedTuple):
    """Where a measure's result goes: the local result shapes (without / with keepdim) and, for a
    DTensor x, its layout, the global shapes and the result's sharded dim without / with keepdim
    (None: replicated)."""
    out_shape: list
    keep_shape: list
    layout: _distributed.Layout | None = None
    global_out: list | None = None
    global_keep: list | None = None
    shard_out: int | None = None
    shard_keep: int | None = None

    def shaped(self, values: torch.Tensor, dtype, keepdim: bool, lead: list | None = None) -> torch.Tensor:
        """values (lead…, local slices) as the result: reshaped, and a DTensor for a DTensor x."""
        lead = lead or []
        local = values.to(dtype).reshape(lead + (self.keep_shape if keepdim else self.out_shape))
        if self.layout is None:
            return local
        shard = self.shard_keep if keepdim else self.shard_out
        return _distributed.wrap(local, self.layout, None if shard is None else len(lead) + shard,
                                 lead + (self.global_keep if keepdim else self.global_out))


def _spread(x, dim: Dim, mask, group, op: str):
    """(local x, local mask, the group whose ranks each hold a part of every slice or None,
    _Out's layout fields): for a DTensor x its local block (slices split when x is sharded along a
    reduced dim); for group= plain tensors as given."""
    lay, local, local_mask, group = _distributed.local_inputs(x, mask, group, op)
    if lay is not None:
        reduced = _reduced_dims(x.dim(), dim, op)
        split = lay.shard_dim is not None and (lay.shard_dim in reduced or x.dim() == 0)
        kept = [d for d in range(x.dim()) if d not in reduced]
        global_out = [x.shape[d] for d in kept]
        global_keep = [1 if d in reduced else x.shape[d] for d in range(x.dim())]
        shard = None if split or lay.shard_dim is None else lay.shard_dim
        shard_out = None if shard is None else kept.index(shard)
        return local, local_mask, lay.group if split else None, (lay, global_out, global_keep, shard_out, shard)
    return local, local_mask, group, (None,) * 5


def _row_stats(x: torch.Tensor, dim: Dim, mask, qs: list[float], backend, op: str, group=None,
               float64: bool = False, finish_in_float64: bool = True):
    """Per-slice (T_q rows, count, scale) from one pass over x, and the _Out of the result
    (float64: the pass itself over x in float64, whatever x's dtype; finish_in_float64: T_q and
    scale returned in float64, else in the kernel's accumulation dtype).

    Slices split across ranks (a DTensor sharded along a reduced dim, or group=): every rank
    computes its part's statistics and they are merged (lqkernels._distributed.merge_powsums),
    after one agreement on the arguments (every rank raises alike on bad input)."""
    x, mask, group, placed = _spread(x, dim, mask, group, op)
    if group is not None:
        _distributed.agree(group, op, {"qs": qs, "dim": dim, "kept shape": _kept_shape(x, dim, op),
                                       "mask": mask is not None, "dtype": str(x.dtype)},
                           check=lambda: _as_rows(x, dim, mask, op))
    x2d, mask2d, out_shape, keep_shape = _as_rows(x, dim, mask, op)
    if float64 and qs:
        x2d = x2d.double()
    with user_terms(op):
        chosen = _backend.resolve("row_powsum", backend, x.device)
        sums, count, scale = _backend.kernel("row_powsum", chosen)(x2d, mask2d, qs)
    # The O(rows) finalize runs in float64: scale^q and T^(1/q) leave float32's range for small q
    # even when the result is representable (‖1e-30 · 1‖_{0.1} over 10^4 entries is 1e10). The
    # merge across ranks rescales parts by (scale_r / scale)^q: float64 too.
    if finish_in_float64 or group is not None:
        sums, scale = sums.double(), scale.double()
    if group is not None:
        sums, count, scale = _distributed.merge_powsums(sums, count, scale, qs, group)
    return sums, count, scale, _Out(out_shape, keep_shape, *placed)


def _kept_shape(x: torch.Tensor, dim: Dim, op: str):
    """x's shape without the reduced dims (None when dim is invalid: the check then says why)."""
    try:
        reduced = _reduced_dims(x.dim(), dim, op)
    except (TypeError, ValueError):
        return None
    return [x.shape[d] for d in range(x.dim()) if d not in reduced]


def _relative_power_mean(t: torch.Tensor, d: torch.Tensor, r: float) -> torch.Tensor:
    """M_r / scale = (T_r / d)^{1/r}; r = inf gives 1 (M_inf is the scale itself)."""
    if r == math.inf:
        return torch.ones_like(t)
    return (t / d.clamp_min(1)).pow(1 / r)


def _index_or_zero(value: torch.Tensor, defined: torch.Tensor, nan_from: torch.Tensor) -> torch.Tensor:
    """`value` where the index is defined, 0 elsewhere (empty or all-zero slices), NaN rows kept."""
    return torch.where(nan_from.isnan(), nan_from, torch.where(defined, value, 0.0))


def lq_powsum(x: torch.Tensor, qs: Sequence[float], dim: Dim = None, *, mask: torch.Tensor | None = None,
              backend: str | None = None, group=None, dtype: torch.dtype | None = None) -> PowSums:
    """Σ|x|^q over `dim` for several exponents in one pass over x.

    Returns PowSums(sums, count): `sums` has shape (len(qs), *reduced shape) and dtype float32
    (float64 for float64 x): the sums of low-precision x overflow float16 long before float32.
    `count` (int64, the reduced shape) is the number of survivors d of each slice, which power
    means and masked indices need. At most 8 finite exponents > 0 per call (q = inf is
    `lq_norm(x, inf)`). A sum beyond the float32 range is inf, as it should be. dtype=torch.float64
    accumulates and returns the sums in float64 (through a float64 copy of lower-precision x):
    what a decision needs whose rounding must not move (a keep count from sums over millions of
    entries, whatever the thread count or the sharding).
    """
    op = "lq_powsum"
    if isinstance(qs, (int, float)):
        raise TypeError(f"{op}: qs must be a sequence of exponents, got {qs!r}")
    qs = [_check_exponent("q", q, op, allow_inf=False) for q in qs]
    _ops.check_exponents(qs, op)
    if dtype not in (None, torch.float32, torch.float64):
        raise TypeError(f"{op}: dtype must be None, torch.float32 or torch.float64, got {dtype!r}")
    t, count, scale, out = _row_stats(x, dim, mask, qs, backend, op, group, float64=dtype == torch.float64)
    q = torch.tensor(qs, dtype=t.dtype, device=t.device)[:, None]
    sums = torch.where(t == 0, 0.0, scale[None, :].pow(q) * t)  # 0 · inf never happens
    return PowSums(out.shaped(sums, dtype or _ops.acc_dtype(x.dtype), False, [len(qs)]),
                   out.shaped(count, torch.int64, False))


def lq_norm(x: torch.Tensor, q: float, dim: Dim = None, keepdim: bool = False, *,
            mask: torch.Tensor | None = None, backend: str | None = None, group=None) -> torch.Tensor:
    """(Σ|x|^q)^{1/q} over `dim` (the quasi-norm for 0 < q < 1; max |x| for q = inf).

    Same result as torch.linalg.vector_norm(x, q, dim, keepdim) where that is finite, in x's
    dtype; overflow-free for any finite x. Raises ValueError for q <= 0 or NaN.
    """
    op = "lq_norm"
    q = _check_exponent("q", q, op)
    qs = [] if q == math.inf else [q]
    # For q >= 1, T_q lies in [1, d] and scale · T_q^(1/q) in x's range (or is inf where the norm
    # is): float32 finishes it within an ulp. The float64 copies it saves cost ~50 us after a
    # memory-bound q = 2 pass over a 4096 x 4096 weight (~1.2 ms): small ops on cold caches.
    t, count, scale, out = _row_stats(x, dim, mask, qs, backend, op, group, finish_in_float64=q < 1)
    norm = scale if q == math.inf else scale * t[0].pow(1 / q)
    return out.shaped(norm, x.dtype, keepdim)


def pq_index(x: torch.Tensor, p: float = 0.5, q: float = 1.0, dim: Dim = None, *,
             mask: torch.Tensor | None = None, keepdim: bool = False,
             backend: str | None = None, group=None) -> torch.Tensor:
    """PQ Index I_{p,q} = 1 − M_p / M_q (Diao et al., ICLR 2023), 0 < p < q (q may be inf).

    In [0, 1 − d^{1/q − 1/p}], larger = sparser; d counts survivors of `mask`. Computed in one pass
    over x; rounding below 0 is clamped to 0. Raises ValueError unless 0 < p < q.
    """
    op = "pq_index"
    p = _check_exponent("p", p, op, allow_inf=False)
    q = _check_exponent("q", q, op)
    if not p < q:
        raise ValueError(f"pq_index: needs p < q, got p={p}, q={q}")
    qs = [p] if q == math.inf else [p, q]
    t, count, scale, out = _row_stats(x, dim, mask, qs, backend, op, group)
    mq = _relative_power_mean(t[-1], count, q)
    value = (1 - _relative_power_mean(t[0], count, p) / mq).clamp_min(0)
    index = _index_or_zero(value, scale > 0, scale)
    return out.shaped(index, x.dtype, keepdim)


def sparsity_index(x: torch.Tensor, q: float, dim: Dim = None, *, mask: torch.Tensor | None = None,
                   keepdim: bool = False, backend: str | None = None, group=None) -> torch.Tensor:
    """SI_q = d^{1/q − 1}·‖x‖_1/‖x‖_q = M_1 / M_q (the [T]-era sparsity index).

    For 0 < q < 1 it lies in [1, d^{1/q − 1}], larger = sparser; 0 for an all-zero, empty or fully
    masked slice. Raises ValueError for q <= 0 or NaN.
    """
    op = "sparsity_index"
    q = _check_exponent("q", q, op)
    qs = [1.0] if q in (1.0, math.inf) else [1.0, q]
    t, count, scale, out = _row_stats(x, dim, mask, qs, backend, op, group)
    mq = _relative_power_mean(t[-1], count, q)
    value = _relative_power_mean(t[0], count, 1.0) / mq
    index = _index_or_zero(value, scale > 0, scale)
    return out.shaped(index, x.dtype, keepdim)


def hoyer(x: torch.Tensor, dim: Dim = None, *, mask: torch.Tensor | None = None, keepdim: bool = False,
          backend: str | None = None, group=None) -> torch.Tensor:
    """Hoyer's sparsity (√d − ‖x‖_1/‖x‖_2)/(√d − 1) in [0, 1], larger = sparser.

    0 for a slice with at most one survivor or all zeros.
    """
    op = "hoyer"
    t, count, scale, out = _row_stats(x, dim, mask, [1.0, 2.0], backend, op, group)
    root_d = count.to(t.dtype).sqrt()
    value = ((root_d - t[0] / t[1].sqrt()) / (root_d - 1)).clamp(0, 1)
    index = _index_or_zero(value, (scale > 0) & (count > 1), scale)
    return out.shaped(index, x.dtype, keepdim)


def gini(x: torch.Tensor, dim: Dim = None, *, mask: torch.Tensor | None = None, keepdim: bool = False,
         backend: str | None = None, group=None) -> torch.Tensor:
    """Gini index (Hurley & Rickard): sort |x| ascending as c_1..c_d, then
    1 − 2 Σ_k (c_k/‖c‖_1)(d − k + ½)/d, in [0, 1), larger = sparser.

    Needs each slice in sorted order: the C++ kernel sorts per row; on CUDA the CUDA and Triton
    kernels reduce after torch's segmented sort. Slices split across ranks (a DTensor sharded
    along a reduced dim, or group=) are gathered whole on every rank first: a sorted order does
    not merge from parts the way power sums do.
    """
    op = "gini"
    x, mask, group, placed = _spread(x, dim, mask, group, op)
    if group is not None:
        _distributed.agree(group, op, {"dim": dim, "kept shape": _kept_shape(x, dim, op),
                                       "mask": mask is not None, "dtype": str(x.dtype)},
                           check=lambda: _as_rows(x, dim, mask, op))
    x2d, mask2d, out_shape, keep_shape = _as_rows(x, dim, mask, op)
    if group is not None:
        x2d, mask2d = _distributed.gather_columns(x2d, mask2d, group)
    with user_terms(op):
        chosen = _backend.resolve("row_gini", backend, x.device)
        index = _backend.kernel("row_gini", chosen)(x2d, mask2d)
    return _Out(out_shape, keep_shape, *placed).shaped(index, x.dtype, keepdim)
