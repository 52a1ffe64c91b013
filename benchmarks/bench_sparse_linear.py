"""CPU benchmarks of SparseLinear (issue 4's claims): W = 4096 x 4096 float32, 2 threads.

As a pytest-benchmark module (`make bench`): the claimed points, each group with ours (SparseLinear
with format="auto", as users build it), the peer (dense F.linear on W * mask, the tests' oracle
computed in float32) and torch.sparse.mm with CSR; then training steps (forward + backward)
against torch.nn.utils.prune's masked dense layer. benchmarks/ratios.py turns the JSON into ratios.

As a script, the full sweep (sparsity x batch x uniform / per-row-varying density, every format),
which takes minutes:
    python benchmarks/bench_sparse_linear.py --out out/sparse_sweep     # table .md + speed-up .png
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from lqkernels.nn import SparseLinear

SIZE = 4096
SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99)
BATCHES = (1, 4, 8, 16, 64, 512)


def pruning_mask(sparsity: float, varying: bool, gen: torch.Generator, size: int = SIZE) -> torch.Tensor:
    """Uniform: every weight kept with probability 1 - sparsity. Varying: row r keeps a fraction
    d_r spread uniformly over [δ - a, δ + a] (δ = 1 - sparsity, a = min(δ, 1 - δ)): the same mean,
    rows from nearly empty to nearly full, as neuron-wise pruning produces."""
    density = torch.full((size, 1), 1.0 - sparsity)
    if varying:
        spread = min(1.0 - sparsity, sparsity)
        density = density + spread * (2 * torch.rand(size, 1, generator=gen) - 1)
    return torch.rand(size, size, generator=gen) < density


def layer_and_peers(sparsity: float, varying: bool, fmt: str, seed: int = 0, size: int = SIZE):
    gen = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(size, size)
    mask = pruning_mask(sparsity, varying, gen, size)
    layer = SparseLinear.from_linear(linear, mask, format=fmt)
    masked = (linear.weight * mask).detach()
    csr = masked.to_sparse_csr()
    bias = linear.bias.detach()

    def dense_peer(x):
        return F.linear(x, masked, bias)

    def csr_peer(x):
        return torch.sparse.mm(csr, x.t()).t() + bias

    return layer, dense_peer, csr_peer


CLAIMS = [(1, 0.5), (1, 0.9), (16, 0.9), (16, 0.5), (512, 0.5), (512, 0.9)]


@pytest.fixture(scope="module")
def layers():
    cache = {}

    def get(sparsity):
        if sparsity not in cache:
            cache[sparsity] = layer_and_peers(sparsity, varying=False, fmt="auto")
        return cache[sparsity]
    return get


def _make_benchmarks(batch: int, sparsity: float):
    """ours / peer / torch CSR of one claim, defined next to each other so that pytest runs them
    back to back (on a shared machine, the load drifts between distant runs)."""
    group = f"sparse linear 4096² batch {batch} sparsity {sparsity:.0%}"
    x = torch.randn(batch, SIZE, generator=torch.Generator().manual_seed(1))

    def ours(benchmark, layers):
        benchmark.group = group
        with torch.no_grad():
            benchmark(layers(sparsity)[0], x)

    def peer(benchmark, layers):
        benchmark.group = group
        benchmark(layers(sparsity)[1], x)

    def torch_csr(benchmark, layers):
        benchmark.group = group
        benchmark(layers(sparsity)[2], x)

    return {"ours": ours, "peer": peer, "torch_csr": torch_csr}


for _batch, _sparsity in CLAIMS:
    for _role, _fn in _make_benchmarks(_batch, _sparsity).items():
        globals()[f"test_b{_batch}_s{round(_sparsity * 100)}_{_role}"] = _fn


TRAINING_CLAIMS = [(16, 0.5), (16, 0.9), (512, 0.9)]


def _make_training_benchmarks(batch: int, sparsity: float):
    """One fine-tuning step of the layer, forward and backward with gradients for x, the weights
    and the bias: ours against torch.nn.utils.prune's layer (F.linear on weight_orig * weight_mask,
    recomputed every step, as its forward pre-hook does)."""
    group = f"sparse linear 4096² training step batch {batch} sparsity {sparsity:.0%}"
    x = torch.randn(batch, SIZE, generator=torch.Generator().manual_seed(1)).requires_grad_()

    def ours(benchmark, layers):
        benchmark.group = group
        layer = layers(sparsity)[0]
        benchmark(lambda: layer(x).sum().backward())

    def peer(benchmark, layers):
        benchmark.group = group
        layer = layers(sparsity)[0]
        orig = layer.weight.detach().clone().requires_grad_()
        mask, bias = layer.mask.to(orig.dtype), layer.bias.detach().clone().requires_grad_()
        benchmark(lambda: F.linear(x, orig * mask, bias).sum().backward())

    return {"ours": ours, "peer": peer}


for _batch, _sparsity in TRAINING_CLAIMS:
    for _role, _fn in _make_training_benchmarks(_batch, _sparsity).items():
        globals()[f"test_training_b{_batch}_s{round(_sparsity * 100)}_{_role}"] = _fn


# ---- the sweep (script) ----

def median_ms(fns: dict, x, budget_s: float, min_reps: int = 5, max_reps: int = 60) -> dict:
    """Median ms of each of `fns` on x, timed interleaved (one call of each per round): on a shared
    machine the speed drifts by up to 2x within minutes, and back-to-back blocks of calls of one
    kernel would turn that drift into a false ratio."""
    for fn in fns.values():
        fn(x)
    times = {name: [] for name in fns}
    deadline = time.perf_counter() + budget_s * len(fns)
    while len(times[next(iter(fns))]) < min_reps or (time.perf_counter() < deadline and
                                                      len(times[next(iter(fns))]) < max_reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def sweep(out: Path, budget_s: float, sparsities, batches, size: int = SIZE) -> None:
    torch.set_num_threads(2)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    header = ("| density | sparsity | batch | dense ms | torch CSR ms | bitmap ms | csr16 ms | auto ms (format) "
              "| CSR / dense | bitmap / dense | csr16 / dense | auto / dense | auto vs CSR |")
    lines = [f"{machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads, W {size}x{size} float32, "
             f"median of 5-60 calls, interleaved, within {budget_s} s per kernel; "
             "ratios are speed-ups (> 1: faster than dense)",
             "", header, "|" + "---|" * 13]
    print("\n".join(lines), flush=True)
    with torch.no_grad():
        for varying in (False, True):
            for sparsity in sparsities:
                layers = {fmt: layer_and_peers(sparsity, varying, fmt, size=size)
                          for fmt in ("bitmap", "csr16", "auto")}
                _, dense_peer, csr_peer = layers["auto"]
                for batch in batches:
                    x = torch.randn(batch, size, generator=torch.Generator().manual_seed(batch))
                    t = median_ms({"dense": dense_peer, "csr": csr_peer,
                                   **{fmt: layer for fmt, (layer, _, _) in layers.items()}}, x, budget_s)
                    auto = layers["auto"][0]
                    chosen = auto.format if not auto._dense_path(batch) else "dense"
                    row = {"varying": varying, "sparsity": sparsity, "batch": batch, **t, "auto_format": chosen}
                    rows.append(row)
                    line = (f"| {'per-row' if varying else 'uniform'} | {sparsity:.0%} | {batch} | {t['dense']:.3f} | "
                            f"{t['csr']:.3f} | {t['bitmap']:.3f} | {t['csr16']:.3f} | {t['auto']:.3f} ({chosen}) | "
                            f"{t['dense'] / t['csr']:.2f} | {t['dense'] / t['bitmap']:.2f} | "
                            f"{t['dense'] / t['csr16']:.2f} | {t['dense'] / t['auto']:.2f} | "
                            f"{t['csr'] / t['auto']:.2f} |")
                    lines.append(line)
                    print(line, flush=True)
    fit = fit_cost_table(rows)
    if fit:
        lines += ["", "Cost table for lqkernels.nn.COST_MODEL (each format's time / dense, worst of the batches and "
                  "densities each entry covers):", "", "```python", fit, "```"]
        print("\n".join(lines[-5:]), flush=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(rows, out.with_suffix(".png"), sparsities, batches, size)


def machine() -> str:
    """The CPU and the instruction set lqkernels' kernels ran with."""
    from lqkernels import _backend
    from lqkernels.info import cpu_model
    return f"{cpu_model()}, lqkernels CPU capability {_backend.cpu_capability()}"


