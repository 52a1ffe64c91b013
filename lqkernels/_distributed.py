"""Decisions over tensors spread across processes (torch.distributed): what the public ops run for
DTensor inputs and for their `group=` argument (README, "Pruning a sharded model").

Every lqkernels decision is built from pieces that merge, so no rank ever needs another rank's
weights:
  * power sums relative to the slice maximum (lqkernels._ops): one all-reduce of the maxima, then
    one of the sums rescaled to the common maximum, T = Σ_r T_r·(scale_r / scale)^q, the rule a
    process uses between its own blocks; overflow-free for any finite input;
  * top-k: a radix select over ranking keys (the dtype's own bits, whose unsigned order is the
    ranking); each pass all-reduces a histogram of the next digit of the entries still tied with
    the boundary (4096 counters per pass over whole tensors, whatever the data size; 4-bit digits
    per row when selecting in many rows), then each rank keeps those whose digit is the boundary's. Entries tied with the k-th key are ranked by their position in the
    unsharded data (a second select over positions), so masks are bit-identical to the
    single-process answer, ties included.

Collective discipline (no rank is left waiting): every op first gathers each rank's arguments and
local check outcome in one small all_gather_object; if any rank's check failed, or the ranks
disagree on an argument that must be common (k, q, dim, scope, dtype, ...), every rank raises the
same exception. After that every rank runs the same sequence of collectives whatever its data
(an empty shard contributes zeros), and data errors found there (NaN among candidates, k above
the candidates) are raised by every rank from the merged counts. A rank that never calls the op
is the one case left to the process group's timeout.
"""
from __future__ import annotations

import atexit
import hashlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.distributed as dist

try:  # torch >= 2.5 exposes DTensor publicly
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # pragma: no cover - a torch built without distributed support
    DTensor = Replicate = Shard = None

MAX_COUNTERS = 1 << 12  # histogram bins per select pass over all rows, while rows allow (see _digit_bits)


def is_dtensor(x) -> bool:
    return DTensor is not None and isinstance(x, DTensor)


