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

from lqkernels import _backend, _distributed
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


def _row_topk(scores, k, dim, mask, magnitude, largest, backend, op, group=None):
    """(mask, threshold) of the per-slice selection, shaped like scores / like one slice."""
    if group is not None or _distributed.is_dtensor(scores) or _distributed.is_dtensor(mask):
        return _spread_row_topk(scores, k, dim, mask, magnitude, largest, backend, op, group)
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


def _local_k(k, lay, dim: int, scores, op: str):
    """k for the local block of a DTensor whose slices are whole on every rank: an int; a DTensor
    placed like the slices (Shard of the same dim, or Replicate); or a plain tensor of the global
    slice shape, of which the block's part is taken."""
    slice_shard = None if lay.shard_dim is None else lay.shard_dim - (lay.shard_dim > dim)
    if _distributed.is_dtensor(k):
        k_layout = _distributed.layout(k, op, "k")
        if k_layout.mesh != lay.mesh or k_layout.shard_dim != slice_shard:
            raise ValueError(f"{op}: k is {k.placements[0]} on {k.device_mesh}; for scores {scores.placements[0]} "
                             f"on {scores.device_mesh} it must be "
                             f"{'Replicate()' if slice_shard is None else f'Shard({slice_shard})'} on the same mesh")
        return k.to_local()
    if not isinstance(k, torch.Tensor) or slice_shard is None or k.dim() <= slice_shard:
        return k  # an int, or a tensor every rank holds whole (checked against the slice shape)
    local = scores.to_local().shape[lay.shard_dim]
    start = _distributed.shard_offset(lay, scores.shape[lay.shard_dim], local, op)
    if k.shape[slice_shard] != scores.shape[lay.shard_dim]:
        raise ValueError(f"{op}: k has shape {tuple(k.shape)}; it needs one entry per slice, shape "
                         f"{tuple(s for i, s in enumerate(scores.shape) if i != dim)} (or pass k as a DTensor "
                         f"placed like the slices)")
    return k.narrow(slice_shard, start, local)


def _spread_row_topk(scores, k, dim, mask, magnitude, largest, backend, op, group):
    """_row_topk for DTensor scores or group=: slices whole on every rank go to the local kernel;
    slices split across ranks (sharded along `dim`, or group=) go to the distributed radix select
    (lqkernels._distributed.radix_topk), ties by position in the whole slice."""
    lay, local, local_mask, group = _distributed.local_inputs(scores, mask, group, op, of="scores")
    if lay is not None:
        dim = _check_dim(dim, scores.dim(), op)
        slice_shape = [n for i, n in enumerate(scores.shape) if i != dim] if scores.dim() else []
        if lay.shard_dim != dim or scores.dim() == 0:
            out, threshold = _row_topk(local, _local_k(k, lay, dim, scores, op), dim, local_mask, magnitude,
                                       largest, backend, op)
            slice_shard = None if lay.shard_dim is None else lay.shard_dim - (lay.shard_dim > dim)
            return (_distributed.wrap(out, lay, lay.shard_dim, scores.shape),
                    _distributed.wrap(threshold, lay, slice_shard, slice_shape))
        group, coordinate = lay.group, lay.coordinate
        if _distributed.is_dtensor(k):
            if _distributed.layout(k, op, "k").shard_dim is not None:
                raise ValueError(f"{op}: the slices are split across ranks, so k must be the same on every "
                                 f"rank: an int, a plain tensor or a replicated DTensor, got {k.placements[0]}")
            k = k.to_local()
    else:
        coordinate = torch.distributed.get_rank(group)
    prepared = {}

    def prepare():  # the single-process checks, run inside the agreement
        check_scores(local, op, "scores")
        check_mask(local_mask, local, op, of="scores")
        prepared["flags"] = (_check_flag("magnitude", magnitude, op), _check_flag("largest", largest, op))
        d = _check_dim(dim, local.dim(), op)
        x = local.reshape(1) if local.dim() == 0 else local
        moved = x.movedim(d, -1)
        k_rows = _per_slice_k(k, list(moved.shape[:-1]) if local.dim() else [], local.device, op)
        prepared.update(d=d, moved=moved, k=k_rows)

    common = {"k": k if isinstance(k, int) else _distributed.digest(k), "dim": dim, "magnitude": magnitude,
              "largest": largest, "mask": local_mask is not None,
              "slices": _slice_shape(local, dim)}
    ranks = _distributed.agree(group, op, common, {"coordinate": coordinate, "width": _width(local, dim),
                                                   "dtype": str(getattr(local, "dtype", ""))}, prepare)
    ranks.sort(key=lambda r: r["coordinate"])
    offset = sum(r["width"] for r in ranks if r["coordinate"] < coordinate)
    magnitude, largest = prepared["flags"]
    d, moved, k_rows = prepared["d"], prepared["moved"], prepared["k"]
    x2d = moved.reshape(k_rows.shape[0], moved.shape[-1])
    m2d = local_mask.reshape(1) if local_mask is not None and local.dim() == 0 else local_mask
    m2d = m2d.movedim(d, -1).reshape(x2d.shape) if m2d is not None else None
    piece = _distributed.Piece(x2d, m2d, True, lambda rows, cols: cols + offset)
    with user_terms(op):
        (out2d,), threshold = _distributed.radix_topk([piece], k_rows, magnitude, largest, group, op,
                                                      _common_dtype(ranks, op), want_threshold=op == "topk_threshold")
    out = out2d.reshape(moved.shape).movedim(-1, d).reshape(local.shape)
    slice_shape = list(moved.shape[:-1]) if local.dim() else []
    threshold = (threshold.to(local.dtype).reshape(slice_shape) if threshold is not None
                 else local.new_empty(slice_shape))
    if lay is None:
        return out, threshold
    return _distributed.wrap(out, lay, lay.shard_dim, scores.shape), _distributed.wrap(threshold, lay, None, slice_shape)