def rows_of_table(path: Path) -> tuple[list[dict], str]:
    """The rows and the first line (the machine) of a table that `sweep` wrote."""
    text = path.read_text().splitlines()
    rows = []
    for line in text:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 13 and cells[0] in ("uniform", "per-row"):
            rows.append({"varying": cells[0] == "per-row", "sparsity": float(cells[1].rstrip("%")) / 100,
                         "batch": int(cells[2]), "dense": float(cells[3]), "csr": float(cells[4]),
                         "bitmap": float(cells[5]), "csr16": float(cells[6]), "auto": float(cells[7].split()[0])})
    return rows, text[0]


def fit_cost_table(rows) -> str | None:
    """lqkernels.nn's "cpu" cost table from a sweep: per entry of COST_MODEL["cpu"] (batches up to
    its largest M), per format, the time relative to dense at each of COST_DENSITIES, the worst
    over the entry's batches and both density patterns. None unless the sweep measured every
    density and entry."""
    from lqkernels.nn import COST_DENSITIES, COST_MODEL
    table, smallest = [], 0
    for largest, _ in COST_MODEL["cpu"]:
        costs = {}
        for fmt in ("bitmap", "csr16"):
            worst = []
            for density in COST_DENSITIES:
                ratios = [r[fmt] / r["dense"] for r in rows
                          if smallest < r["batch"] <= largest and abs(1 - r["sparsity"] - density) < 1e-9]
                if not ratios:
                    return None
                worst.append(f"{max(ratios):.2f}")
            costs[fmt] = f'"{fmt}": ({", ".join(worst)})'
        table.append(f"({'math.inf' if largest == math.inf else largest}, {{{', '.join(costs.values())}}}),")
        smallest = largest
    return "\n".join(table)


