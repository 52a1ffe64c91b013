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
