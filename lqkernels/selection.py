"""Selection for pruning (public in `lqkernels.ops`): per-slice top-k masks with a different k per
slice, exact top-k over many tensors at once, and N:M masks.

Ranking, identical on every backend: scores are ranked by value (by |value| with magnitude=True,
without materialising |scores|), best first (largest=True) or worst first; among equal scores
(-0 == +0) the lowest index ranks first — for global selection, tensor order, then flat index.
So every result holds exactly k entries and is reproducible bit for bit. Only candidates (mask
True) are ranked: pruned weights never come back.

Bad input raises TypeError or ValueError naming the value: k < 0 or above the candidates of its
slice, k of the wrong shape or dtype, NaN among the candidates (naming the slice: its row-major
index over the dims other than `dim`), n > m, a length along `dim` not divisible by m, masks of
the wrong shape, dtype or device, tensors on different devices.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from lqkernels import _backend
from lqkernels._checks import check_mask, check_scores, user_terms

__all__ = ["topk_mask", "topk_threshold", "global_topk_masks", "nm_mask"]


def _check_dim(dim, ndim: int, op: str) -> int:
    rank = max(ndim, 1)
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{op}: dim must be an int, got {dim!r}")
    if not -rank <= dim < rank:
        raise ValueError(f"{op}: dim {dim} is out of range for a tensor with {ndim} dims")
    return dim % rank


def _check_flag(name: str, value, op: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be a bool, got {value!r}")
    return value


def _per_slice_k(k, slice_shape: list[int], device: torch.device, op: str) -> torch.Tensor:
    """k as an int64 tensor with one entry per slice (flattened)."""
    if isinstance(k, torch.Tensor):
        if k.dtype.is_floating_point or k.dtype.is_complex or k.dtype == torch.bool:
            raise TypeError(f"{op}: k must be an int or an integer tensor, got dtype {k.dtype}")
        if list(k.shape) != slice_shape:
            raise ValueError(f"{op}: k has shape {tuple(k.shape)}; it needs one entry per slice, "
                             f"shape {tuple(slice_shape)}")
        if k.device != device:
            raise ValueError(f"{op}: k is on {k.device} but scores are on {device}")
        return k.reshape(-1).to(torch.int64)
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{op}: k must be an int or an integer tensor, got {k!r}")
    if k < 0:
        raise ValueError(f"{op}: k must be >= 0, got {k}")
    return torch.full((math.prod(slice_shape),), k, dtype=torch.int64, device=device)


def _check_selectable(x2d: torch.Tensor, k: torch.Tensor, mask2d: torch.Tensor | None, op: str) -> None:
    """What the native kernels check as they go, for the Python backends (costs a pass over x)."""
    nan_rows = (x2d.isnan() & mask2d if mask2d is not None else x2d.isnan()).any(1).nonzero()
    if len(nan_rows):
        raise ValueError(f"{op}: scores contain NaN in slice {nan_rows[0, 0].item()}")
    candidates = mask2d.sum(1) if mask2d is not None else torch.full_like(k, x2d.shape[1])
    bad = ((k < 0) | (k > candidates)).nonzero()
    if len(bad):
        row = bad[0, 0].item()
        raise ValueError(f"{op}: k = {k[row].item()} for slice {row}, which has {candidates[row].item()} "
                         f"candidates (k must be in [0, {candidates[row].item()}])")


def _row_topk(scores, k, dim, mask, magnitude, largest, backend, op):
    """(mask, threshold) of the per-slice selection, shaped like scores / like one slice."""
    check_scores(scores, op, "scores")
    check_mask(mask, scores, op, of="scores")
    magnitude = _check_flag("magnitude", magnitude, op)
    largest = _check_flag("largest", largest, op)
    x = scores.reshape(1) if scores.dim() == 0 else scores
    m = mask.reshape(1) if mask is not None and scores.dim() == 0 else mask
    dim = _check_dim(dim, scores.dim(), op)
    moved = x.movedim(dim, -1)
    slice_shape = list(moved.shape[:-1])
    k_rows = _per_slice_k(k, slice_shape if scores.dim() else [], scores.device, op)
    x2d = moved.reshape(math.prod(slice_shape), moved.shape[-1])  # not -1: slices may be empty
    m2d = m.movedim(dim, -1).reshape(x2d.shape) if m is not None else None
    with user_terms(op):
        chosen = _backend.resolve("row_topk_mask", backend, scores.device)
        if chosen in ("torch", "triton"):
            _check_selectable(x2d, k_rows, m2d, op)
        out2d, threshold = _backend.kernel("row_topk_mask", chosen)(x2d, k_rows, m2d, magnitude, largest)
    out = out2d.reshape(moved.shape).movedim(-1, dim).reshape(scores.shape)
    return out, threshold.reshape(slice_shape if scores.dim() else [])


def topk_mask(scores: torch.Tensor, k, dim: int = -1, *, mask: torch.Tensor | None = None,
              magnitude: bool = False, largest: bool = True, backend: str | None = None) -> torch.Tensor:
    """Bool tensor of scores' shape with exactly k_i True entries in each slice along `dim`.

    k: an int, or an integer tensor with one entry per slice (scores' shape without `dim`), each
    in [0, candidates of its slice]. mask: bool, scores' shape; only True entries are candidates.
    magnitude=True ranks by |scores|; largest=False selects the smallest. Ties at the boundary:
    lowest index first (see the module docstring). dtypes float16, bfloat16, float32, float64.
    """
    return _row_topk(scores, k, dim, mask, magnitude, largest, backend, "topk_mask")[0]


def topk_threshold(scores: torch.Tensor, k, dim: int = -1, *, mask: torch.Tensor | None = None,
                   magnitude: bool = False, largest: bool = True, backend: str | None = None) -> torch.Tensor:
    """The k_i-th ranked score of each slice (|score| with magnitude=True), in scores' dtype and
    with scores' shape without `dim`; +inf for k_i = 0 (-inf when largest=False). Same arguments
    as topk_mask. With ties, `scores >= threshold` can hold more than k_i entries: topk_mask
    breaks them exactly."""
    return _row_topk(scores, k, dim, mask, magnitude, largest, backend, "topk_threshold")[1]


def global_topk_masks(tensors: Sequence[torch.Tensor], k: int, *, masks: Sequence[torch.Tensor] | None = None,
                      magnitude: bool = True, largest: bool = True, backend: str | None = None) -> list[torch.Tensor]:
    """One bool mask per tensor, exactly k True over all of them, ranked together without
    concatenating them (one k-th value over a whole model's weights: global pruning).

    tensors: one floating dtype, one device, any shapes. masks: None or one bool mask per tensor
    (candidates). Ties: tensor order, then flat index. k in [0, total candidates].
    """
    op = "global_topk_masks"
    if isinstance(tensors, torch.Tensor) or not len(tensors):
        raise TypeError(f"{op}: tensors must be a non-empty sequence of tensors")
    for i, t in enumerate(tensors):
        check_scores(t, op, f"tensors[{i}]")
        if t.dtype != tensors[0].dtype or t.device != tensors[0].device:
            raise ValueError(f"{op}: tensors[{i}] is {t.dtype} on {t.device}, tensors[0] is "
                             f"{tensors[0].dtype} on {tensors[0].device}; all must match")
    if masks is not None:
        if len(masks) != len(tensors):
            raise ValueError(f"{op}: got {len(masks)} masks for {len(tensors)} tensors")
        for i, (m, t) in enumerate(zip(masks, tensors)):
            check_mask(m, t, op, f"masks[{i}]", f"tensors[{i}]")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{op}: k must be an int, got {k!r}")
    magnitude = _check_flag("magnitude", magnitude, op)
    largest = _check_flag("largest", largest, op)
    with user_terms(op):
        chosen = _backend.resolve("global_topk_masks", backend, tensors[0].device)
        if chosen in ("torch", "triton"):
            flat = [t.reshape(1, -1) for t in tensors]
            flat_masks = [m.reshape(1, -1) for m in masks] if masks is not None else None
            for i, x in enumerate(flat):
                if (x.isnan() & flat_masks[i] if flat_masks else x.isnan()).any():
                    raise ValueError(f"{op}: tensors[{i}] contains NaN")
            total = sum(int(m.sum()) for m in masks) if masks is not None else sum(t.numel() for t in tensors)
            if not 0 <= k <= total:
                raise ValueError(f"{op}: k = {k} but the tensors hold {total} candidates (k must be in [0, {total}])")
        return list(_backend.kernel("global_topk_masks", chosen)(
            list(tensors), list(masks) if masks is not None else None, k, magnitude, largest))


def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4, dim: int = -1, *, magnitude: bool = True,
            backend: str | None = None) -> torch.Tensor:
    """N:M mask: keeps the n best-ranked of every m consecutive entries along `dim` (2:4 for
    sparse tensor cores). Ties: lowest index first. The length along `dim` must be divisible by m.
    """
    op = "nm_mask"
    check_scores(scores, op, "scores")
    for name, value in (("n", n), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{op}: {name} must be an int, got {value!r}")
    if not 0 <= n <= m or m < 1:
        raise ValueError(f"{op}: needs 0 <= n <= m and m >= 1, got n={n}, m={m}")
    dim = _check_dim(dim, scores.dim(), op)
    x = scores.reshape(1) if scores.dim() == 0 else scores
    if x.shape[dim] % m:
        raise ValueError(f"{op}: the length {x.shape[dim]} along dim {dim} is not divisible by m={m}")
    moved = x.movedim(dim, -1)
    groups = moved.reshape(-1, m)
    out = _row_topk(groups, n, -1, None, magnitude, True, backend, op)[0]
    return out.reshape(moved.shape).movedim(-1, dim).reshape(scores.shape)