def check_group(group, op: str):
    """The process group of a `group=` argument (dist.group.WORLD for True), checked."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"{op}: group= needs torch.distributed initialised (init_process_group)")
    if group is True:
        return dist.group.WORLD
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"{op}: group must be a torch.distributed ProcessGroup (or True for the "
                        f"default group), got {group!r}")
    if dist.get_rank(group) < 0:
        raise ValueError(f"{op}: this process is not a member of the group it passed")
    return group


# ---- layouts --------------------------------------------------------------------------------
@dataclass
class Layout:
    """Where a DTensor's local block lies: its 1-D mesh, group, this rank's coordinate, and the
    sharded dim (None when replicated)."""
    mesh: object
    group: object
    coordinate: int
    world: int
    shard_dim: int | None

    def same_as(self, other: "Layout") -> bool:
        return self.mesh == other.mesh and self.shard_dim == other.shard_dim


def layout(x, op: str, name: str = "x") -> Layout:
    """The layout of DTensor `x`: a 1-D mesh, placement Shard(d) or Replicate (else ValueError)."""
    mesh = x.device_mesh
    if mesh.ndim != 1:
        raise ValueError(f"{op}: {name} lives on a {mesh.ndim}-D device mesh; lqkernels takes DTensors on "
                         f"1-D meshes (flatten the mesh or redistribute)")
    placement = x.placements[0]
    if placement.is_shard():
        shard_dim = placement.dim % max(x.dim(), 1)
    elif placement.is_replicate():
        shard_dim = None
    else:
        raise ValueError(f"{op}: {name} has placement {placement}; lqkernels takes Shard(d) or Replicate() "
                         f"(redistribute a Partial tensor first)")
    return Layout(mesh, mesh.get_group(), mesh.get_local_rank(), mesh.size(), shard_dim)


def local_pair(x, mask, op: str, of: str = "x"):
    """(layout, local x, local mask) of a DTensor x and its mask, which must be a DTensor of x's
    global shape on the same mesh with the same placement."""
    lay = layout(x, op, of)
    if mask is None:
        return lay, x.to_local(), None
    if not is_dtensor(mask):
        raise ValueError(f"{op}: {of} is a DTensor, so mask must be one too (same mesh and placement), "
                         f"got a {type(mask).__name__}")
    if mask.shape != x.shape:
        raise ValueError(f"{op}: mask shape {tuple(mask.shape)} does not match {of} shape {tuple(x.shape)}")
    mask_layout = layout(mask, op, "mask")
    if not lay.same_as(mask_layout):
        raise ValueError(f"{op}: mask is {mask.placements[0]} on {mask.device_mesh}, {of} is "
                         f"{x.placements[0]} on {x.device_mesh}; they must match")
    return lay, x.to_local(), mask.to_local()


def local_inputs(x, mask, group, op: str, of: str = "x"):
    """(layout or None, local x, local mask, group or None) of a public op's input: a DTensor (and
    its mask, placed alike) as its local block; plain tensors as they are, with `group=` checked.
    Mixing the two forms raises ValueError."""
    if is_dtensor(x):
        if group is not None:
            raise group_with_dtensors(op)
        return (*local_pair(x, mask, op, of), None)
    if is_dtensor(mask):
        raise ValueError(f"{op}: mask is a DTensor but {of} is a {type(x).__name__}; pass both as DTensors")
    return None, x, mask, None if group is None else check_group(group, op)


def group_with_dtensors(op: str) -> ValueError:
    return ValueError(f"{op}: group= is for plain tensors split by the caller; a DTensor carries its own mesh")


def shard_offset(lay: Layout, global_size: int, local_size: int, op: str) -> int:
    """Where this rank's block starts along the sharded dim: DTensor's (and FSDP2's) torch.chunk
    split, blocks of ceil(n / world) in mesh order. A block of another size raises ValueError."""
    chunk = -(-global_size // lay.world)
    start = min(lay.coordinate * chunk, global_size)
    if local_size != min(chunk, global_size - start):
        raise ValueError(f"{op}: this rank holds {local_size} of {global_size} entries along dim {lay.shard_dim}, "
                         f"not the {min(chunk, global_size - start)} of an even (torch.chunk) split; "
                         f"redistribute the DTensor first")
    return start


def wrap(local: torch.Tensor, like: Layout, shard_dim: int | None, shape) -> torch.Tensor:
    """`local` as a DTensor on like's mesh, sharded on `shard_dim` (None: replicated), of global
    `shape` (uneven shards need it)."""
    shape = torch.Size(shape)
    placement = Replicate() if shard_dim is None else Shard(shard_dim)
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(local, like.mesh, [placement], run_check=False, shape=shape, stride=stride)


# ---- collectives -----------------------------------------------------------------------------
# gloo runs a collective on a worker thread of the process group, which lets go of the tensors a
# moment after the call returns. Had that thread the last reference, it would free the tensor's
# Python object itself; at interpreter exit, while the process group outlives
# destroy_process_group (a DeviceMesh or an FSDP model keeps it) and such a thread is caught
# mid-way, the process aborts ("terminate called without an active exception": 28 of 40 runs of a
# 4-rank script ending on all-reduces of temporaries; the README's sharded example about 1 in 25).
# So the collectives here return once the worker has let go of the CPU tensors they were given
# (microseconds; at most a second), and the caller frees them. CUDA tensors are left alone: NCCL's
# watchdog keeps its references until the GPU is done, which waiting here would turn into a
# synchronisation. Collectives lqkernels does not issue itself (FSDP's, all_gather_object's
# temporaries) can leave the same work behind; a process that ran ours therefore gives the
# workers 50 ms at exit, while the interpreter is still whole (atexit), to let go of what they
# hold. (The README example still aborted once in CI after the first part alone.)
LET_GO_SECONDS = 1.0
EXIT_SETTLE_SECONDS = 0.05
_settle_at_exit_registered = False


def _let_go(tensors) -> None:
    global _settle_at_exit_registered
    if not _settle_at_exit_registered:
        atexit.register(time.sleep, EXIT_SETTLE_SECONDS)
        _settle_at_exit_registered = True
    deadline = time.monotonic() + LET_GO_SECONDS
    for t in tensors:
        while t.device.type == "cpu" and t._use_count() > 1 and time.monotonic() < deadline:
            time.sleep(0)


def all_reduce(t: torch.Tensor, op=dist.ReduceOp.SUM, group=None) -> None:
    dist.all_reduce(t, op=op, group=group)
    _let_go([t])


def all_gather(parts: list[torch.Tensor], t: torch.Tensor, group=None) -> None:
    dist.all_gather(parts, t, group=group)
    _let_go([t, *parts])


# ---- agreement ------------------------------------------------------------------------------
def agree(group, op: str, common: dict, local: dict | None = None, check: Callable[[], None] | None = None) -> list[dict]:
    """One all_gather_object of every rank's `common` arguments (short ones as they are, long ones
    as a digest), `local` facts and the outcome of its `check()`; returns the ranks' `local`
    dicts. Raises the same exception on every rank if a check failed anywhere or the ranks'
    `common` differ."""
    error = None
    if check is not None:
        try:
            check()
        except (TypeError, ValueError) as e:
            error = (type(e).__name__, str(e))
    rank = dist.get_rank(group)
    shown = {key: _shown(value) for key, value in common.items()}
    gathered = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, (rank, shown, local or {}, error), group=group)
    for r, _, _, err in gathered:
        if err is not None:
            kind, message = err
            raise (TypeError if kind == "TypeError" else ValueError)(f"{message} (raised on rank {r}; every rank stops)")
    first_rank, first = gathered[0][:2]
    for r, theirs, _, _ in gathered[1:]:
        for key in first:
            if theirs.get(key) != first.get(key):
                mine, other = first[key], theirs.get(key)
                values = (f"rank {first_rank} passed {mine!r}, rank {r} passed {other!r}"
                          if not (_is_digest(mine) or _is_digest(other)) else f"ranks {first_rank} and {r} differ")
                raise ValueError(f"{op}: the ranks disagree on {key}: {values}; every rank must pass the same")
    return [entry[2] for entry in gathered]


_DIGEST = "sha256:"


def _shown(value):
    """`value` for agree()'s exchange: itself when its repr is short, else a digest of the repr."""
    text = repr(value)
    return value if len(text) <= 120 else _DIGEST + hashlib.sha256(text.encode()).hexdigest()[:32]


