"""Modules: `SparseLinear`, an `nn.Linear` that keeps only the kept weights of a pruned layer.

    layer = SparseLinear.from_linear(linear)            # mask: prune's weight_mask, else weight != 0
    layer = SparseLinear.from_linear(linear, mask, format="bitmap")
    y = layer(x)                                        # == F.linear(x, W * mask, b)
    linear = layer.to_linear()

Storage formats (byte arithmetic per weight at density δ, dtype of s bytes; README "Sparse layers"):
    "bitmap"  packed values + 1 bit per weight: s·δ + 1/8. Pays off from ~10% sparsity on.
    "csr16"   packed values + a 16-bit column each: (s + 2)·δ. Smaller than the bitmap below
              δ = 1/16 (above ~94% sparsity); in_features <= 65536.
    "bsr"     32×32 tiles of W that hold any kept weight, each stored dense, plus one bit per
              weight for the gradient mask: for block-pruned weights at large batch (tl.dot on the
              GPU).
    "dense"   W * mask itself (plus a bitmap for the gradient mask): where no sparse kernel is
              faster (low sparsity).
    "auto"    picks one of these per layer, and, per call, computes densely where the dense product
              would be faster. On the CPU both choices are measured on the layer itself
              (calibrate=True, the default there: see "calibration" below), so that auto is never
              slower than dense on the machine it runs on; elsewhere, and with calibrate=False,
              they follow the cost model (COST_MODEL), fitted on other machines.
Rows may have any density each; the kernels balance work by kept values, not by rows.
"""
from __future__ import annotations

import functools
import glob
import math
import statistics
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from lqkernels import _backend, _ops, ops
from lqkernels._checks import in_user_terms, user_terms

__all__ = ["SparseLinear", "FORMATS", "pack_weight"]

