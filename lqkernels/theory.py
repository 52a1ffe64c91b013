"""Guarantees behind ℓq compressibility and PQI pruning (docs/method.md §2), computed with
lqkernels.ops (one pass of masked power sums per slice; no Python loop over rows).

Sources, and how sure we are of them:
  * [T] Yang, Wang, Ding, Yang, arXiv 2206.05604 (2022): the ℓq quasi-norm (0 < q < 1) as the
    measure of compressibility, the per-neuron keep counts and the adaptive allocation. Only [T]'s
    abstract is public: the forms here are *reconstructed* from the sparse-approximation results
    it builds on (best s-term approximation; Stechkin / Cohen–Dahmen–DeVore) and from the authors'
    public code of that period, as docs/method.md says. The s-term inequality itself is standard
    and is proved in the docstring below; what is reconstructed is how [T] uses it.
  * [S] Diao, Wang, Zhang, Yang, Ding, Tarokh, ICLR 2023, arXiv 2302.05601: PQ Index and its
    Theorem 2 (the keep bound), checked against the authors' slides and released code.

Conventions: `w` is any float tensor; `dim` and `mask` mean what they mean in lqkernels.ops (the
reduced dims, and the survivors of pruning: d counts survivors only). For per-neuron results view a
weight as (out, -1) and pass dim=1. Bounds come back as float64 tensors of the reduced shape, keep
counts as int64. Bad arguments raise ValueError / TypeError naming the value.
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
from torch import nn

from lqkernels import ops
from lqkernels._checks import check_mask, check_scores, user_terms

__all__ = ["s_term_bound", "keep_count_for_tolerance", "pqi_keep_bound", "pqi_keep_count",
           "allocate_two_layer", "certify", "Certificate", "ACTIVATION_LIPSCHITZ"]

# Float32 power sums carry ~1e-7 relative error, amplified by the exponents below; a count that is
# an integer in exact arithmetic (a one-hot row's bound is exactly 1) must not round up past it.
_COUNT_SLACK = 1e-6


# ---- argument checks (shared with lqkernels.prune) -------------------------------------------
def check_number(name: str, value, op: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """`value` as a finite float in [low, high] (open ends on request), else TypeError/ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: {name} must be a number, got {value!r}")
    value = float(value)
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or below or above:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = (f"{'(' if low_open or low is None else '['}{lo}, "
                    f"{hi}{')' if high_open or high is None else ']'}")
        raise ValueError(f"{op}: {name} must be finite and in {interval}, got {value}")
    return value


def check_pq(p, q, op: str) -> tuple[float, float]:
    """0 < p < q < inf, as PQ Index and Theorem 2 need."""
    p = check_number("p", p, op, low=0.0, low_open=True)
    q = check_number("q", q, op, low=0.0, low_open=True)
    if not p < q:
        raise ValueError(f"{op}: needs p < q, got p={p:g}, q={q:g}")
    return p, q


def check_eta(eta, op: str) -> float:
    return check_number("eta", eta, op, low=0.0)


def input_norm_exponent(input_norm, op: str) -> float:
    """The exponent r of the tail ‖w − w_s‖_r that the input norm pairs with (Hölder)."""
    if input_norm in ("inf", math.inf):
        return 1.0  # |(w − w_s)ᵀx| ≤ ‖x‖_∞ ‖w − w_s‖_1
    if input_norm in ("2", 2, 2.0):
        return 2.0  # |(w − w_s)ᵀx| ≤ ‖x‖_2 ‖w − w_s‖_2
    raise ValueError(f"{op}: input_norm must be 'inf' or '2', got {input_norm!r}")


# ---- best s-term approximation ------------------------------------------------------------
def _check_weight(w, mask, op: str) -> None:
    """w a float tensor and mask None or a bool tensor of its shape and device, named as the caller
    names them (the ops below would call them x and mask)."""
    check_scores(w, op, "w")
    check_mask(mask, w, op, of="w")


