"""Study 3: the best s-term approximation rate ‖w − w_s‖_2 ~ s^{1/2 − 1/q}.

w_s keeps the s largest |w_i|. For magnitudes that decay like k^{-1/q} (the k-th largest), the ℓ2
error of w_s falls with log-log slope 1/2 − 1/q, and lqkernels.theory.s_term_bound gives the bound
‖w − w_s‖_2 ≤ s^{1/2 − 1/q}·‖w‖_q for any w. We fit the slope for power-law vectors (exact k^{-1/q}
and random Pareto samples with tail index q) and look at the same curve for the weights of a
random and a trained hidden layer (an MLP on scikit-learn's digits).

    .venv/bin/python experiments/study3_sterm_rate.py [--quick] [--out DIR]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, options, seed_everything, write_study  # noqa: E402

from lqkernels import theory  # noqa: E402

NAME = "study3_sterm_rate"
SEED = 3
LAYER_QS = [0.5, 1.0, 1.5]  # the s-term bound holds for every q; these show how loose it is on a layer


def s_grid(d: int, points: int = 80) -> np.ndarray:
    """Log-spaced s in [1, d − 1] (each once)."""
    return np.unique(np.logspace(0, np.log10(d - 1), points).astype(np.int64))


def s_term_errors(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """‖w − w_s‖_2 for each s: the ℓ2 norm of all but the s largest |w_i| (float64, summed small-first
    so a tail 1e-15 of the total keeps its digits)."""
    tail_sq = np.cumsum(np.sort(w.astype(np.float64) ** 2))  # tail_sq[j] = sum of the j+1 smallest
    return np.sqrt(tail_sq[w.size - s - 1])


def fitted_slope(s: np.ndarray, err: np.ndarray, lo: float, hi: float) -> float:
    """Least-squares slope of log err against log s over lo ≤ s ≤ hi."""
    keep = (s >= lo) & (s <= hi)
    return float(np.polyfit(np.log(s[keep]), np.log(err[keep]), 1)[0])


def bound_ratio(w: np.ndarray, s: np.ndarray, err: np.ndarray, q: float) -> np.ndarray:
    """s_term_bound / actual error at each s (≥ 1 wherever the guarantee holds)."""
    bound = theory.s_term_bound(torch.from_numpy(w.astype(np.float64)), torch.from_numpy(s), q, 2.0).numpy()
    return bound / err


def power_law_vectors(q: float, d: int, rng) -> dict[str, np.ndarray]:
    """Magnitudes decaying like k^{-1/q}: exactly (the extremal vector of the weak-ℓq ball), and as
    a random Pareto sample with tail index q (its k-th largest of d is ≈ (d/k)^{1/q})."""
    return {"k^(-1/q)": np.arange(1, d + 1, dtype=np.float64) ** (-1 / q),
            "Pareto(q) sample": rng.pareto(q, d) + 1.0}


def digits_layers(steps: int) -> tuple[dict[str, np.ndarray], float]:
    """The hidden-layer weight of a 64-256-10 MLP on digits at init (PyTorch's default uniform
    init) and after `steps` full-batch Adam steps; and the trained net's training accuracy."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor((x - x.mean(0)) / (x.std(0) + 1e-8), dtype=torch.float32)
    y = torch.tensor(y)
    net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    layers = {"random layer (init)": net[0].weight.detach().double().numpy().ravel().copy()}
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    with torch.no_grad():
        accuracy = (net(x).argmax(1) == y).double().mean().item()
    layers["trained layer"] = net[0].weight.detach().double().numpy().ravel().copy()
    return layers, accuracy