def _is_digest(value) -> bool:
    return isinstance(value, str) and value.startswith(_DIGEST)


def digest(t: torch.Tensor | None):
    """A small exact fingerprint of an integer tensor (shape, sum, position-weighted sum), for agree()."""
    if t is None or not isinstance(t, torch.Tensor):
        return t
    flat = t.reshape(-1).to(torch.int64).cpu()
    return tuple(t.shape), int(flat.sum()), int((flat * torch.arange(1, flat.numel() + 1)).sum())


# ---- power sums -------------------------------------------------------------------------------
def merge_powsums(sums: torch.Tensor, count: torch.Tensor, scale: torch.Tensor, qs: Sequence[float], group):
    """The row_powsum statistics (T_q rows, count, scale; float64) of slices split across the
    group's ranks, from each rank's statistics of its part: scale = the largest part scale,
    T_q = Σ_r T_q,r · (scale_r / scale)^q (a part at the maximum counts 1:1, so inf/inf stays 1),
    count = Σ count_r, NaN anywhere gives NaN."""
    nan = scale.isnan()
    top = torch.where(nan, 0.0, scale)
    all_reduce(top, op=dist.ReduceOp.MAX, group=group)
    q = torch.tensor(list(qs), dtype=torch.float64, device=sums.device)[:, None]
    factor = torch.where(scale == top, 1.0, (scale / top).pow(q))
    factor = torch.where(sums == 0, 0.0, factor)  # a part of zeros (or none) adds nothing, whatever its scale
    merged = torch.cat([sums * factor, count.double()[None], nan.double()[None]])
    all_reduce(merged, group=group)
    any_nan = merged[-1] > 0
    return merged[:-2], merged[-2].round().to(torch.int64), torch.where(any_nan, math.nan, top)