def _slice_shape(x, dim):
    """x's shape without dim (None when x or dim is invalid: the checks say why)."""
    try:
        return [n for i, n in enumerate(x.shape) if i != _check_dim(dim, x.dim(), "")]
    except (AttributeError, TypeError, ValueError):
        return None


def _width(x, dim) -> int:
    """x's length along dim (0 when x or dim is invalid: the checks say why)."""
    try:
        return x.reshape(1).shape[0] if x.dim() == 0 else x.shape[dim]
    except (AttributeError, IndexError, TypeError, RuntimeError):
        return 0


def _common_dtype(ranks: list[dict], op: str) -> torch.dtype:
    """The dtype every rank with data passed (ranking keys are the dtype's own bits, so ranks must
    agree on it); raised alike on every rank if they do not."""
    dtypes = sorted({r["dtype"] for r in ranks if r["dtype"]})
    if len(dtypes) > 1:
        raise TypeError(f"{op}: the ranks passed scores of different dtypes ({', '.join(dtypes)}); "
                        f"every rank must pass one dtype")
    return getattr(torch, dtypes[0].replace("torch.", "")) if dtypes else torch.float32


def topk_mask(scores: torch.Tensor, k, dim: int = -1, *, mask: torch.Tensor | None = None,
              magnitude: bool = False, largest: bool = True, backend: str | None = None,
              group=None) -> torch.Tensor:
    """Bool tensor of scores' shape with exactly k_i True entries in each slice along `dim`.

    k: an int, or an integer tensor with one entry per slice (scores' shape without `dim`), each
    in [0, candidates of its slice]. mask: bool, scores' shape; only True entries are candidates.
    magnitude=True ranks by |scores|; largest=False selects the smallest. Ties at the boundary:
    lowest index first (see the module docstring). dtypes float16, bfloat16, float32, float64.

    Sharded scores: a DTensor (any 1-D mesh, Shard or Replicate; mask a DTensor placed alike)
    gives a DTensor mask placed like scores; with `group=` (a process group, or True for the
    default one) each rank passes a column block of every slice (its part along `dim`, blocks in
    rank order), the same k and its mask block, and gets its block of the mask. Either way the
    mask is bit-identical to the single-process one (ties by position in the whole slice).
    """
    return _row_topk(scores, k, dim, mask, magnitude, largest, backend, "topk_mask", group)[0]


def topk_threshold(scores: torch.Tensor, k, dim: int = -1, *, mask: torch.Tensor | None = None,
                   magnitude: bool = False, largest: bool = True, backend: str | None = None,
                   group=None) -> torch.Tensor:
    """The k_i-th ranked score of each slice (|score| with magnitude=True), in scores' dtype and
    with scores' shape without `dim`; +inf for k_i = 0 (-inf when largest=False). Same arguments
    as topk_mask (sharded scores too: the thresholds of split slices are the same on every rank).
    With ties, `scores >= threshold` can hold more than k_i entries: topk_mask breaks them exactly."""
    return _row_topk(scores, k, dim, mask, magnitude, largest, backend, "topk_threshold", group)[1]