def figure(curves: list[tuple], fit_range: tuple[float, float], layer_curves: list[tuple]):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color_of_q = dict(zip(sorted({q for _, q, _, _ in curves}), colors))
    for label, q, s, err in curves:
        ax1.loglog(s, err / err[0], color=color_of_q[q], ls="-" if label.startswith("k") else ":",
                   label=f"{label}, q={q}")
    ax1.axvspan(*fit_range, color="grey", alpha=0.15, label="fit range")
    ax1.set(xlabel="s (kept entries)", ylabel="‖w − w_s‖₂ / ‖w − w_1‖₂",
            title="power laws: solid k^(−1/q), dotted Pareto(q); slope → 1/2 − 1/q")
    ax1.legend(fontsize=6, ncol=2)
    for (label, s, err, bounds), color in zip(layer_curves, colors):
        ax2.loglog(s, err, color=color, label=f"{label}: ‖w − w_s‖₂")
        for (q, bound), ls in zip(bounds.items(), ["--", "-.", ":"]):
            ax2.loglog(s, bound, color=color, ls=ls, lw=0.8, label=f"{label}: bound, q={q}")
    ax2.set(xlabel="s (kept entries)", ylabel="ℓ2 error", title="digits MLP hidden layer vs s-term bounds")
    ax2.legend(fontsize=6)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    """Runs the study and writes its .md and .png; returns `power_rows` and `layer_rows` (the two
    tables as dicts, with float columns `fitted slope`, `theory 1/2−1/q`, `min bound/error`)."""
    args = options(__doc__, argv)
    start = time.perf_counter()
    seed_everything(SEED)
    rng = np.random.default_rng(SEED)
    d = 10 ** 6 if args.quick else 10 ** 7
    qs = [0.5, 1.0] if args.quick else [0.25, 0.5, 0.75, 1.0, 1.5]
    # s ≥ max(10, d/1e5) skips the top order statistics, which are noisy for a random sample;
    # s ≤ d/1e3 keeps the finite length from bending the curve (Σ_{k>s}^{d} k^{-2/q} ≈ its limit
    # only for s ≪ d).
    lo, hi = max(10.0, d / 1e5), d / 1e3
    s = s_grid(d)
    power_rows, curves = [], []
    for q in qs:
        for label, w in power_law_vectors(q, d, rng).items():
            err = s_term_errors(w, s)
            ratio = bound_ratio(w, s, err, q)
            power_rows.append({"vector": label, "q": q, "theory 1/2−1/q": 0.5 - 1 / q,
                               "fitted slope": fitted_slope(s, err, lo, hi),
                               "min bound/error": float(ratio.min()), "median bound/error": float(np.median(ratio))})
            curves.append((label, q, s, err))
    for row in power_rows:
        row["|fitted − theory|"] = abs(row["fitted slope"] - row["theory 1/2−1/q"])

    layers, accuracy = digits_layers(steps=10 if args.quick else 150)
    layer_rows, layer_curves = [], []
    for label, w in layers.items():
        n = w.size
        ls = s_grid(n, 60)
        err = s_term_errors(w, ls)
        ratios = {q: bound_ratio(w, ls, err, q) for q in LAYER_QS}
        slopes = {"slope s∈[10, d/100]": fitted_slope(ls, err, 10, n / 100),
                  "slope s∈[d/100, d/10]": fitted_slope(ls, err, n / 100, n / 10),
                  "slope s∈[d/10, d/2]": fitted_slope(ls, err, n / 10, n / 2)}
        at_tenth = int(np.searchsorted(ls, n // 10))
        layer_rows.append({"layer": label, "d": n, **slopes,
                           **{f"bound/error at s=d/10, q={q}": float(r[at_tenth]) for q, r in ratios.items()},
                           "min bound/error (all s, q)": float(min(r.min() for r in ratios.values()))})
        layer_curves.append((label, ls, err, {q: r * err for q, r in ratios.items()}))

    worst_fit = max(row["|fitted − theory|"] for row in power_rows)
    exact = [row for row in power_rows if row["vector"] == "k^(-1/q)"]
    harmonic = float(np.sum(1.0 / np.arange(1, d + 1)))  # ‖k^{-1/q}‖_q^q, the same for every q
    bent = max(exact, key=lambda row: row["|fitted − theory|"])  # the exact law furthest from theory
    power_cols = ["vector", "q", "theory 1/2−1/q", "fitted slope", "|fitted − theory|",
                  "min bound/error", "median bound/error"]
    all_min = min(min(r["min bound/error"] for r in power_rows), min(r["min bound/error (all s, q)"] for r in layer_rows))

    markdown = f"""## Study 3: the s-term approximation rate

**Claim tested** (method.md §2 and §5.3): for 0 < q < 2 the best s-term approximation satisfies
‖w − w_s‖_2 ≤ s^{{1/2 − 1/q}}·‖w‖_q (the constant is 1), and for power-law magnitudes the log-log
slope of ‖w − w_s‖_2 against s tends to 1/2 − 1/q. [T] uses this rate to turn a small ‖w‖_q
into few kept weights per neuron.

**Method.** Power laws of length d = {d:.0e} (seed {SEED}): the exact k^(−1/q) (the extremal vector
of the weak-ℓq ball) and a random Pareto sample with tail index q, for q ∈ {{{", ".join(map(str, qs))}}}. The error
curve is exact (float64 sort, tail sums added small-first) on {s.size} log-spaced s; the slope is a
least-squares fit of log error on log s over s ∈ [{lo:.0f}, {hi:.0f}] (= [max(10, d/1e5), d/1e3]: away from the
noisy top order statistics and from the finite-d bend). The bound is
`lqkernels.theory.s_term_bound(w, s, q, r=2)` on the float64 vector. Then the same curve for
the 256×64 hidden-layer weight of a digits MLP at PyTorch's default init and after training
(Adam, full batch; training accuracy {accuracy:.3f}), with the bound for q ∈ {{{", ".join(map(str, LAYER_QS))}}}.

### Power-law vectors

{markdown_table(power_rows, power_cols)}

### Hidden layer of a digits MLP

{markdown_table(layer_rows)}

### What we found

- The rate holds: every fitted slope is within {worst_fit:.3f} of 1/2 − 1/q, for the exact power
  law and for random Pareto samples alike.
- The bound holds everywhere (smallest bound/error over all vectors, s and q: {all_min:.2f} ≥ 1),
  with the right slope but a loose constant on power laws: for k^(−1/q),
  ‖w‖_q = H_d^{{1/q}} with H_d = Σ_{{k≤d}} 1/k = {harmonic:.1f} (the vector is only in the weak-ℓq
  ball, whose ℓq norm grows like log d), and the tail is ≈ s^{{1/2−1/q}}/√(2/q − 1); so bound/error ≈
  H_d^{{1/q}}·√(2/q − 1): {", ".join(f"{harmonic ** (1 / r['q']) * np.sqrt(2 / r['q'] - 1):.3g} predicted vs {r['median bound/error']:.3g} measured (median) at q={r['q']}" for r in exact)}.
- A dense layer's weights are nothing like a power law. At init they are uniform and after
  training almost unchanged in distribution: the error curve is flat for small s (slope
  {layer_rows[-1]["slope s∈[10, d/100]"]:.3f} over s ∈ [10, d/100] for the trained layer) and only falls near s = d. So the
  s-term rate says little here. The bound stays valid but, with the error still ≈ ‖w‖_2 while
  the bound is ‖w‖_q·s^{{1/2−1/q}} ≈ (d/s)^{{1/q−1/2}}·‖w‖_2·M_q/M_2, it is loose by roughly
  (d/s)^{{1/q−1/2}}: most for small q and small s.

### Where we differ

The rate and the bound are standard results and we reproduce them. The fitted slope depends on the
fit range: the finite length bends the curve as s approaches d, most for large q, whose tail sum
Σ_{{k>s}} k^{{−2/q}} converges slowest (even with s ≤ d/1000 the exact law at q = {bent["q"]} is
{bent["|fitted − theory|"]:.3f} steeper than theory), and the first few s make Pareto slopes noisy;
we fit where the asymptotic regime applies and say so. We found no evidence that ordinary training (no sparsity penalty, no
pruning) makes a layer's magnitudes decay like a power law: the compressibility [T] measures has
to come from training choices this study does not make.
"""
    write_study(args.out, NAME, markdown, figure(curves, (lo, hi), layer_curves))
    print(f"{NAME}: {time.perf_counter() - start:.1f} s")
    return {"power_rows": power_rows, "layer_rows": layer_rows}


if __name__ == "__main__":
    main()