# ---- selection ----------------------------------------------------------------------------------
@dataclass
class Piece:
    """One rank's entries of a selection, viewed as (rows, n) rows of the selection: scores, the
    candidates among them (None: all), whether this rank counts them (a replicated tensor is
    counted by one rank only but masked by all) and `position(rows, cols)`, each entry's place in
    the unsharded order of its row (int64 >= 0, distinct), which breaks ties."""
    x2d: torch.Tensor
    candidates: torch.Tensor | None
    counted: bool
    position: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


_KEY_VIEWS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
              torch.float64: torch.int64}


def key_width(dtype: torch.dtype) -> int:
    """Bits of the ranking keys of `dtype`: its own width."""
    return torch.finfo(dtype).bits


def ranking_keys(x: torch.Tensor, magnitude: bool, largest: bool) -> torch.Tensor:
    """Keys in the integer dtype of x's width whose order as unsigned numbers is the ranking (best =
    largest): the value's own bits, negative values' inverted and the others' sign bit set (-0
    ranks with +0). Magnitudes have no sign bit: one XOR."""
    v = x.abs() if magnitude else x + 0  # abs(-0) and -0 + 0 are +0
    bits = v.view(_KEY_VIEWS[x.dtype])
    top = -(1 << (key_width(x.dtype) - 1))  # the sign bit
    keys = bits ^ top if magnitude else torch.where(bits < 0, ~bits, bits ^ top)
    return keys if largest else ~keys


def _digits(keys: torch.Tensor, shift: int, bits: int) -> torch.Tensor:
    return (keys >> shift) & ((1 << bits) - 1)  # arithmetic shift, masked: the raw bits