FORMATS = ("bitmap", "csr16", "bsr", "dense")
_OP_OF_FORMAT = {"bitmap": "bitmap_linear", "csr16": "csr16_linear", "bsr": "bsr_linear"}
_INDEX_NAMES = {"bitmap": ("row_offsets", "bitmap"), "csr16": ("row_offsets", "columns"),
                "bsr": ("block_row_offsets", "block_columns", "block_mask"), "dense": ("bitmap",)}


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """(..., n) bool -> (..., ceil(n/32)) int32, bit j of word w = bits[..., 32w + j].

    Eight shifted ORs build each byte, and four bytes read as a little-endian int32 (x86, ARM and
    CUDA devices) are a word: 18x faster than one 32-way shift-and-sum in int64."""
    n = bits.shape[-1]
    words = -(-n // 32)
    if words == 0:  # no bytes to reinterpret
        return torch.zeros((*bits.shape[:-1], 0), dtype=torch.int32, device=bits.device)
    octets = F.pad(bits, (0, words * 32 - n)).view(torch.uint8).view(*bits.shape[:-1], words * 4, 8)
    packed = octets[..., 0].clone(memory_format=torch.contiguous_format)
    for j in range(1, 8):
        packed |= octets[..., j] << j
    return packed.view(torch.int32)


def _kept_per_row(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Kept entries per row: the survivor count of lq_powsum's one pass (torch's bool sum is 20x
    slower on the CPU)."""
    return ops.lq_powsum(w, [], 1, mask=mask).count


def _row_offsets(counts: torch.Tensor) -> torch.Tensor:
    return F.pad(counts.to(torch.int64).cumsum(0), (1, 0))


def pack_weight(weight: torch.Tensor, mask: torch.Tensor, format: str) -> dict[str, torch.Tensor]:
    """The tensors of `format` (lqkernels/_ops.py, "sparse linear") for W * mask.

    weight (out, in) floating point, mask (out, in) bool on weight's device. Returns a dict with
    "values" (weight's dtype) and the format's index tensors (names in `_INDEX_NAMES`).
    """
    w = weight.detach()
    if format == "bitmap":
        return {"values": w[mask], "row_offsets": _row_offsets(_kept_per_row(w, mask)), "bitmap": _pack_bits(mask)}
    if format == "csr16":
        if w.shape[1] > 65536:
            raise ValueError(f"pack_weight: format 'csr16' addresses at most 65536 in_features, got {w.shape[1]}")
        cols = mask.nonzero()[:, 1]
        return {"values": w[mask], "row_offsets": _row_offsets(_kept_per_row(w, mask)),
                "columns": torch.where(cols >= 32768, cols - 65536, cols).to(torch.int16)}
    if format == "bsr":
        b = _ops.BSR_BLOCK
        rows, cols = -(-w.shape[0] // b), -(-w.shape[1] // b)
        pad = (0, cols * b - w.shape[1], 0, rows * b - w.shape[0])
        tiles = F.pad(w * mask, pad).view(rows, b, cols, b).transpose(1, 2)
        tile_mask = F.pad(mask, pad).view(rows, b, cols, b).transpose(1, 2)
        kept = tile_mask.any(-1).any(-1)
        return {"values": tiles[kept].contiguous(), "block_row_offsets": _row_offsets(kept.sum(1)),
                "block_columns": kept.nonzero()[:, 1].to(torch.int32),
                "block_mask": _pack_bits(tile_mask[kept]).squeeze(-1)}
    if format == "dense":
        return {"values": (w * mask).contiguous(), "bitmap": _pack_bits(mask)}
    raise ValueError(f"pack_weight: unknown format {format!r}; choose one of {FORMATS}")


# ---- the cost model behind format="auto" ----------------------------------------------------
# Time of one call relative to the dense product at the same batch M, tabulated at the densities
# COST_DENSITIES and interpolated linearly between them (flat outside): measured relative costs,
# not a formula, because they are not linear in the density (a W that shrinks into the last-level
# cache speeds up by more than its bytes).
# device kind -> [(largest M, {format: relative cost at each of COST_DENSITIES}), ...]; a batch
# uses the first entry whose largest M holds it, each entry the slowest batch it covers.
#  * "cpu": a dense W larger than the last-level cache, so the dense product reads it from memory.
#    The full sweep of benchmarks/bench_sparse_linear.py on a 2-core AMD EPYC (Zen 5, 32 MB L3;
#    W 4096x4096 float32, 64 MB), the worst of two sweeps and of uniform and per-row density (each
#    sweep prints its table at the end; RESULTS.md "Sparse linear"): bitmap pays from ~10%
#    sparsity at batch 1, csr16 from ~85%.
#  * "cpu-cached": a dense W within the last-level cache (there the dense product runs from cache,
#    and a sparse call's fixed costs weigh more). The worst of three measurements: sweeps of W
#    1024x1024 and 2048x2048 on the same AMD EPYC, and the a + b·δ fit to the sweep on an Intel
#    Xeon whose L3 held the 64 MB W: bitmap from ~60% sparsity at batch 1, csr16 from ~90%.
#  * "cuda": fitted as a + b·δ to the H200 run (benchmarks/h200/gpu_sparse_linear.md: bf16,
#    14336x4096, sparsity 50-95%, batch 1-64): there cuBLAS reads W at ~2.9 TB/s while the decode
#    kernels reach 5-16% of copy bandwidth, so only csr16 at >= ~92% sparsity and batch <= 4 wins;
#    past batch 64 nothing unstructured was measured to win (bsr is modelled, never chosen by auto).
COST_DENSITIES = (0.01, 0.05, 0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0)


def _line(a: float, b: float) -> tuple[float, ...]:
    return tuple(a + b * d for d in COST_DENSITIES)


COST_MODEL = {
    "cpu": [  # value-walking kernels at M <= 8 (csr16: M = 1), transposed tiles above
            (1, {"bitmap": (0.22, 0.56, 0.21, 0.27, 0.38, 0.51, 0.57, 0.75, 1.04),
                 "csr16": (0.04, 0.10, 0.19, 0.53, 0.87, 1.19, 1.34, 1.51, 1.54)}),
            (8, {"bitmap": (0.14, 0.34, 0.35, 0.51, 0.53, 0.58, 0.63, 0.70, 1.99),
                 "csr16": (0.04, 0.12, 0.21, 0.52, 0.83, 1.07, 1.19, 1.33, 1.44)}),
            (64, {"bitmap": (0.11, 0.28, 0.27, 0.41, 0.73, 0.83, 1.01, 1.20, 1.15),
                  "csr16": (0.05, 0.11, 0.17, 0.40, 0.71, 1.06, 1.29, 1.49, 1.66)}),
            (math.inf, {"bitmap": (0.09, 0.18, 0.21, 0.47, 0.62, 0.74, 0.80, 0.85, 1.33),
                        "csr16": (0.05, 0.11, 0.18, 0.49, 0.88, 1.28, 1.55, 1.77, 2.33)})],
    "cpu-cached": [
            (1, {"bitmap": (6.41, 0.91, 0.85, 0.88, 1.00, 1.12, 1.18, 1.24, 1.30),
                 "csr16": (0.48, 0.73, 0.80, 2.29, 3.79, 5.29, 6.04, 6.79, 7.54)}),
            (8, {"bitmap": (1.31, 0.73, 0.76, 0.88, 1.00, 1.12, 1.18, 1.24, 2.75),
                 "csr16": (0.17, 0.41, 0.79, 2.29, 3.79, 5.29, 6.04, 6.79, 7.54)}),
            (64, {"bitmap": (0.69, 0.31, 0.38, 0.74, 1.10, 1.46, 1.64, 1.82, 2.00),
                  "csr16": (0.22, 0.28, 0.37, 1.01, 1.65, 2.29, 2.61, 2.93, 3.25)}),
            (math.inf, {"bitmap": (0.39, 0.45, 0.70, 1.70, 2.70, 3.70, 4.20, 4.70, 5.20),
                        "csr16": (0.14, 0.33, 0.60, 1.70, 2.80, 3.90, 4.45, 5.00, 5.55)})],
    "cuda": [(4, {"bitmap": _line(1.0, 10.0), "csr16": _line(0.27, 7.9)}),
             (16, {"bitmap": _line(2.1, 22.0), "csr16": _line(0.41, 17.0)}),
             (64, {"bitmap": _line(7.2, 81.0), "csr16": _line(0.9, 59.0)}),
             (math.inf, {"bsr": _line(0.1, 3.2)})],
}
# Below this predicted cost a sparse kernel is worth it (a 5% margin for the model's error).
SPARSE_WORTH_IT = 0.95
# Layers with fewer weights stay dense: a sparse call's fixed cost (dispatch, allocation, ~10-20 us)
# is then more than the whole dense product (a 10x1024 layer at 11% density ran 3x slower as csr16
# than dense on one CPU thread).
MIN_SPARSE_WEIGHTS = 1 << 16


def _last_level_cache_bytes() -> int:
    """Size of the CPU's largest cache (Linux sysfs), 0 where unknown."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    largest = 0
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            text = Path(path).read_text().strip()
            largest = max(largest, int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
        except (OSError, ValueError):
            continue
    return largest


# Read once at import: the forward consults it, and torch.compile must not trace file reads.
LAST_LEVEL_CACHE_BYTES = _last_level_cache_bytes()


def cost_model_kind(device_type: str, dense_bytes: int) -> str:
    """The COST_MODEL entry for a dense W of dense_bytes: on the CPU "cpu" when it outgrows the
    last-level cache, "cpu-cached" when it fits (or the cache size is unknown: the cautious one)."""
    if device_type != "cpu":
        return device_type
    return "cpu" if dense_bytes > LAST_LEVEL_CACHE_BYTES > 0 else "cpu-cached"


def predicted_cost(format: str, density: float, batch: int, device_type: str, dense_bytes: int = 0) -> float:
    """Predicted time of `format` relative to the dense product (1.0) for a layer whose dense W
    takes dense_bytes; inf if not modelled."""
    if format == "dense":
        return 1.0
    for largest, costs in COST_MODEL.get(cost_model_kind(device_type, dense_bytes), COST_MODEL["cpu-cached"]):
        if batch <= largest:
            table = costs.get(format)
            if table is None:
                return math.inf
            i = 1  # the grid interval holding density (a plain loop: torch.compile traces it)
            while i < len(COST_DENSITIES) - 1 and COST_DENSITIES[i] < density:
                i += 1
            (d0, d1), (c0, c1) = COST_DENSITIES[i - 1:i + 1], table[i - 1:i + 1]
            return c0 + (c1 - c0) * min(max((density - d0) / (d1 - d0), 0.0), 1.0)
    return math.inf


def choose_format(density: float, device_type: str, batches: Sequence[int] = (1,), weights: int = MIN_SPARSE_WEIGHTS,
                  dense_bytes: int = 0) -> str:
    """The format "auto" stores for a layer of `weights` weights (dense_bytes as a dense W): the
    one of least predicted time relative to dense summed over `batches` (default: decode, batch
    1), or "dense" where no sparse format is predicted to beat the dense product."""
    if weights < MIN_SPARSE_WEIGHTS:
        return "dense"
    costs = {f: sum(predicted_cost(f, density, b, device_type, dense_bytes) for b in batches) / len(batches)
             for f in ("bitmap", "csr16")}
    best = min(costs, key=costs.get)
    return best if costs[best] < SPARSE_WORTH_IT else "dense"


def check_batch_sizes(batch_sizes, op: str) -> tuple[int, ...] | None:
    """batch_sizes as a tuple (None stays None); TypeError / ValueError naming a bad value."""
    if batch_sizes is None:
        return None
    if isinstance(batch_sizes, (str, bytes)) or not isinstance(batch_sizes, Sequence):
        raise TypeError(f"{op}: batch_sizes must be a sequence of ints, got {batch_sizes!r}")
    sizes = tuple(batch_sizes)
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_CALIBRATION_BATCH
                        for b in sizes):
        raise ValueError(f"{op}: batch_sizes must be ints in [1, {MAX_CALIBRATION_BATCH}], at least one, "
                         f"got {batch_sizes!r}")
    return sizes


# ---- calibration: auto's choices measured on the machine that runs them ----------------------
# A cost table fitted on one CPU cannot promise anything on another (vector width, caches and
# memory differ: a table from AVX-512 machines picked a kernel 5x slower than dense on an AVX2
# one). With calibrate=True an auto layer on the CPU times its candidates on its own weights:
#  * when it is built: bitmap and csr16 against the dense product at batches 1 and 16 (random x);
#    it stores the format with the least total time relative to dense, or "dense";
#  * on the first call with a batch size in a new power-of-two range: its kernel against the dense
#    product on that call's x; the slower one is not used for that range again.
# Each measurement interleaves calls of the candidates (after a warm-up call each; at least
# CALIBRATION_ROUNDS rounds, more while under CALIBRATION_SECONDS) and compares medians; a sparse
# kernel must beat dense by CALIBRATION_MARGIN. The margin is wide because a CPU's speed for one
# kernel depends on what ran before it (on a 2-core VM whose last-level cache held the dense W, the
# dense product took 1.2 ms in a loop of its own and 2.5 ms between sparse calls): a kernel measured
# a little faster than dense in one setting can be a little slower in another.
# Results are shared by every layer of the same shape, dtype and density (to 1%) in the process,
# and keyed by the CPU capability and thread count they were measured with. Under torch.compile the
# measured decisions are used where they exist (timing cannot be traced), else the cost model.
CALIBRATION_ROUNDS = 5
CALIBRATION_SECONDS = 0.2
CALIBRATION_MARGIN = 0.85
CALIBRATION_BATCHES = (1, 16)  # the batch sizes a format is chosen for when a layer is built
MAX_CALIBRATION_BATCH = 4096  # batch_sizes beyond this would time a prefill-sized product per layer
_calibrated: dict[tuple, object] = {}


def _format_kernel(format: str, backend: str | None, device: torch.device):
    """The callable computing x · Wᵀ + b from `format`'s tensors on `device` (backend as in
    lqkernels._backend: argument > LQK_BACKEND > auto)."""
    op = _OP_OF_FORMAT[format]
    return _backend.kernel(op, _backend.resolve(op, backend, device))


def _time_calls(calls: dict[str, Callable[[], object]], rounds: int = CALIBRATION_ROUNDS) -> dict[str, float]:
    """Each of `calls`' time relative to the first's (the dense product), the larger of two ways of
    timing: interleaved (one call of each per round) and in blocks (`rounds` calls of one, then the
    next), medians after a warm-up call each; `rounds` rounds, up to 4x as many while under
    CALIBRATION_SECONDS. A kernel that runs between other layers' (interleaved) and one that runs
    again and again (blocks: its weights stay in cache) can rank differently; the choice must hold
    for both."""
    interleaved = {name: [] for name in calls}
    with torch.no_grad():
        for call in calls.values():
            call()
        deadline = time.perf_counter() + CALIBRATION_SECONDS
        for done in range(4 * rounds):
            if done >= rounds and time.perf_counter() > deadline:
                break
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                interleaved[name].append(time.perf_counter() - start)
        blocks = {}
        for name, call in calls.items():
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            blocks[name] = statistics.median(times)
    first = next(iter(calls))
    spread = {name: statistics.median(t) for name, t in interleaved.items()}
    return {name: max(spread[name] / spread[first], blocks[name] / blocks[first]) for name in calls}


def _calibration_key(*parts) -> tuple:
    return (_backend.cpu_capability(), torch.get_num_threads(), *parts)


def calibrated_format(weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None,
                      packs: dict[str, dict[str, torch.Tensor]] | None = None, density: float | None = None,
                      batches: Sequence[int] = CALIBRATION_BATCHES) -> str:
    """The format auto stores for W * mask on this CPU, measured at `batches` (see
    "calibration"): "bitmap", "csr16" or "dense". `packs` (optional) receives the packed tensors of
    the formats it built; `density` (optional) is the mask's, where the caller has it."""
    out_features, in_features = weight.shape
    if density is None:
        density = mask.float().mean().item() if mask.numel() else 1.0
    key = _calibration_key("format", weight.dtype, out_features, in_features, round(density, 2), tuple(batches))
    if key not in _calibrated:
        packs = {} if packs is None else packs
        dense = (weight.detach() * mask).contiguous()
        candidates = ("bitmap",) + (("csr16",) if in_features <= 65536 else ())
        relative = dict.fromkeys(("dense",) + candidates, 0.0)
        for batch in batches:
            x = torch.randn(batch, in_features, dtype=weight.dtype, device=weight.device)
            calls = {"dense": lambda: F.linear(x, dense, bias)}
            for fmt in candidates:
                packed = packs.setdefault(fmt, pack_weight(weight, mask, fmt))
                kernel = _format_kernel(fmt, None, weight.device)
                index = [packed[name] for name in _INDEX_NAMES[fmt]]
                calls[fmt] = functools.partial(kernel, x, packed["values"], *index, bias)
            for fmt, ratio in _time_calls(calls).items():
                relative[fmt] += ratio / (1.0 if fmt == "dense" else CALIBRATION_MARGIN)
        _calibrated[key] = min(relative, key=relative.get)
    return _calibrated[key]


class _KeptGradient(torch.autograd.Function):
    """Format "dense" in training: W as stored (0 where pruned) in the forward, and its gradient
    where the bitmap keeps weights, 0 elsewhere, in the backward, so pruned weights stay 0. Cheaper
    than W * mask, whose forward multiplies every weight (a float-by-bool product: ~40 ms per
    4096x4096 W on 2 cores) and whose backward multiplies again."""

    @staticmethod
    def forward(values, bitmap, in_features):
        return values.view_as(values)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.in_features = inputs[2]

    @staticmethod
    def backward(ctx, grad):
        (bitmap,) = ctx.saved_tensors
        return torch.where(_ops.bitmap_mask(bitmap, ctx.in_features), grad, 0), None, None


class SparseLinear(nn.Linear):
    """A drop-in `nn.Linear` computing y = x · (W * mask)ᵀ + b from a compressed W.

    Holds only the compressed weight: `values` (the kept weights, an nn.Parameter, trainable) and
    index buffers of the format (see lqkernels.nn); `weight` is a read-only dense view computed on
    demand. Gradients reach the kept weights only, so fine-tuning keeps pruned weights at 0.

    x: (*, in_features) of the layer's dtype (float16, bfloat16, float32, float64) and device; any
    leading shape (including empty batches) and any strides. Returns (*, out_features). A wrong
    in_features, dtype or device raises ValueError / TypeError naming both values.
    `backend` (None: LQK_BACKEND, else auto) selects the kernel as in lqkernels._backend.
    `calibrate` (format "auto" on the CPU): measure auto's choices on this layer instead of
    trusting the cost model (see "calibration" in lqkernels.nn).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 *, format: str = "bitmap", backend: str | None = None, calibrate: bool = True) -> None:
        """An empty layer (every weight pruned) in `format`; load_state_dict fills it."""
        nn.Module.__init__(self)  # not nn.Linear's: it would allocate and initialise a dense weight
        with user_terms("SparseLinear"):
            weight = torch.zeros(out_features, in_features, device=device, dtype=dtype)
            self._setup(weight, torch.zeros_like(weight, dtype=torch.bool),
                        weight.new_zeros(out_features) if bias else None, format, backend, calibrate)

    def _setup(self, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None, format: str,
               backend: str | None, calibrate: bool = True, batch_sizes: tuple[int, ...] | None = None) -> None:
        self.out_features, self.in_features = weight.shape
        self.backend = backend
        self.auto = format == "auto"
        self.calibrate = calibrate
        self._calibration = {}  # _measured_key -> whether the dense product runs (see _calibrate)
        stored, packs = format, {}
        if self.auto:
            density = mask.float().mean().item() if mask.numel() else 1.0
            stored = choose_format(density, weight.device.type, batch_sizes or (1,), weights=weight.numel(),
                                   dense_bytes=weight.numel() * weight.element_size())
            if self._calibrating(weight.device) and weight.numel() >= MIN_SPARSE_WEIGHTS:
                stored = calibrated_format(weight, mask, None if bias is None else bias.detach(), packs, density,
                                           batch_sizes or CALIBRATION_BATCHES)
            if stored == "csr16" and weight.shape[1] > 65536:
                stored = "bitmap"
        self.register_parameter("bias", None if bias is None else nn.Parameter(bias.detach().clone()))
        self._set_storage(stored, packs[stored] if stored in packs else pack_weight(weight, mask, stored))

    def _calibrating(self, device: torch.device) -> bool:
        """Whether auto's choices are measured: calibrate=True, on the CPU with the C++ kernels."""
        return self.auto and self.calibrate and device.type == "cpu" and _backend.native is not None

    def _set_storage(self, format: str, tensors: dict[str, torch.Tensor]) -> None:
        for name in set().union(*_INDEX_NAMES.values()):
            self._buffers.pop(name, None)
        self.format = format
        self.values = nn.Parameter(tensors["values"])
        for name in _INDEX_NAMES[format]:
            self.register_buffer(name, tensors[name])

    # ---- construction and conversion ----
    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: torch.Tensor | None = None, *, format: str = "auto",
                    backend: str | None = None, calibrate: bool = True,
                    batch_sizes: Sequence[int] | None = None) -> "SparseLinear":
        """Compresses `linear` (an nn.Linear, possibly pruned with torch.nn.utils.prune).

        mask: bool (out_features, in_features) on the weight's device; default: the layer's
        `weight_mask` (torch.nn.utils.prune) if it has one, else `weight != 0`. format: one of
        FORMATS or "auto". calibrate: with "auto" on the CPU, measure the choice of format (here,
        a few calls of each candidate) and of the dense product per batch range (on first use)
        instead of following the cost model. batch_sizes: the batch sizes "auto" chooses the
        stored format for (their times relative to dense, summed); default: 1 and 16 where
        measured, 1 in the cost model. Pass (1,) for a layer that serves decode steps only. A mask
        of another shape, dtype or device raises ValueError / TypeError.
        """
        op = "SparseLinear.from_linear"
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{op}: linear must be an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach()
        if mask is None:
            mask = getattr(linear, "weight_mask", None)
            mask = weight != 0 if mask is None else mask.detach() != 0
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"{op}: mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
        if mask.shape != weight.shape:
            raise ValueError(f"{op}: mask shape {tuple(mask.shape)} does not match weight shape {tuple(weight.shape)}")
        if mask.device != weight.device:
            raise ValueError(f"{op}: mask is on {mask.device} but the weight is on {weight.device}")
        if format not in FORMATS + ("auto",):
            raise ValueError(f"{op}: unknown format {format!r}; choose one of {FORMATS} or 'auto'")
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        if not isinstance(calibrate, bool):
            raise TypeError(f"{op}: calibrate must be True or False, got {calibrate!r}")
        batch_sizes = check_batch_sizes(batch_sizes, op)
        with user_terms(op):
            layer._setup(weight, mask, linear.bias, format, backend, calibrate, batch_sizes)
        return layer

    from_dense = from_linear

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear holding W * mask (the mask itself is not kept)."""
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                           device=self.values.device, dtype=self.values.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    to_dense = to_linear

    # ---- views ----
    def _index(self) -> list[torch.Tensor]:
        return [self._buffers[name] for name in _INDEX_NAMES[self.format]]  # 4x faster than getattr

    @property
    def weight(self) -> torch.Tensor:
        """W * mask as a dense (out_features, in_features) tensor (computed; differentiable in values)."""
        if self.format == "dense":
            return self.values
        index = self._index()
        return _ops._sparse_to_dense(self.format, self.values, index[0], index[1:], self.out_features,
                                     self.in_features)

    @property
    def mask(self) -> torch.Tensor:
        """The kept weights as a bool (out_features, in_features) tensor."""
        if self.format in ("bitmap", "dense"):
            return _ops.bitmap_mask(self.bitmap, self.in_features)
        if self.format == "csr16":
            return _ops.csr16_to_dense(torch.ones_like(self.values), self.row_offsets, self.columns,
                                       self.in_features) != 0
        ones = torch.ones(self.values.shape, dtype=torch.float32, device=self.values.device)
        return _ops.bsr_to_dense(ones, self.block_row_offsets, self.block_columns, self.block_mask,
                                 self.out_features, self.in_features) != 0

    @property
    def nnz(self) -> int:
        """Number of kept weights."""
        if self.format in ("bitmap", "csr16"):
            return self.values.numel()
        return int(self.mask.sum())

    @property
    def sparsity(self) -> float:
        total = self.out_features * self.in_features
        return 1.0 - self.nnz / total if total else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes held by the layer: values, index buffers and bias."""
        tensors = [self.values, *self._index()] + ([self.bias] if self.bias is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def resolved_backend(self, batch: int = 1) -> str:
        """The backend serving a call with `batch` rows ("dense" when the dense product runs)."""
        if self._dense_path(batch):
            return "dense"
        with user_terms("SparseLinear"):
            return _backend.resolve(_OP_OF_FORMAT[self.format], self.backend, self.values.device)

    def extra_repr(self) -> str:
        dense_bytes = self.out_features * self.in_features * self.values.element_size()
        text = (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, format={'auto:' if self.auto else ''}{self.format}, "
                f"sparsity={self.sparsity:.3f}, nbytes={self.nbytes} ({self.nbytes / max(dense_bytes, 1):.2f} "
                f"of dense), backend={self.resolved_backend()}")
        if self.values.device.type == "cpu" and _backend.native is not None:
            text += f", cpu={_backend.cpu_capability()}"
        if self._calibrating(self.values.device):
            text += ", calibrated"
        return text

    # ---- forward ----
    def _dense_path(self, batch: int) -> bool:
        """Whether a call with `batch` rows runs the dense product: measured for its batch range
        where calibrated, else as the cost model predicts."""
        if self.format == "dense":
            return True
        if not self.auto:
            return False
        if self.values.device.type == "cpu" and torch.is_grad_enabled() and self.values.requires_grad:
            # Training on the CPU: the dense path would densify W every step and send its gradient
            # back through the mask (a batch-16 step at 50% sparsity: 135 ms, against 49 ms through
            # the sparse kernels and their backward, and 82 ms for a masked dense layer).
            return False
        measured = self._calibration.get(self._measured_key(batch))
        if measured is not None:
            return measured
        weights = self.out_features * self.in_features
        return predicted_cost(self.format, self.values.numel() / max(weights, 1), batch, self.values.device.type,
                              weights * self.values.element_size()) >= SPARSE_WORTH_IT

    def _calibrate(self, x2d: torch.Tensor) -> None:
        """Measures, on x2d, whether this layer's kernel or the dense product is faster for the
        batch range of x2d's rows (shared with layers of the same shape, format and density)."""
        weights = self.out_features * self.in_features
        key = _calibration_key("batch", self.format, round(self.values.numel() / max(weights, 1), 2),
                               self.out_features, self.in_features, *self._measured_key(x2d.shape[0])[1:])
        if key not in _calibrated:
            kernel = _format_kernel(self.format, self.backend, self.values.device)
            x = x2d.detach()
            with torch.no_grad():
                dense = self.weight.detach()
                ratios = _time_calls({"dense": lambda: F.linear(x, dense, self.bias),
                                      "sparse": lambda: kernel(x, self.values, *self._index(), self.bias)})
            _calibrated[key] = ratios["sparse"] >= CALIBRATION_MARGIN
        self._calibration[self._measured_key(x2d.shape[0])] = _calibrated[key]

    def _measured_key(self, batch: int) -> tuple:
        """Where a measured decision for `batch` rows is kept: per device type, dtype and
        power-of-two batch range (a layer moved or cast is measured anew)."""
        return (self.values.device.type, self.values.dtype, batch.bit_length())

    def _dense_weight(self) -> torch.Tensor:
        """W * mask for the dense path of "auto". Outside training and compilation it is cached
        (until the values change, move or change dtype): densifying every call would cost a sizeable
        part of the product it replaces. The cache is the price of the dense path: it is held only
        by layers that have seen batches where dense wins, and is never saved."""
        if self.format == "dense" or torch.compiler.is_compiling() or (
                torch.is_grad_enabled() and self.values.requires_grad):
            return self.weight
        key = (self.values._version, self.values.data_ptr(), self.values.dtype, self.values.device)
        cached = self.__dict__.get("_dense_cache")
        if cached is None or cached[0] != key:
            cached = (key, self.weight.detach())
            self.__dict__["_dense_cache"] = cached
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Decode calls this per token with small x, so the Python around the kernel counts: one
        # lookup of `values` (a module attribute costs ~0.4 us), no reshape and view for 2-D x.
        values = self.values
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"SparseLinear expects a tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"SparseLinear: input's last dim must be in_features={self.in_features}, "
                             f"got shape {tuple(x.shape)}")
        if x.dtype != values.dtype:
            raise TypeError(f"SparseLinear: input dtype {x.dtype} does not match the layer's {values.dtype}")
        if x.device != values.device:
            raise ValueError(f"SparseLinear: input is on {x.device} but the layer is on {values.device}")
        x2d = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        if (self.auto and self.format != "dense" and self._measured_key(x2d.shape[0]) not in self._calibration
                and not torch.compiler.is_compiling() and self._calibrating(values.device)):
            self._calibrate(x2d)
        if self._dense_path(x2d.shape[0]):
            weight = self._dense_weight()
            if self.format == "dense" and torch.is_grad_enabled() and weight.requires_grad:
                weight = _KeptGradient.apply(weight, self.bitmap, self.in_features)  # pruned stay 0
            y = F.linear(x2d, weight, self.bias)
        else:
            extra = (self.out_features,) if self.format == "bsr" else ()
            try:  # not user_terms: a try block costs nothing per call until it raises
                kernel = _format_kernel(self.format, self.backend, values.device)
                y = kernel(x2d, values, *self._index(), self.bias, *extra)
            except (ValueError, TypeError, RuntimeError) as error:
                raise in_user_terms(error, "SparseLinear") from None
        return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)

    # ---- state_dict: the compressed form, loaded back exactly ----
    def get_extra_state(self) -> dict:
        return {"format": self.format, "auto": self.auto, "calibrate": self.calibrate,
                "in_features": self.in_features, "out_features": self.out_features}

    def set_extra_state(self, state: dict) -> None:
        self.auto = state["auto"]
        self.calibrate = state.get("calibrate", True)  # checkpoints from before calibration
        self._calibration = {}  # measured for the weights this layer held before

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # The incoming layer may hold another format and number of kept weights: take them from
        # the state, in this layer's dtype and device, before nn.Module copies the values in.
        extra = state_dict.get(prefix + "_extra_state")
        if extra is not None:
            if (extra["in_features"], extra["out_features"]) != (self.in_features, self.out_features):
                error_msgs.append(f"size mismatch for {prefix}: the state holds a "
                                  f"{extra['out_features']}x{extra['in_features']} layer, this one is "
                                  f"{self.out_features}x{self.in_features}")
                return
            names = ("values",) + _INDEX_NAMES[extra["format"]]
            if all(prefix + n in state_dict for n in names):
                device, dtype = self.values.device, self.values.dtype
                self._set_storage(extra["format"], {
                    n: torch.empty_like(state_dict[prefix + n], device=device,
                                        dtype=dtype if n == "values" else state_dict[prefix + n].dtype)
                    for n in names})
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