def s_term_bound(w: torch.Tensor, s, q: float = 0.5, r: float = 2.0, dim=None, *,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Upper bound of the best s-term approximation error: ‖w − w_s‖_r ≤ s^{1/r − 1/q}·‖w‖_q.

    w_s keeps the s largest |w_i| of each slice (survivors of `mask` only); 0 < q < r ≤ inf.
    Standard (Stechkin; DeVore 1998; Foucart–Rauhut Prop. 2.3), used by [T]: with |w|_(k) the k-th
    largest magnitude, |w|_(k) ≤ k^{-1/q}‖w‖_q, so the tail's ℓr norm is at most
    ‖w‖_q·(Σ_{k>s} k^{-r/q})^{1/r} ≤ ‖w‖_q·s^{1/r−1/q} (the constant is 1). No assumption on w.
    s: an int or an integer tensor broadcastable to the reduced shape; s = 0 gives ‖w‖_q (the whole
    vector is the tail, and ‖w‖_r ≤ ‖w‖_q). Returns float64.
    """
    op = "s_term_bound"
    q = check_number("q", q, op, low=0.0, low_open=True)
    r = math.inf if r in (math.inf, "inf") else check_number("r", r, op, low=0.0, low_open=True)
    if not q < r:
        raise ValueError(f"{op}: needs q < r, got q={q:g}, r={r:g}")
    _check_weight(w, mask, op)
    with user_terms(op):
        norm = ops.lq_norm(w, q, dim, mask=mask).double()
    s = _as_counts(s, norm, op)
    if (s < 0).any():
        raise ValueError(f"{op}: s must be >= 0, got {s.min().item()}")
    rate = s.double().pow(1 / r - 1 / q)  # 1/inf = 0
    return torch.where(s == 0, norm, norm * rate)


def _as_counts(s, like: torch.Tensor, op: str) -> torch.Tensor:
    if isinstance(s, torch.Tensor):
        if s.dtype.is_floating_point or s.dtype.is_complex or s.dtype == torch.bool:
            raise TypeError(f"{op}: s must be an int or an integer tensor, got dtype {s.dtype}")
        return s.to(like.device)
    if isinstance(s, bool) or not isinstance(s, int):
        raise TypeError(f"{op}: s must be an int or an integer tensor, got {s!r}")
    return torch.tensor(s, device=like.device)


def keep_count_for_tolerance(w: torch.Tensor, tolerance: float, q: float = 0.5, dim=None, *,
                             lipschitz: float = 1.0, input_bound: float = 1.0, input_norm="inf",
                             mask: torch.Tensor | None = None) -> torch.Tensor:
    """How many of its largest weights each slice (a neuron, with dim=1 on (out, -1)) must keep
    so that the neuron's output changes by at most `tolerance`, by the s-term bound ([T], §2).

    Assumes a neuron σ(wᵀx + b) with σ L-Lipschitz (`lipschitz`) and inputs with ‖x‖ ≤ B
    (`input_bound`) in the norm `input_norm`: "inf" (‖x‖_∞ ≤ B; then
    |σ(wᵀx) − σ(w_sᵀx)| ≤ L·B·‖w − w_s‖_1 ≤ L·B·‖w‖_q·s^{1−1/q}, needs q < 1) or "2" (‖x‖_2 ≤ B;
    the tail in ℓ2, ≤ L·B·‖w‖_q·s^{1/2−1/q}, needs q < 2). Inverting gives
    s = ceil((L·B·‖w‖_q/ε)^{1/(1/q − 1/r)}), r = 1 or 2, clamped to [0, d]; s = 0 when
    L·B·‖w‖_q ≤ ε (dropping the whole neuron is then within tolerance). Sufficient, not
    necessary: the true minimal count (from the sorted tail) is never larger. The bias is kept.
    Returns int64 counts of the reduced shape. `mask`: survivors (pruned weights are already gone,
    d counts survivors; the guarantee is relative to the masked neuron).
    """
    op = "keep_count_for_tolerance"
    tolerance = check_number("tolerance", tolerance, op, low=0.0, low_open=True)
    r = input_norm_exponent(input_norm, op)
    q = check_number("q", q, op, low=0.0, low_open=True, high=r, high_open=True)
    lipschitz = check_number("lipschitz", lipschitz, op, low=0.0, low_open=True)
    input_bound = check_number("input_bound", input_bound, op, low=0.0)
    _check_weight(w, mask, op)
    with user_terms(op):
        sums, count = ops.lq_powsum(w, [q], dim, mask=mask)
    return tolerance_count_from_sums(sums[0], count, tolerance, q, lipschitz * input_bound, r)


def tolerance_count_from_sums(sum_q: torch.Tensor, count: torch.Tensor, tolerance: float, q: float,
                              scale: float, r: float) -> torch.Tensor:
    """keep_count_for_tolerance from S_q = Σ|w|^q over survivors and their count; scale = L·B."""
    scaled = scale * sum_q.double().pow(1 / q)  # L·B·‖w‖_q
    need = (scaled / tolerance).pow(1 / (1 / q - 1 / r))
    s = torch.where(scaled <= tolerance, 0.0, torch.ceil(need))
    return torch.minimum(s, count.double()).to(torch.int64)


# ---- PQ Index keep bound (Theorem 2 of [S]) ----------------------------------------------------
def keep_bound_from_sums(sum_p: torch.Tensor, sum_q: torch.Tensor, p: float, q: float,
                         eta: float) -> torch.Tensor:
    """Theorem 2 from power sums S_r = Σ|w|^r over survivors: (1+η)^{−q/(q−p)}·(‖w‖_p/‖w‖_q)^{pq/(q−p)}
    = (1+η)^{−q/(q−p)}·(S_p^q / S_q^p)^{1/(q−p)}, in logs (no overflow for p close to q), float64;
    0 where S_p = 0 (an all-zero or empty slice needs no weight). Power sums add over tensors, so
    lqkernels.prune's global scope sums them per tensor instead of concatenating weights."""
    sp, sq = sum_p.double(), sum_q.double()
    log_ratio = (q * sp.clamp_min(1e-300).log() - p * sq.clamp_min(1e-300).log()) / (q - p)
    bound = torch.exp(log_ratio - q / (q - p) * math.log1p(eta))
    return torch.where(sp > 0, bound, 0.0)


def ceil_count(bound: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """ceil(bound) as int64 in [0, count], after a relative 1e-6 slack for rounding (see top)."""
    return torch.ceil(bound * (1 - _COUNT_SLACK)).clamp_min(0).minimum(count.double()).to(torch.int64)


def pqi_keep_bound(w: torch.Tensor, p: float = 0.5, q: float = 1.0, eta: float = 0.0, dim=None, *,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """[S] Theorem 2: a lower bound on how many of its largest entries a slice must keep.

    Let M_r hold the r largest |w_i| and η_r the smallest number with
    Σ_{i∉M_r}|w_i|^p ≤ η_r·Σ_{i∈M_r}|w_i|^p. Then r ≥ d·(1+η_r)^{−q/(q−p)}·(1 − I_{p,q}(w))^{pq/(q−p)},
    d the survivors; d cancels against I_{p,q}, leaving (1+η)^{−q/(q−p)}·(‖w‖_p/‖w‖_q)^{pq/(q−p)}
    (what this returns, float64, reduced shape). So any r whose tail has relative ℓp mass ≤ η is at
    least this; for (p, q) = (0.5, 1) the bound is d·(1+η)^{-2}·(1 − PQI). Assumes 0 < p < q < inf,
    η ≥ 0; nothing about w (proof: Hölder on M_r, then the η condition). With p = 1, η bounds a
    neuron's relative pre-activation error: |(w − ŵ)ᵀx| ≤ ‖x‖_∞·η·‖w_kept‖_1.
    An all-zero or fully masked slice gives 0 (the authors' code sets PQI = 0 there, which would
    give d; every r ≥ 0 meets the η condition of an all-zero slice, so 0 is the true bound).
    """
    op = "pqi_keep_bound"
    p, q = check_pq(p, q, op)
    eta = check_eta(eta, op)
    _check_weight(w, mask, op)
    with user_terms(op):
        sums, _ = ops.lq_powsum(w, [p, q], dim, mask=mask)
    return keep_bound_from_sums(sums[0], sums[1], p, q, eta)


def pqi_keep_count(w: torch.Tensor, p: float = 0.5, q: float = 1.0, eta: float = 0.0, dim=None, *,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """ceil(pqi_keep_bound) as int64 in [0, d] (the released code's r = ceil(...)); never above the
    true minimal keep count for η (the bound's rounding is absorbed, see `ceil_count`)."""
    op = "pqi_keep_count"
    p, q = check_pq(p, q, op)
    eta = check_eta(eta, op)
    _check_weight(w, mask, op)
    with user_terms(op):
        sums, count = ops.lq_powsum(w, [p, q], dim, mask=mask)
    return ceil_count(keep_bound_from_sums(sums[0], sums[1], p, q, eta), count)


# ---- adaptive allocation for a two-layer network ([T]) ----------------------------------------
def allocate_two_layer(a: torch.Tensor, w: torch.Tensor, total: int, q: float = 0.5, *,
                       input_norm="inf", mask: torch.Tensor | None = None) -> torch.Tensor:
    """How many weights each hidden neuron j of f(x) = Σ_j a_j σ(w_jᵀx) keeps, `total` in all.

    [T] (reconstructed, docs/method.md §2): by the s-term bound the output error is at most
    L·B·Σ_j |a_j|·‖w_j‖_q·s_j^{−α}, α = 1/q − 1 for ‖x‖_∞ ≤ B (input_norm="inf", q < 1) or
    1/q − 1/2 for ‖x‖_2 ≤ B ("2", q < 2). Minimising it under Σ s_j = S (Lagrange, s_j real) gives
    s_j ∝ (|a_j|·‖w_j‖_q)^{1/(1+α)}. Here each s_j is also capped at the neuron's survivors d_j
    (water-filling: s_j = min(c_j·λ, d_j) with λ solving Σ s_j = S, found from the sorted
    breakpoints d_j/c_j in one vectorised pass), then rounded to integers by largest remainder so
    the counts sum to exactly min(total, Σ d_j).

    a: (hidden,) or (outputs, hidden) output weights (|a_j| is summed over outputs); w: (hidden, ...)
    first-layer weights, one row per neuron; mask: survivors of w. Returns int64 (hidden,).
    """
    op = "allocate_two_layer"
    r = input_norm_exponent(input_norm, op)
    q = check_number("q", q, op, low=0.0, low_open=True, high=r, high_open=True)
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"{op}: a must be a tensor, got {type(a).__name__}")
    _check_weight(w, mask, op)
    if w.dim() < 2:
        raise ValueError(f"{op}: w must have one row per hidden neuron (dim >= 2), got shape {tuple(w.shape)}")
    hidden = w.shape[0]
    a_abs = a.detach().abs().double()
    a_abs = a_abs.sum(0) if a_abs.dim() == 2 else a_abs
    if a_abs.shape != (hidden,):
        raise ValueError(f"{op}: a has shape {tuple(a.shape)}; needs (hidden,) or (outputs, hidden) "
                         f"with hidden = {hidden} (w's rows)")
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError(f"{op}: total must be an int >= 0, got {total!r}")
    w2d = w.detach().reshape(hidden, -1)
    with user_terms(op):
        sums, count = ops.lq_powsum(w2d, [q], 1, mask=mask.reshape(hidden, -1) if mask is not None else None)
    alpha = 1 / q - 1 / r
    weight = (a_abs.to(sums.device) * sums[0].double().pow(1 / q)).pow(1 / (1 + alpha))
    cap = count.double()
    weight = torch.where(cap > 0, weight, 0.0)
    budget = min(total, int(count.sum()))
    if budget == 0 or not (weight > 0).any():
        return _spread_evenly(cap, budget)
    real = _water_fill(weight, cap, float(budget))
    return _round_to_total(real, cap, budget)


def _water_fill(c: torch.Tensor, cap: torch.Tensor, budget: float) -> torch.Tensor:
    """min(c·λ, cap) with Σ = budget (≤ Σ cap over c > 0), vectorised over the breakpoints."""
    active = c > 0
    t = torch.where(active, cap / c.clamp_min(1e-300), math.inf)  # λ at which each row saturates
    order = torch.argsort(t)
    t_s, c_s, cap_s = t[order], c[order], cap[order]
    # f(λ) at λ = t_(k): rows 0..k saturated (Σ cap), the rest at c·λ.
    saturated = torch.cumsum(torch.where(active[order], cap_s, 0.0), 0)
    rest = c_s.sum() - torch.cumsum(c_s, 0)
    f = saturated + rest * torch.where(torch.isinf(t_s), 0.0, t_s)
    k = int(torch.searchsorted(f, torch.tensor([budget], dtype=f.dtype))[0])  # first breakpoint with f ≥ budget
    done = saturated[k - 1] if k > 0 else torch.tensor(0.0, dtype=f.dtype)
    left = rest[k - 1] if k > 0 else c_s.sum()
    lam = (budget - done) / left if left > 0 else torch.tensor(math.inf, dtype=f.dtype)
    return torch.minimum(c * lam, cap)


def _round_to_total(real: torch.Tensor, cap: torch.Tensor, budget: int) -> torch.Tensor:
    """Floors, then one more for the rows with the largest remainders until the sum is `budget`."""
    base = torch.floor(real + 1e-9).minimum(cap)
    short = budget - int(base.sum())
    if short > 0:
        room = base < cap
        frac = torch.where(room, real - base, -1.0)
        extra = ops.topk_mask(frac, short, 0, mask=room)
        base = base + extra.double()
    return base.to(torch.int64)


def _spread_evenly(cap: torch.Tensor, budget: int) -> torch.Tensor:
    """With nothing to weigh rows by (a = 0 or w = 0): budget spread in proportion to survivors."""
    if budget == 0:
        return torch.zeros_like(cap, dtype=torch.int64)
    return _round_to_total(cap * (budget / cap.sum()), cap, budget)


# ---- network certificate -----------------------------------------------------------------------
ACTIVATION_LIPSCHITZ = {nn.ReLU: 1.0, nn.Tanh: 1.0, nn.ReLU6: 1.0, nn.Hardtanh: 1.0,
                        nn.GELU: 1.13, nn.SiLU: 1.1}  # all with σ(0) = 0; LeakyReLU: max(1, |slope|)
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Flatten)


class Certificate(NamedTuple):
    """certify()'s result. `bound`: the guaranteed ‖f(x) − f̂(x)‖ (in the input norm's sense) from the
    exact row tails of each mask (valid for any mask); `sterm_bound`: the same with each row's tail
    replaced by its ℓq s-term bound (what the weights' compressibility alone guarantees; valid when
    each row keeps its largest magnitudes, as every lqkernels.prune rule does); `layers`: per
    Linear, a dict of name, kept, params, tail (the layer's row-tail term), sterm (its s-term
    bound), op_norm (of the dense W) and op_norm_pruned."""
    bound: float
    sterm_bound: float
    layers: list

    @property
    def pruned(self) -> int:
        """How many weights the masks remove (0: nothing was pruned, and the bound is 0)."""
        return sum(layer["params"] - layer["kept"] for layer in self.layers)


def certify(model: nn.Module, masks=None, input_bound: float = 1.0, lipschitz: float = 1.0, *,
            input_norm="inf", q: float = 0.5) -> Certificate:
    """Bounds how much pruning changes an MLP-style network's output, layer by layer (method.md §2).

    The network: `model`'s leaf modules in registration order form a chain h_l = σ_l(W_l h_{l−1} + b_l)
    of nn.Linear layers and activations (ReLU, LeakyReLU, Tanh, ReLU6, Hardtanh, GELU, SiLU: σ(0) = 0
    and Lipschitz constant at most `lipschitz`) plus Identity, Dropout (eval mode) and Flatten.
    Anything else raises TypeError naming the module. Inputs satisfy ‖x‖ ≤ input_bound in
    `input_norm` ("inf" or "2"). The dense W is `weight_orig` for modules pruned through
    torch.nn.utils.prune, else `weight`; the pruned network uses W ⊙ mask and the same biases.
    masks: None (each module's `weight_mask`, none = unpruned) or a dict from module name ("0") or
    parameter name ("0.weight") to a bool mask of the weight's shape.

    Telescoping (standard; the row-wise terms are [T]'s): with e_l = ‖h_l − ĥ_l‖ and H_l ≥ ‖h_l‖,
      e_l ≤ L·(‖(W_l − Ŵ_l)‖·H_{l−1} + ‖Ŵ_l‖·e_{l−1}),   H_l ≤ L·(‖W_l‖·H_{l−1} + ‖b_l‖),
    where for ℓ∞ inputs ‖·‖ of a matrix is the ∞→∞ norm (largest row ℓ1 norm; the tail term is
    max_i ‖w_i − ŵ_i‖_1) and for ℓ2 inputs the spectral norm (tail term: the Frobenius norm
    √Σ_i ‖w_i − ŵ_i‖_2², an upper bound of the spectral one). L multiplies only after an
    activation. sterm_bound replaces ‖w_i − ŵ_i‖_r by ‖w_i‖_q·s_i^{1/r − 1/q} (s_i = kept count).
    A worst case over all inputs in the ball: usually loose by orders of magnitude, but valid.
    Nothing pruned (no weight_mask and no masks, or masks that keep every weight; note that
    prune.remove drops the masks and the dense values) gives bound 0 with a UserWarning saying so;
    `Certificate.pruned` counts the weights the masks remove.
    """
    op = "certify"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{op}: model must be an nn.Module, got {type(model).__name__}")
    r = input_norm_exponent(input_norm, op)
    q = check_number("q", q, op, low=0.0, low_open=True, high=r, high_open=True)
    input_bound = check_number("input_bound", input_bound, op, low=0.0)
    lipschitz = check_number("lipschitz", lipschitz, op, low=0.0, low_open=True)
    if masks is not None and not isinstance(masks, dict):
        raise TypeError(f"{op}: masks must be None or a dict of name -> bool mask, got {type(masks).__name__}")
    leaves = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    err = torch.tensor(0.0, dtype=torch.float64)
    sterm_err = err.clone()
    h = torch.tensor(input_bound, dtype=torch.float64)
    layers = []
    for name, module in leaves:
        if isinstance(module, nn.Linear):
            w, mask = _dense_and_mask(name, module, masks, op)
            with user_terms(op):
                terms = _linear_terms(w, mask, q, r)
            err = terms["tail"] * h + terms["op_norm_pruned"] * err
            sterm_err = terms["sterm"] * h + terms["op_norm_pruned"] * sterm_err
            bias = 0.0 if module.bias is None else ops.lq_norm(module.bias.detach(), math.inf if r == 1 else 2.0).double()
            h = terms["op_norm"] * h + bias
            layers.append({"name": name, "kept": int(mask.sum()), "params": mask.numel(),
                           **{k: float(v) for k, v in terms.items()}})
        elif isinstance(module, _PASS_THROUGH):
            continue
        else:
            needed = _activation_lipschitz(module)
            if needed is None:
                raise TypeError(f"{op}: module {name!r} ({type(module).__name__}) is not part of an "
                                f"MLP-style chain (Linear, ReLU, LeakyReLU, Tanh, ReLU6, Hardtanh, GELU, "
                                f"SiLU, Identity, Dropout, Flatten)")
            if lipschitz < needed:
                raise ValueError(f"{op}: lipschitz={lipschitz:g} is below the Lipschitz constant "
                                 f"{needed:g} of module {name!r} ({type(module).__name__})")
            err, sterm_err, h = lipschitz * err, lipschitz * sterm_err, lipschitz * h
    if not layers:
        raise ValueError(f"{op}: the model has no nn.Linear layer to certify")
    certificate = Certificate(float(err), float(sterm_err), layers)
    if certificate.pruned == 0:
        source = "the masks given keep" if masks is not None else "the model has no pruning masks (weight_mask), so it keeps"
        warnings.warn(f"{op}: nothing is pruned: {source} every weight, and the bound is 0. Certify the "
                      f"dense model with masks= (e.g. the survivors of prune.prunable_weights), or a model "
                      f"pruned by lqkernels.prune / torch.nn.utils.prune before prune.remove", stacklevel=2)
    return certificate


def _activation_lipschitz(module: nn.Module) -> float | None:
    if isinstance(module, nn.LeakyReLU):
        return max(1.0, abs(module.negative_slope))
    for kind, value in ACTIVATION_LIPSCHITZ.items():
        if isinstance(module, kind):
            return value
    return None


def _dense_and_mask(name: str, module: nn.Linear, masks, op: str):
    w = getattr(module, "weight_orig", module.weight).detach()
    mask = None
    if masks is not None:
        mask = masks.get(name, masks.get(f"{name}.weight" if name else "weight"))
    elif hasattr(module, "weight_mask"):
        mask = module.weight_mask.detach().bool()
    if mask is None:
        return w, torch.ones_like(w, dtype=torch.bool)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != w.shape:
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{op}: the mask of {name or 'model'!r} must be a bool tensor of shape "
                         f"{tuple(w.shape)}, got {got}")
    return w, mask.to(w.device)


def _linear_terms(w: torch.Tensor, mask: torch.Tensor, q: float, r: float) -> dict:
    """One layer's tail term, s-term bound of it, and the operator norms of W and W ⊙ mask."""
    tails = ops.lq_norm(w, r, 1, mask=~mask).double()          # ‖w_i − ŵ_i‖_r, exact
    kept = mask.sum(1)
    sterm = s_term_bound(w, kept, q, r, 1)                      # ‖w_i‖_q·s_i^{1/r−1/q}
    sterm = torch.where(kept == mask.shape[1], 0.0, sterm)      # nothing pruned: no tail
    pruned = w * mask
    if r == 1:  # ∞→∞ operator norm: the largest row ℓ1 norm
        return {"tail": tails.max(), "sterm": sterm.max(),
                "op_norm": ops.lq_norm(w, 1.0, 1).double().max(),
                "op_norm_pruned": ops.lq_norm(pruned, 1.0, 1).double().max()}
    return {"tail": tails.square().sum().sqrt(), "sterm": sterm.square().sum().sqrt(),
            "op_norm": torch.linalg.matrix_norm(w.double(), 2),
            "op_norm_pruned": torch.linalg.matrix_norm(pruned.double(), 2)}