def _digit_bits(rows: int) -> int:
    """Bits per select pass: a histogram of at most MAX_COUNTERS over all rows, 4 to 12 bits."""
    return max(4, min(12, (MAX_COUNTERS // max(rows, 1)).bit_length() - 1))


def _boundary(hist: torch.Tensor, need: torch.Tensor):
    """Per row, from the merged digit histogram (rows, B): the digit holding the need-th best entry,
    how many entries have a better digit, and how many share it."""
    from_best = hist.flip(1).cumsum(1)
    step = (from_best < need[:, None]).sum(1).clamp_max(hist.shape[1] - 1)
    digit = hist.shape[1] - 1 - step
    tied = hist.gather(1, digit[:, None]).squeeze(1)
    better = from_best.gather(1, step[:, None]).squeeze(1) - tied
    return digit, better, tied


def _merged_histogram(parts, rows: int, width: int, group, device) -> torch.Tensor:
    """Σ over this rank's counted parts and over the ranks of bincount(row·2^width + digit)."""
    hist = torch.zeros(rows << width, dtype=torch.int64, device=device)
    for bins in parts:
        if bins.numel():
            hist += torch.bincount(bins, minlength=(rows << width) + 1)[:rows << width]
    all_reduce(hist, group=group)
    return hist.view(rows, 1 << width)


class _Alive:
    """Entries of one piece still tied with the boundary: rows, columns and keys (compacted)."""
    __slots__ = ("rows", "cols", "keys")

    def __init__(self, rows, cols, keys):
        self.rows, self.cols, self.keys = rows, cols, keys


def _select_alive(alive: list[_Alive], counted: list[bool], need: torch.Tensor, tied: torch.Tensor, high: int,
                  group, chosen: list[list]) -> tuple[torch.Tensor, torch.Tensor]:
    """Radix select over the keys' bits [0, high) of the alive entries (higher bits are equal among
    them): per row, the `need` best. Entries decided better are appended to chosen[i] as (rows,
    cols); `alive` is narrowed in place to the entries tied at the boundary. Returns (need left
    among the ties, the ties' count over all ranks)."""
    rows = need.shape[0]
    bits = _digit_bits(rows)
    for top in range(high, 0, -bits):
        if bool(((need == 0) | (need == tied)).all()):
            break  # every row's boundary is decided: none or all of its ties are taken
        shift = max(top - bits, 0)
        width = top - shift
        digits = [_digits(a.keys, shift, width) for a in alive]
        hist = _merged_histogram([a.rows * (1 << width) + d for a, d, c in zip(alive, digits, counted) if c],
                                 rows, width, group, need.device)
        digit, better, tied = _boundary(hist, need)
        need = need - better
        for i, (a, d) in enumerate(zip(alive, digits)):
            row_digit = digit[a.rows]
            win = d > row_digit
            chosen[i].append((a.rows[win], a.cols[win]))
            keep = d == row_digit
            alive[i] = _Alive(a.rows[keep], a.cols[keep], a.keys[keep])
    return need, tied


def _take_decided(alive: list[_Alive], need: torch.Tensor, tied: torch.Tensor, chosen: list[list]) -> torch.Tensor:
    """Appends the ties of rows that take all of them to `chosen`; returns the rows still split
    (0 < need < ties), whose ties alone stay in `alive`."""
    split = (need > 0) & (need < tied)
    for i, a in enumerate(alive):
        take = (need == tied)[a.rows] & (need > 0)[a.rows]
        chosen[i].append((a.rows[take], a.cols[take]))
        stay = split[a.rows]
        alive[i] = _Alive(a.rows[stay], a.cols[stay], a.keys[stay])
    return split


def comm_device(group, pieces: Sequence[torch.Tensor]) -> torch.device:
    """Where this group's collectives take tensors: the data's device, or without data on this
    rank the backend's (cuda for nccl)."""
    if pieces:
        return pieces[0].device
    backend = dist.get_backend(group)
    return torch.device("cuda", torch.cuda.current_device()) if "nccl" in str(backend) else torch.device("cpu")


def radix_topk(pieces: list[Piece], k: torch.Tensor, magnitude: bool, largest: bool, group, op: str,
               dtype: torch.dtype, want_threshold: bool = False):
    """Per row, the k best-ranked candidates over the pieces of every rank (rows are common to all
    pieces and ranks, and so is `dtype`; k is on the collectives' device). Returns (one bool mask
    per piece, the threshold per row or None): the k-th ranked value (|x| with magnitude) in
    float64, +inf (largest) or -inf for k = 0.

    The first pass reads each piece densely (its mask is written there); later passes see only
    the entries still tied with the boundary. Raises on every rank: NaN among any rank's
    candidates (naming the first such row), or k above a row's candidates over all ranks."""
    rows, device = k.shape[0], k.device
    # First pass, dense, merged with the checks: per row the histogram of every candidate's top
    # digit (its sum: the candidates), and the NaN candidates in one more column.
    high = key_width(dtype)
    width = min(_digit_bits(rows), high)
    shift = high - width
    row_base = (torch.arange(rows, device=device, dtype=torch.int32) << width)[:, None]
    overflow = rows << width  # the bin of entries that are not candidates (cut off the histogram)
    hist = torch.zeros(rows, (1 << width) + 1, dtype=torch.int64, device=device)
    digits, keys = [], []
    for p in pieces:
        keys.append(ranking_keys(p.x2d, magnitude, largest))
        digits.append(_digits(keys[-1], shift, width))
        if p.counted:
            bins = digits[-1] + row_base
            nan = p.x2d.isnan()
            if p.candidates is not None:
                bins.masked_fill_(~p.candidates, overflow)
                nan &= p.candidates
            hist[:, :-1] += torch.bincount(bins.reshape(-1), minlength=overflow + 1)[:overflow].view(rows, -1)
            hist[:, -1] += nan.sum(1)
    all_reduce(hist, group=group)
    hist, nans = hist[:, :-1], hist[:, -1]
    candidates = hist.sum(1)
    nan_rows = nans.nonzero()
    if len(nan_rows):
        raise ValueError(f"{op}: scores contain NaN in slice {int(nan_rows[0, 0])}")
    bad = ((k < 0) | (k > candidates)).nonzero()
    if len(bad):
        row = int(bad[0, 0])
        raise ValueError(f"{op}: k = {int(k[row])} for slice {row}, which has {int(candidates[row])} candidates "
                         f"over all ranks (k must be in [0, {int(candidates[row])}])")
    digit, better, tied = _boundary(hist, k)
    need = k - better
    masks, alive = [], []
    for p, d, key in zip(pieces, digits, keys):
        ok = (k > 0)[:, None] if p.candidates is None else (k > 0)[:, None] & p.candidates
        masks.append((d > digit[:, None]) & ok)
        r, c = ((d == digit[:, None]) & ok).nonzero(as_tuple=True)
        alive.append(_Alive(r, c, key[r, c]))
    del digits, keys
    counted = [p.counted for p in pieces]
    chosen = [[] for _ in pieces]
    need, tied = _select_alive(alive, counted, need, tied, shift, group, chosen)
    threshold = None
    if want_threshold:  # every tie holds the k-th ranked value; ranks without one offer -inf
        value = torch.full((rows,), -math.inf, dtype=torch.float64, device=device)
        for p, a in zip(pieces, alive):
            v = p.x2d[a.rows, a.cols].double()
            v = v.abs() if magnitude else v + 0.0
            value.scatter_reduce_(0, a.rows, v if largest else -v, "amax")
        all_reduce(value, op=dist.ReduceOp.MAX, group=group)
        threshold = torch.where(k > 0, value if largest else -value, math.inf if largest else -math.inf)
    split = _take_decided(alive, need, tied, chosen)
    if bool(split.any()):  # ties at the boundary: the lowest positions in the unsharded order first
        for i, (p, a) in enumerate(zip(pieces, alive)):
            alive[i] = _Alive(a.rows, a.cols, p.position(a.rows, a.cols))
        highest = torch.tensor([max([int(a.keys.max()) for a in alive if a.keys.numel()] + [1])], device=device)
        all_reduce(highest, op=dist.ReduceOp.MAX, group=group)
        for a in alive:
            a.keys = ~a.keys  # smaller position = larger key; the bits above the span are all ones
        need, tied = _select_alive(alive, counted, need.where(split, 0), tied.where(split, 0),
                                   int(highest).bit_length(), group, chosen)
        _take_decided(alive, need, tied, chosen)  # positions are distinct: nothing stays split
    for mask, picks in zip(masks, chosen):
        for r, c in picks:
            mask[r, c] = True
    return masks, threshold


def gather_columns(x2d: torch.Tensor, mask2d: torch.Tensor | None, group):
    """Every rank's (rows, n_r) part of the same rows, concatenated along the columns in rank order
    (for measures that need whole slices: gini's sorted order)."""
    world = dist.get_world_size(group)
    widths = [torch.zeros(1, dtype=torch.int64, device=x2d.device) for _ in range(world)]
    all_gather(widths, torch.tensor([x2d.shape[1]], device=x2d.device), group=group)
    widths = [int(w) for w in widths]
    pad = max(widths) - x2d.shape[1]

    def gathered(t: torch.Tensor) -> torch.Tensor:
        parts = [t.new_empty((t.shape[0], max(widths))) for _ in range(world)]
        all_gather(parts, torch.nn.functional.pad(t, (0, pad)), group=group)
        return torch.cat([p[:, :w] for p, w in zip(parts, widths)], 1)

    x = gathered(x2d)
    mask = gathered(mask2d.to(torch.uint8)).bool() if mask2d is not None else None
    return x, mask
