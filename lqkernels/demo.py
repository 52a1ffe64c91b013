"""Demo: how compressible is a small trained MLP? (`python -m lqkernels.demo`)

Trains a 64→128→64→10 ReLU MLP on scikit-learn's bundled digits data (offline, a few seconds on
2 CPU cores) and prints, for every prunable weight and for all of them together, the measures of
lqkernels.ops: the ℓq quasi-norm, SI_q, PQ Index I_{q,1}, Hoyer and Gini, plus the keep ratio that
PQI implies (docs/paper.md §2, Theorem 2 of Diao et al. with η = 0).

The keep ratio: for (p, q) = (q, 1) the bound r ≥ d·(1+η)^{−1/(1−q)}·(1 − I)^{q/(1−q)} gives
r/d ≥ (1 − I)^{q/(1−q)} at η = 0, which for the default q = 0.5 is simply 1 − PQI. It is the
fraction of weights SAP would keep in its first round; the rest would be pruned.

Reusable pieces: `digits_split`, `train_digits_mlp`, `compressibility_table`, `neuron_summary`,
`format_table`.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from lqkernels import ops, prune

# The main (p, q) pair of Diao et al. pairs p with q = 1; the demo's --q plays the role of p.
_PQI_Q = 1.0


def digits_split(seed: int = 0):
    """Standardised digits as float32 tensors (x_train, y_train, x_val, y_val).

    The scaler is fitted on the training part only, so validation accuracy is honest.
    """
    from sklearn.datasets import load_digits  # imported here: only the demo needs scikit-learn
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    scaler = StandardScaler().fit(x_tr)  # constant (always-0) pixels get scale 1, not a 0 division

    def as_tensors(features, labels):
        return (torch.tensor(scaler.transform(features), dtype=torch.float32),
                torch.tensor(labels, dtype=torch.long))

    return (*as_tensors(x_tr, y_tr), *as_tensors(x_va, y_va))


def make_mlp() -> nn.Sequential:
    """The demo network: 64 → 128 → 64 → 10 with ReLU."""
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def train_digits_mlp(seed: int = 0, epochs: int = 30, batch_size: int = 64, lr: float = 1e-3,
                     data=None) -> tuple[nn.Sequential, float]:
    """Train `make_mlp()` on digits with minibatch Adam; return (model, validation accuracy).

    Deterministic for a given seed (split, initialisation and shuffling all derive from it) and
    leaves the caller's global torch RNG state untouched. `data`: `digits_split(seed)` if already
    loaded (importing scikit-learn takes seconds, more than training does).
    """
    x_tr, y_tr, x_va, y_va = digits_split(seed) if data is None else data
    # Matmuls this small gain nothing from intra-op threads, and on a busy 2-core machine the
    # thread pool's spin-waiting made training 10-100x slower (0.5 s vs up to 45 s) in our runs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):  # CPU only; leave the caller's RNG stream alone
            model = _fit(x_tr, y_tr, seed, epochs, batch_size, lr)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_va).argmax(1) == y_va).float().mean().item()
    return model, accuracy


def _fit(x_tr, y_tr, seed, epochs, batch_size, lr) -> nn.Sequential:
    """The training loop proper: seeded init and shuffling, cross-entropy, Adam."""
    torch.manual_seed(seed)
    model = make_mlp()
    shuffle = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x_tr), generator=shuffle).split(batch_size):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
    return model


def prunable_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, weight) of every parameter named *weight* with dim > 1, as SAP prunes (paper §3)."""
    return [(name, p.detach()) for name, p in model.named_parameters() if "weight" in name and p.dim() > 1]


def compressibility_table(model: nn.Module, q: float = 0.5) -> list[dict]:
    """One row per prunable weight plus a final 'all weights' row (global scope): the layer and
    total rows of `lqkernels.prune.compressibility(model, q=q, p=q, pq=1)`.

    Row keys include layer, shape, params, q, lq_norm (‖w‖_q), si (SI_q), pqi (I_{q,1}), hoyer,
    gini, keep_ratio ((1 − I)^{q/(1−q)}, Theorem 2 at η = 0) and keep_pqi (its count).
    """
    if not 0 < q < 1:
        raise ValueError(f"compressibility_table: q must be in (0, 1), got {q}")
    report = prune.compressibility(model, q=q, p=q, pq=_PQI_Q)
    return [*report.layers, report.total]