def _check_global(tensors, masks, k, magnitude, largest, op: str, allow_empty: bool = False):
    """global_topk_masks' argument checks; returns (magnitude, largest)."""
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, Sequence) or not (len(tensors) or allow_empty):
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
    return _check_flag("magnitude", magnitude, op), _check_flag("largest", largest, op)


def global_topk_masks(tensors: Sequence[torch.Tensor], k: int, *, masks: Sequence[torch.Tensor] | None = None,
                      magnitude: bool = True, largest: bool = True, backend: str | None = None,
                      group=None) -> list[torch.Tensor]:
    """One bool mask per tensor, exactly k True over all of them, ranked together without
    concatenating them (one k-th value over a whole model's weights: global pruning).

    tensors: one floating dtype, one device, any shapes. masks: None or one bool mask per tensor
    (candidates). Ties: tensor order, then flat index. k in [0, total candidates].

    Spread over ranks: DTensors (one 1-D mesh, each tensor Shard(d) or Replicate, masks DTensors
    placed alike) give DTensor masks placed like their tensors, ties ordered by the unsharded
    tensor list and flat index; with `group=` (a process group, or True for the default one) each
    rank passes its own tensors (possibly none) and k counts over the union, ties ordered by rank,
    then that rank's list, then flat index. Either way the result equals the single-process one on
    the concatenated list, and per rank only digit histograms travel (no tensor data).
    """
    op = "global_topk_masks"
    spread = any(_distributed.is_dtensor(t) for t in list(tensors) + list(masks or []))
    if group is not None or spread:
        return _spread_global_topk(tensors, k, masks, magnitude, largest, group, op)
    magnitude, largest = _check_global(tensors, masks, k, magnitude, largest, op)
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


def _global_flat(cols: torch.Tensor, local_shape, global_shape, shard_dim: int | None, offset: int) -> torch.Tensor:
    """Flat indices into a tensor of `global_shape` of the entries at flat indices `cols` of its
    local block (`local_shape`, starting at `offset` along `shard_dim`)."""
    if shard_dim is None or not len(local_shape):
        return cols
    index = torch.unravel_index(cols, tuple(local_shape))
    strides = torch.empty(global_shape, device="meta").stride()
    flat = torch.zeros_like(cols)
    for d, (i, stride) in enumerate(zip(index, strides)):
        flat += (i + (offset if d == shard_dim else 0)) * stride
    return flat