def plot(rows, path: Path, sparsities, batches, size: int = SIZE, where: str | None = None) -> None:
    """Heat maps of speed-up over dense (log colour scale; red: dense still wins)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    kinds = [("auto", "auto"), ("bitmap", "bitmap"), ("csr16", "csr16"), ("csr", "torch CSR")]
    fig, axes = plt.subplots(2, len(kinds), figsize=(4.2 * len(kinds), 7), constrained_layout=True)
    norm = TwoSlopeNorm(vmin=-3, vcenter=0, vmax=4)
    for i, varying in enumerate((False, True)):
        for j, (key, title) in enumerate(kinds):
            grid = torch.zeros(len(sparsities), len(batches))
            for r in rows:
                if r["varying"] == varying:
                    grid[sparsities.index(r["sparsity"]), batches.index(r["batch"])] = r["dense"] / r[key]
            ax = axes[i, j]
            ax.imshow(grid.log2().numpy(), cmap="RdYlGn", norm=norm, aspect="auto", origin="lower")
            for a in range(len(sparsities)):
                for b in range(len(batches)):
                    ax.text(b, a, f"{grid[a, b]:.2f}", ha="center", va="center", fontsize=8)
            ax.set_xticks(range(len(batches)), [str(b) for b in batches])
            ax.set_yticks(range(len(sparsities)), [f"{s:.0%}" for s in sparsities])
            ax.set_xlabel("batch")
            ax.set_ylabel("sparsity")
            ax.set_title(f"{title} / dense, {'per-row density' if varying else 'uniform'}", fontsize=10)
    fig.suptitle(f"Speed-up over dense F.linear, W {size}x{size} float32, 2 threads (green: faster)\n"
                 f"{where or machine()}")
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/sparse_sweep"))
    parser.add_argument("--budget", type=float, default=0.6, help="seconds of timing per point and kernel")
    parser.add_argument("--sparsities", type=float, nargs="*", default=SPARSITIES)
    parser.add_argument("--batches", type=int, nargs="*", default=BATCHES)
    parser.add_argument("--size", type=int, default=SIZE, help="W is size x size")
    parser.add_argument("--replot", type=Path, help="only draw the plot of a table a sweep wrote (.md)")
    args = parser.parse_args()
    if args.replot:
        rows, first_line = rows_of_table(args.replot)
        plot(rows, args.replot.with_suffix(".png"), sorted({r["sparsity"] for r in rows}),
             sorted({r["batch"] for r in rows}), args.size, first_line.split(";")[0] if "capability" in first_line
             else None)
    else:
        sweep(args.out, args.budget, list(args.sparsities), list(args.batches), args.size)