def neuron_summary(model: nn.Module, q: float = 0.5) -> list[dict]:
    """Per prunable weight: mean and std over output rows (neurons) of the row-wise PQI I_{q,1}."""
    out = []
    for name, w in prunable_weights(model):
        per_row = ops.pq_index(w.reshape(w.shape[0], -1), p=q, q=_PQI_Q, dim=1)
        out.append({"layer": name, "rows": per_row.numel(),
                    "mean": per_row.mean().item(), "std": per_row.std().item()})
    return out


def _fmt_q(q: float) -> str:
    return f"{q:g}"


def format_table(rows: list[dict]) -> str:
    """Fixed-width text table of `compressibility_table` rows (headers name the q used)."""
    q = rows[0]["q"] if rows else 0.5
    keep = "keep ratio (1-PQI)" if q == 0.5 else f"keep (1-PQI)^{q / (1 - q):.3g}"
    # (header, row key, format): numbers right-aligned, names left-aligned.
    columns = [("layer", "layer", "{}"), ("shape", "shape", "{}"), ("params", "params", "{:d}"),
               (f"l_{_fmt_q(q)} norm", "lq_norm", "{:.4g}"), (f"SI_{_fmt_q(q)}", "si", "{:.4f}"),
               (f"PQI({_fmt_q(q)},{_fmt_q(_PQI_Q)})", "pqi", "{:.4f}"), ("Hoyer", "hoyer", "{:.4f}"),
               ("Gini", "gini", "{:.4f}"), (keep, "keep_ratio", "{:.4f}")]
    cells = [[fmt.format(row[key]) for _, key, fmt in columns] for row in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (h, _, _) in enumerate(columns)]

    def line(values):
        parts = [v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))]
        return "  ".join(parts).rstrip()

    rule = "-" * len(line([h for h, _, _ in columns]))
    body = [line(c) for c in cells]
    if len(body) > 1:  # set the global row apart from the per-layer rows
        body.insert(len(body) - 1, rule)
    return "\n".join([line([h for h, _, _ in columns]), rule, *body])


def main(argv: list[str] | None = None) -> list[dict]:
    """Train, then print accuracy, timings and the compressibility report; return the table rows."""
    parser = argparse.ArgumentParser(prog="python -m lqkernels.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed for split, init and shuffling (0)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs, batch 64 (30)")
    parser.add_argument("--q", type=float, default=0.5,
                        help="exponent 0<q<1 of the l_q norm, SI_q and PQI(q,1) (0.5)")
    parser.add_argument("--quiet", action="store_true", help="print only the table")
    args = parser.parse_args(argv)
    if not 0 < args.q < 1:
        parser.error(f"--q must be in (0, 1), got {args.q}")
    say = (lambda *a: None) if args.quiet else print

    t0 = time.perf_counter()
    data = digits_split(args.seed)
    t_data = time.perf_counter() - t0
    t0 = time.perf_counter()
    model, accuracy = train_digits_mlp(args.seed, args.epochs, data=data)
    t_train = time.perf_counter() - t0
    say(f"digits MLP 64-128-64-10: validation accuracy {accuracy:.2%} "
        f"({args.epochs} epochs, seed {args.seed}; data loaded in {t_data:.2f} s, "
        f"trained in {t_train:.2f} s)")

    t0 = time.perf_counter()
    rows = compressibility_table(model, args.q)
    neurons = neuron_summary(model, args.q)
    t_report = time.perf_counter() - t0

    say(f"\nCompressibility report (q = {_fmt_q(args.q)}; keep ratio = SAP keep bound at eta = 0)")
    print(format_table(rows))
    say(f"\nPer-neuron PQI({_fmt_q(args.q)},{_fmt_q(_PQI_Q)}) over output rows (mean ± std):")
    for n in neurons:
        say(f"  {n['layer']:<10} {n['rows']:>4} rows  {n['mean']:.4f} ± {n['std']:.4f}")
    say(f"\nreport computed in {t_report * 1e3:.1f} ms")
    return rows


if __name__ == "__main__":
    main()