def _spread_global_topk(tensors, k, masks, magnitude, largest, group, op):
    """global_topk_masks over DTensors (the mesh's ranks) or over each rank's own tensors (group=)."""
    dtensors = group is None
    if dtensors:
        if not isinstance(tensors, Sequence) or not tensors or not all(_distributed.is_dtensor(t) for t in tensors):
            raise ValueError(f"{op}: mix of DTensors and plain tensors; pass every tensor (and mask) as a DTensor "
                             f"on one mesh, or plain tensors with group=")
        pairs = [_distributed.local_pair(t, None if masks is None else masks[i], op, f"tensors[{i}]")
                 for i, t in enumerate(tensors)]
        layouts = [p[0] for p in pairs]
        if any(lay.mesh != layouts[0].mesh for lay in layouts):
            raise ValueError(f"{op}: the tensors live on different device meshes; they must share one")
        group, coordinate = layouts[0].group, layouts[0].coordinate
        local = [p[1] for p in pairs]
        local_masks = None if masks is None else [p[2] for p in pairs]
        common = {"k": k, "magnitude": magnitude, "largest": largest, "masks": masks is not None,
                  "tensors": [(tuple(t.shape), str(t.placements[0]), str(t.dtype)) for t in tensors]}
        facts = {"coordinate": coordinate, "dtype": str(tensors[0].dtype)}
    else:
        if any(_distributed.is_dtensor(t) for t in list(tensors or []) + list(masks or [])):
            raise _distributed.group_with_dtensors(op)
        group = _distributed.check_group(group, op)
        coordinate, local, local_masks = torch.distributed.get_rank(group), tensors, masks
        common = {"k": k, "magnitude": magnitude, "largest": largest}
        facts = {"coordinate": coordinate, "dtype": str(tensors[0].dtype) if _nonempty(tensors) else "",
                 "total": sum(t.numel() for t in tensors) if _nonempty(tensors) else 0}
    flags = {}

    def check():
        flags["flags"] = _check_global(local, local_masks, k, magnitude, largest, op, allow_empty=not dtensors)
        if dtensors:  # where each block starts in its tensor (raises for a layout DTensor cannot have)
            flags["offsets"] = [0 if lay.shard_dim is None else _distributed.shard_offset(
                lay, full.shape[lay.shard_dim], t.shape[lay.shard_dim], op) for lay, t, full in zip(layouts, local, tensors)]

    ranks = sorted(_distributed.agree(group, op, common, facts, check), key=lambda r: r["coordinate"])
    magnitude, largest = flags["flags"]
    pieces, base = [], 0
    if dtensors:
        for i, (lay, t, full, offset) in enumerate(zip(layouts, local, tensors, flags["offsets"])):
            position = (lambda rows, cols, base=base, lay=lay, t=t, full=full, offset=offset:
                        base + _global_flat(cols, t.shape, full.shape, lay.shard_dim, offset))
            pieces.append(_distributed.Piece(t.reshape(1, -1), None if local_masks is None else
                                             local_masks[i].reshape(1, -1), lay.shard_dim is not None or coordinate == 0,
                                             position))
            base += full.numel()
    else:
        base = sum(r["total"] for r in ranks if r["coordinate"] < coordinate)
        for i, t in enumerate(local):
            pieces.append(_distributed.Piece(t.reshape(1, -1), None if local_masks is None else
                                             local_masks[i].reshape(1, -1), True,
                                             lambda rows, cols, base=base: base + cols))
            base += t.numel()
    device = _distributed.comm_device(group, [p.x2d for p in pieces])
    with user_terms(op):
        out, _ = _distributed.radix_topk(pieces, torch.tensor([k], device=device), magnitude, largest, group, op,
                                         _common_dtype(ranks, op))
    out = [m.reshape(t.shape) for m, t in zip(out, local)]
    if not dtensors:
        return out
    return [_distributed.wrap(m, lay, lay.shard_dim, full.shape) for m, lay, full in zip(out, layouts, tensors)]


def _nonempty(tensors) -> bool:
    return isinstance(tensors, Sequence) and len(tensors) > 0 and isinstance(tensors[0], torch.Tensor)


def _triton_nm_max_m() -> int:
    from lqkernels._triton.selection import NM_MAX_M  # loaded: the backend resolved to Triton
    return NM_MAX_M


def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4, dim: int = -1, *, magnitude: bool = True,
            backend: str | None = None) -> torch.Tensor:
    """N:M mask: keeps the n best-ranked of every m consecutive entries along `dim` (2:4 for
    sparse tensor cores). Ties: lowest index first. The length along `dim` must be divisible by m.
    A DTensor gives a DTensor placed alike, each rank masking its own block (no communication):
    sharded along `dim`, every block must start and end on a group boundary.
    """
    op = "nm_mask"
    if _distributed.is_dtensor(scores):
        lay = _distributed.layout(scores, op, "scores")
        local = scores.to_local()
        d = _check_dim(dim, scores.dim(), op)
        if lay.shard_dim == d and isinstance(m, int) and m > 0:  # n, m and lengths: the local call checks
            start = _distributed.shard_offset(lay, scores.shape[d], local.shape[d], op)
            if start % m or local.shape[d] % m:
                raise ValueError(f"{op}: scores are sharded along dim {d} in blocks that split groups of m={m}; "
                                 f"shard along another dim or into blocks of a multiple of m")
        return _distributed.wrap(nm_mask(local, n, m, d, magnitude=magnitude, backend=backend), lay,
                                 lay.shard_dim, scores.shape)
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
    magnitude = _check_flag("magnitude", magnitude, op)
    with user_terms(op):
        chosen = _backend.resolve("row_topk_mask", backend, scores.device)
    if chosen == "triton" and m <= _triton_nm_max_m():  # one pass, no per-group buffers
        out, first_nan = torch.ops.lqkernels.nm_mask_triton(groups, n, magnitude)
        if first_nan.item() < len(groups):
            raise ValueError(f"{op}: scores contain NaN in slice {first_nan.item()}")
    else:
        out = _row_topk(groups, n, -1, None, magnitude, True, backend, op)[0]
    return out.reshape(moved.shape).movedim(-1, dim).reshape(scores.shape)
