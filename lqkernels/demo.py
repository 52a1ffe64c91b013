"""Demo: measure a network, prune it with a guarantee, and turn the pruning into speed and memory
(`make demo`, `python -m lqkernels.demo`, `lqkernels demo`).

By default it trains a 64→1024→1024→10 ReLU MLP on scikit-learn's bundled digits (offline, seconds
on 2 CPU cores, deterministic seeds) and shows, in order:
  1. the compressibility report (lqkernels.prune.compressibility): ℓq norm, SI_q, PQ Index, Hoyer,
     Gini and Theorem 2's keep count per layer, and PQI over each layer's neurons;
  2. SAP rounds (lqkernels.prune.sap, (p, q) = (--q, 1), neuron scope), each followed by a short
     fine-tuning; per round the certified bound on how far that step can move the output
     (lqkernels.theory.certify, ℓ2 form, for every input no longer than the longest validation
     row) beside the change measured on the validation set;
  3. accuracy before pruning, after the first pruning step and after fine-tuning;
  4. lqkernels.sparsify_ (format "auto": per layer the format the cost model picks, dense where no
     sparse kernel would be faster) and the bytes each layer holds;
  5. the sparse model against the dense (masked) model at several batch sizes: medians of
     interleaved samples under torch.inference_mode, after warm-up, on one thread by default;
     slower is shown as slower;
  6. a summary, and a plot at --plot: accuracy by round, the certified bound against the measured
     output change, bytes dense vs sparse, and speed-up per batch with the 1x line.

Why γ = 8: SAP's main setting γ = 1 prunes about PQI ≈ 13% of each neuron per round here and less
as PQI falls (60% of the weights were left after 6 rounds in our runs), far from the sparsity where
the CPU kernels beat the dense product (above ~80%, benchmarks/RESULTS.md). γ multiplies the
fraction Theorem 2 allows, β = 0.9 caps each round, and SAP still stops by itself once the
survivors' PQI has fallen (rounds 2 and 3 prune little). The certificate holds for any mask, so it
covers the aggressive steps too; being a worst case over all inputs, it is loose by orders of
magnitude (the ℓ2 form was ~30x tighter than the ℓ∞ one here).

`--model package.module:factory` (or a torch.save'd module) runs the same on your model, fed
random inputs of its first nn.Linear's in_features: without data there is no accuracy and no
fine-tuning, and the output says so.

Reusable pieces: `digits_split`, `make_mlp`, `train_digits_mlp`, `accuracy`, `sap_rounds`,
`layer_table`, `speed_table`, `median_seconds`.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from lqkernels import _backend, prune, theory
from lqkernels.cli import load_model, remove_masks
from lqkernels.info import cpu_model
from lqkernels.nn import LAST_LEVEL_CACHE_BYTES, SparseLinear
from lqkernels.prune import format_table
from lqkernels.sparsify import sparsify_

HIDDEN = (128, 64)  # make_mlp's default: the small digits MLP (experiments/ use it too)
# The demo's: wide enough that the sparse layers' speed means something, still trained in seconds.
DEMO_HIDDEN = (1024, 1024)


# ---- data and training -------------------------------------------------------------------------
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


def make_mlp(hidden=HIDDEN) -> nn.Sequential:
    """The demo network: 64 → hidden[0] → ... → 10, ReLU after every layer but the last."""
    widths = [64, *hidden]
    layers = []
    for n_in, n_out in zip(widths, widths[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], 10))


@contextlib.contextmanager
def _threads(n: int):
    """torch's intra-op thread count set to n inside the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _training_context():
    """One intra-op thread and a private RNG stream (the caller's stays untouched) while training."""
    # Matmuls this small gain little from intra-op threads, and on a busy 2-core machine the
    # thread pool's spin-waiting made training 5-100x slower in our runs.
    with _threads(1), torch.random.fork_rng(devices=[]):  # CPU RNG only
        yield


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int,
         batch_size: int = 64, lr: float = 1e-3) -> None:
    """Minibatch Adam on cross-entropy, shuffled from `seed`; leaves the model in eval mode. A new
    optimizer per call: pruning renames parameters (weight -> weight_orig) between calls."""
    shuffle = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=shuffle).split(batch_size):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows of x whose argmax output is the label y."""
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def train_digits_mlp(seed: int = 0, epochs: int = 30, batch_size: int = 64, lr: float = 1e-3,
                     data=None, hidden=HIDDEN) -> tuple[nn.Sequential, float]:
    """Train `make_mlp(hidden)` on digits with minibatch Adam; return (model, validation accuracy).

    Deterministic for a given seed (split, initialisation and shuffling all derive from it) and
    leaves the caller's global torch RNG state untouched. `data`: `digits_split(seed)` if already
    loaded (importing scikit-learn takes seconds, more than training a small MLP does).
    """
    x_tr, y_tr, x_va, y_va = digits_split(seed) if data is None else data
    with _training_context():
        torch.manual_seed(seed)
        model = make_mlp(hidden)
        _fit(model, x_tr, y_tr, seed, epochs, batch_size, lr)
    return model, accuracy(model, x_va, y_va)


# ---- pruning with a certificate ------------------------------------------------------------------
def _copy(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """copy.deepcopy(model). deepcopy refuses a pruned `weight` that still holds the graph of
    weight_orig * weight_mask, as torch.nn.utils.prune leaves it right after pruning; a forward on
    one row of x under no_grad first recomputes it as a plain tensor."""
    with torch.no_grad():
        model(x[:1])
    return copy.deepcopy(model)


def _lipschitz(model: nn.Module) -> float:
    """The largest Lipschitz constant among the model's activations that certify knows (>= 1)."""
    return max([1.0] + [value for m in model.modules() for kind, value in theory.ACTIVATION_LIPSCHITZ.items()
                        if isinstance(m, kind)])


def sap_rounds(model: nn.Module, rounds: int, x_eval: torch.Tensor, *, p: float = 0.5, gamma: float = 1.0,
               beta: float = 0.9, scope: str = "neuron", fine_tune=None, evaluate=None) -> list[dict]:
    """`rounds` SAP steps (prune.sap with (p, 1)) on `model`, in place, each followed by
    fine_tune(model, round) if given. One dict per round: remaining (fraction kept), pqi (PQI(p, 1)
    of all survivors before the step), change (the largest ‖output change‖_2 the step caused on a
    row of x_eval), bound / sterm_bound (theory.certify of the step for ‖x‖_2 ≤ the largest row norm
    of x_eval; None where certify does not apply, with its reason in `no_bound`), and with
    `evaluate(model)` the metric after pruning (acc_pruned) and, with fine_tune too, after
    fine-tuning (acc_tuned)."""
    radius = x_eval.norm(dim=1).max().item()
    lipschitz = _lipschitz(model)
    records = []
    for t in range(1, rounds + 1):
        record = {"round": t, "pqi": prune.compressibility(model, q=p, p=p).total["pqi"]}
        before = remove_masks(_copy(model, x_eval))  # zeros where earlier rounds pruned
        prune.sap(model, p=p, q=1.0, gamma=gamma, beta=beta, scope=scope)
        record["remaining"] = prune.remaining_fraction(model)
        with torch.no_grad():
            record["change"] = (model(x_eval) - before(x_eval)).norm(dim=1).max().item()
        masks = {name: survivors for name, _, survivors in prune.prunable_weights(model)}
        try:
            cert = theory.certify(before, masks, input_bound=radius, lipschitz=lipschitz, input_norm="2")
            record |= {"bound": cert.bound, "sterm_bound": cert.sterm_bound}
        except (TypeError, ValueError) as e:  # not an MLP-style chain
            record |= {"bound": None, "sterm_bound": None, "no_bound": str(e)}
        if evaluate is not None:
            record["acc_pruned"] = evaluate(model)
        if fine_tune is not None:
            fine_tune(model, t)
            if evaluate is not None:
                record["acc_tuned"] = evaluate(model)
        records.append(record)
    return records


# ---- sparse layers: formats, bytes, speed --------------------------------------------------------
def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def layer_table(sparse_model: nn.Module) -> list[dict]:
    """Per SparseLinear: layer, shape, kept fraction, stored format, dense_bytes (weight and bias
    as an nn.Linear) and nbytes (what the SparseLinear holds)."""
    rows = []
    for name, m in sparse_model.named_modules():
        if isinstance(m, SparseLinear):
            dense = m.out_features * m.in_features * m.values.element_size()
            dense += 0 if m.bias is None else _bytes([m.bias])
            rows.append({"layer": name, "shape": f"{m.out_features}x{m.in_features}", "kept": 1 - m.sparsity,
                         "format": m.format, "dense_bytes": dense, "nbytes": m.nbytes, "ratio": m.nbytes / dense})
    return rows


def median_seconds(fns, x: torch.Tensor, repeats: int = 21, min_sample_s: float = 2e-3) -> list[float]:
    """Median seconds per call of each fn(x), under torch.inference_mode.

    Each fn is warmed up, then timed in samples of n calls (n makes a sample last >= min_sample_s,
    so timer resolution does not matter for microsecond calls); the fns' samples are interleaved
    so that load from elsewhere on the machine hits them alike.
    """
    with torch.inference_mode():
        counts = []
        for fn in fns:
            fn(x)
            start = time.perf_counter()
            fn(x)
            once = time.perf_counter() - start
            counts.append(max(1, math.ceil(min_sample_s / max(once, 1e-7))))
            for _ in range(counts[-1]):  # warm-up: one sample's worth
                fn(x)
        samples = [[] for _ in fns]
        for _ in range(repeats):
            for fn, n, out in zip(fns, counts, samples):
                start = time.perf_counter()
                for _ in range(n):
                    fn(x)
                out.append((time.perf_counter() - start) / n)
    return [statistics.median(s) for s in samples]


def speed_table(dense: nn.Module, sparse: nn.Module, in_features: int, batches, *, repeats: int = 21,
                seed: int = 0) -> list[dict]:
    """Per batch size: dense and sparse median ms, speedup (dense / sparse), the largest
    |sparse − dense| output difference, `paths` (what each SparseLinear runs at that batch: its
    kernel's backend, or "dense" where "auto" takes the dense product) and torch's thread count."""
    gen = torch.Generator().manual_seed(seed)
    layers = [m for m in sparse.modules() if isinstance(m, SparseLinear)]
    rows = []
    for batch in batches:
        x = torch.randn(batch, in_features, generator=gen)
        dense_s, sparse_s = median_seconds([dense, sparse], x, repeats)
        with torch.inference_mode():
            diff = (sparse(x) - dense(x)).abs().max().item()
        rows.append({"batch": batch, "paths": ",".join(m.resolved_backend(batch) for m in layers),
                     "dense_ms": 1e3 * dense_s, "sparse_ms": 1e3 * sparse_s, "speedup": dense_s / sparse_s,
                     "max_diff": diff, "threads": torch.get_num_threads()})
    return rows


def machine_info(threads: int) -> dict:
    """What the speed figures depend on: CPU model, the vector instruction sets lqkernels' CPU
    kernels and torch's use here (lqkernels: default, avx2, avx512; torch.backends.cpu: DEFAULT,
    AVX2, AVX512, ...), logical CPUs, the threads used for timing, last-level cache, load average,
    torch version and GPU."""
    return {"cpu": cpu_model(), "isa": torch.backends.cpu.get_cpu_capability(),
            "lqk_isa": _backend.cpu_capability() or "no C++ kernels", "cpus": os.cpu_count(),
            "threads": threads, "llc_mb": LAST_LEVEL_CACHE_BYTES / 2**20,
            "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none"}


def machine_line(info: dict) -> str:
    """machine_info() as one line, printed above every speed table and on the plot."""
    cache = f", last-level cache {info['llc_mb']:.0f} MB" if info["llc_mb"] else ""
    load = "" if info["load"] is None else f", load average {info['load']:.1f}"
    return (f"{info['cpu']} (lqkernels {info['lqk_isa']}, torch {info['isa']}), {info['threads']} of "
            f"{info['cpus']} CPUs timed{cache}{load}, "
            f"torch {info['torch']}, GPU: {info['gpu']}")


def save_plot(path: Path, rounds: list[dict], speed: list[dict], dense_accuracy: float | None,
              layers: list[dict], machine: str) -> None:
    """Writes story_figure(...) as a PNG at `path` (creating its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    story_figure(rounds, speed, dense_accuracy, layers, machine).savefig(path, dpi=100)


def story_figure(rounds: list[dict], speed: list[dict], dense_accuracy: float | None, layers: list[dict],
                 machine: str):
    """The story in four panels (a matplotlib Figure on the Agg canvas: no display needed): accuracy by SAP
    round (with the weights left under each round; without data, the weights left), the certified
    bound against the measured output change of each step (log scale), bytes per layer as
    nn.Linear and as sparsify_ stored it, and the sparse model's speed-up per batch size with the
    1x line. Legends sit below their panels, never on the data; the machine line is the footer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 9.5), layout="constrained")
    FigureCanvasAgg(fig)
    (acc, cert), (mem, fast) = fig.subplots(2, 2)

    def legend_below(ax, offset=-0.16):
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, offset), ncol=2, frameon=False, fontsize=9)

    steps = [r["round"] for r in rounds]
    ticks = ["0\ndense"] + [f"{t}\n{_pct(r['remaining'])} left" for t, r in zip(steps, rounds)]
    if dense_accuracy is not None:
        acc.plot([0] + steps, [100 * dense_accuracy] + [100 * r["acc_tuned"] for r in rounds], "o-",
                 label="after fine-tuning (round 0: dense)")
        acc.plot(steps, [100 * r["acc_pruned"] for r in rounds], "x--", label="right after pruning")
        acc.set(ylabel="validation accuracy (%)", title="1. Accuracy by SAP round")
    else:
        acc.plot([0] + steps, [100] + [100 * r["remaining"] for r in rounds], "o-", label="weights left")
        acc.set(ylabel="prunable weights left (%)", ylim=(0, 105), title="1. Weights left by SAP round (no data: no accuracy)")
    acc.set_xticks([0] + steps, ticks)
    acc.set_xlabel("round (weights left after it)")
    legend_below(acc, -0.24)

    def positive(key):  # a log axis has no 0: a step that pruned nothing is named under its tick
        return [r[key] if r[key] > 0 else math.nan for r in rounds]

    cert.plot(steps, positive("change"), "o-", label="measured: max ||output change||_2")
    if all(r["bound"] is not None for r in rounds):
        cert.plot(steps, positive("bound"), "s--", label="certified bound (theory.certify)")
        cert.plot(steps, positive("sterm_bound"), "^:", label="s-term bound (l_q norms only)")
        cert.set_title("2. What each step may change vs what it changed")
    else:
        cert.set_title("2. Output change of each step (no certificate for this model)")
    cert.set(yscale="log", xlabel="round", ylabel="output change (log)")
    cert.set_xticks(steps, [f"{r['round']}" if r["change"] > 0 or (r["bound"] or 0) > 0 else
                            f"{r['round']}\nnothing pruned" for r in rounds])
    legend_below(cert, -0.24)

    names = [row["layer"] for row in layers] + ["whole model"]
    dense_bytes = [row["dense_bytes"] for row in layers]
    sparse_bytes = [row["nbytes"] for row in layers]
    dense_bytes.append(sum(dense_bytes))
    sparse_bytes.append(sum(sparse_bytes))
    x = range(len(names))
    mem.bar([i - 0.2 for i in x], [b / 1e6 for b in dense_bytes], 0.4, color="0.6", label="as nn.Linear (dense)")
    bars = mem.bar([i + 0.2 for i in x], [b / 1e6 for b in sparse_bytes], 0.4, color="C2", label="after sparsify_")
    formats = [row["format"] for row in layers] + [f"{sparse_bytes[-1] / dense_bytes[-1]:.2f}x"]
    mem.bar_label(bars, formats, fontsize=8, padding=2)
    mem.set_xticks(list(x), names)
    mem.set(ylabel="MB (weights and bias)", xlabel="layer (label: stored format)", title="3. Bytes, dense vs sparse")
    mem.set_ylim(0, max(dense_bytes) / 1e6 * 1.15)
    legend_below(mem)

    batches = [r["batch"] for r in speed]
    fast.plot(batches, [r["speedup"] for r in speed], "o-", color="C3", label="sparsify_(format='auto')")
    fast.axhline(1.0, color="0.4", linestyle=":", label="1x: as fast as the dense (masked) model")
    fast.set(xscale="log", xlabel="batch size", ylabel="speed-up (dense time / sparse time)",
             title=f"4. Speed per batch ({speed[0]['threads']} thread(s); below 1x: slower)")
    fast.set_xticks(batches, [str(b) for b in batches])
    fast.minorticks_off()
    fast.set_ylim(0, max(1.2, max(r["speedup"] for r in speed) * 1.15))
    legend_below(fast)
    for ax in (acc, cert, mem, fast):
        ax.grid(alpha=0.3)
    fig.suptitle(f"Speed measured on: {machine}", y=0.005, va="bottom", fontsize=8, color="0.3")
    fig.get_layout_engine().set(h_pad=0.25, rect=(0, 0.03, 1, 0.97))
    return fig


# ---- the story -----------------------------------------------------------------------------------
def _first_linear(model: nn.Module) -> nn.Linear:
    """The model's first layer with parameters, which must be an nn.Linear to feed it random rows."""
    for module in model.modules():
        if not list(module.children()) and list(module.parameters(recurse=False)):
            if isinstance(module, nn.Linear):
                return module
            raise ValueError(f"the demo feeds (n, in_features) random inputs to --model, so its first layer "
                             f"with weights must be an nn.Linear, got {type(module).__name__}")
    raise ValueError("--model has no parameters")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", help="your model instead of the digits MLP: package.module:factory or a "
                                        "torch.save'd module (random inputs, no accuracy)")
    parser.add_argument("--weights", help="with --model: a state_dict file to load into it first")
    parser.add_argument("--seed", type=int, default=0, help="seed for split, init, shuffling and inputs")
    parser.add_argument("--hidden", type=int, nargs="+", default=list(DEMO_HIDDEN), help="digits MLP hidden widths")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs, batch 64")
    parser.add_argument("--q", type=float, default=0.5,
                        help="0<q<1: the report's l_q norm, SI_q and PQI(q,1); SAP's (p, q) = (q, 1)")
    parser.add_argument("--rounds", type=int, default=3, help="SAP rounds")
    parser.add_argument("--gamma", type=float, default=8.0, help="SAP gamma: multiplies Theorem 2's prune fraction")
    parser.add_argument("--beta", type=float, default=0.9, help="SAP beta: the most pruned per round")
    parser.add_argument("--scope", choices=prune.SCOPES, default="neuron", help="SAP scope")
    parser.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning epochs after each round")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256], help="batch sizes to time")
    parser.add_argument("--repeats", type=int, default=21, help="timed samples per batch size and model")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads while timing (1: on a shared machine, thread pools that spin "
                             "while other processes hold the cores make timings meaningless)")
    parser.add_argument("--plot", type=Path, default=Path("out/demo.png"), help="where to save the plot")
    return parser


def _digits(args):
    """Loads digits and trains the MLP; returns (model, name, x_eval, evaluate, fine_tune, accuracy)."""
    t0 = time.perf_counter()
    data = digits_split(args.seed)
    x_tr, y_tr, x_va, y_va = data
    t1 = time.perf_counter()
    model, dense_accuracy = train_digits_mlp(args.seed, args.epochs, data=data, hidden=args.hidden)
    name = "digits MLP " + "-".join(map(str, [64, *args.hidden, 10]))
    print(f"{name}: validation accuracy {dense_accuracy:.2%} ({args.epochs} epochs, seed {args.seed}; "
          f"data loaded in {t1 - t0:.2f} s, trained in {time.perf_counter() - t1:.2f} s)")

    def evaluate(m):
        return accuracy(m, x_va, y_va)

    def fine_tune(m, t):
        with _training_context():
            _fit(m, x_tr, y_tr, args.seed + t, args.finetune_epochs)

    return model, name, x_va, evaluate, fine_tune, dense_accuracy


def _user_model(args, parser):
    """The --model, in eval mode, and random inputs for it; exits with status 2 on a bad model."""
    try:
        model = load_model(args.model, args.weights)
        in_features = _first_linear(model).in_features
    except (ValueError, TypeError, OSError) as e:
        parser.error(str(e))
    print(f"{args.model}: no data, so no accuracy and no fine-tuning; outputs measured on 256 random "
          f"N(0, 1) rows of {in_features} features (seed {args.seed}).")
    return model.eval(), torch.randn(256, in_features, generator=torch.Generator().manual_seed(args.seed))


def _print_rounds(rounds: list[dict], with_accuracy: bool) -> None:
    columns = [("round", "round", "{}"), ("remaining", "remaining_pct", "{}"), ("PQI before", "pqi", "{:.4f}"),
               ("measured change", "change", "{:.4g}"), ("bound", "bound_text", "{}")]
    if with_accuracy:
        columns += [("acc. pruned", "acc_pruned", "{:.2%}"), ("acc. fine-tuned", "acc_tuned", "{:.2%}")]
    print(format_table(columns, [r | {"remaining_pct": _pct(r["remaining"]),
                                      "bound_text": "n/a" if r["bound"] is None else f"{r['bound']:.4g}"}
                                 for r in rounds]))
    if rounds[0]["bound"] is None:
        print(f"   no certificate: {rounds[0]['no_bound']}")


def _dense_copy_bytes(sparse: nn.Module, batches) -> int:
    """Bytes of the dense copies of W that "auto" layers cache where they run the dense product."""
    return sum(m.out_features * m.in_features * m.values.element_size() for m in sparse.modules()
               if isinstance(m, SparseLinear) and m.format != "dense"
               and any(m.resolved_backend(b) == "dense" for b in batches))


def main(argv: list[str] | None = None, prog: str = "python -m lqkernels.demo") -> dict:
    """Runs the demo and prints it; returns what it printed as data: report
    (CompressibilityReport), rounds (sap_rounds), dense_accuracy (None with --model), model (the
    pruned model, masks in torch.nn.utils.prune), sparse (its sparsify_'d copy), layers
    (layer_table), bytes (dense, sparse: whole models), speed (speed_table), machine (machine_line:
    what the timings depend on), plot (its path)."""
    parser = _parser(prog)
    args = parser.parse_args(argv)
    if not 0 < args.q < 1:
        parser.error(f"--q must be in (0, 1), got {args.q}")
    if min(args.rounds, args.repeats, args.threads) < 1 or min(args.epochs, args.finetune_epochs) < 0:
        parser.error("--rounds, --repeats and --threads must be >= 1, --epochs and --finetune-epochs >= 0")
    if min(args.batches) < 1 or min(args.hidden) < 1:
        parser.error(f"--batches and --hidden must be >= 1, got {args.batches} and {args.hidden}")
    start = time.perf_counter()
    if args.model:
        model, x_eval = _user_model(args, parser)
        name, evaluate, fine_tune, dense_accuracy = args.model, None, None, None
    else:
        model, name, x_eval, evaluate, fine_tune, dense_accuracy = _digits(args)

    report = prune.compressibility(model, q=args.q, p=args.q, pq=1.0, scope="neuron")
    print(f"\n1. Compressibility: keep ratio = Theorem 2's fraction at eta = 0, what one SAP step with "
          f"gamma = 1 keeps\n{report}")

    tuning = f", {args.finetune_epochs} epochs of fine-tuning after each round" if fine_tune else ", no fine-tuning"
    print(f"\n2. SAP (p, q) = ({args.q:g}, 1), {args.scope} scope, gamma = {args.gamma:g}, beta = {args.beta:g}"
          f"{tuning}.\n   bound: theory.certify's guaranteed max ||output change||_2 of the step for every input "
          f"with ||x||_2 <= {x_eval.norm(dim=1).max().item():.3g}\n   (the longest row of the "
          f"{'validation set' if fine_tune else 'random inputs'}); measured: the largest change on those rows.")
    rounds = sap_rounds(model, args.rounds, x_eval, p=args.q, gamma=args.gamma, beta=args.beta,
                        scope=args.scope, fine_tune=fine_tune, evaluate=evaluate)
    _print_rounds(rounds, dense_accuracy is not None)
    if dense_accuracy is None:
        print("\n3. Accuracy: skipped (no data for --model)")
    else:
        print(f"\n3. Accuracy: {dense_accuracy:.2%} dense, {rounds[0]['acc_pruned']:.2%} right after the first "
              f"pruning step, {rounds[-1]['acc_tuned']:.2%} after fine-tuning "
              f"({_pct(rounds[-1]['remaining'])} of the weights left)")

    dense = remove_masks(_copy(model, x_eval))  # the masked dense model: nn.Linear with zeros
    sparse = sparsify_(_copy(model, x_eval))
    layers = layer_table(sparse)
    model_bytes = {"dense": _bytes([*dense.parameters(), *dense.buffers()]),
                   "sparse": _bytes([*sparse.parameters(), *sparse.buffers()])}
    size = model_bytes["sparse"] / model_bytes["dense"]
    print("\n4. lqkernels.sparsify_(model): format 'auto' per layer (dense where no sparse kernel is "
          "predicted faster)")
    print(format_table([("layer", "layer", "{}"), ("shape", "shape", "{}"), ("kept", "kept", "{:.1%}"),
                        ("format", "format", "{}"), ("bytes as nn.Linear", "dense_bytes", "{:,}"),
                        ("bytes", "nbytes", "{:,}"), ("ratio", "ratio", "{:.3f}")], layers))
    for row in sparse.sparsify_report.swapped:
        if row["why"]:
            print(f"   layer {row['layer']} stored dense: {row['why']}")
    print(f"   whole model: {model_bytes['dense']:,} bytes dense, {model_bytes['sparse']:,} sparse ({size:.2f}x)")

    with _threads(args.threads):
        speed = speed_table(dense, sparse, x_eval.shape[1], args.batches,
                            repeats=args.repeats, seed=args.seed)
    machine = machine_line(machine_info(args.threads))
    print(f"\n5. Speed against the dense masked model: CPU, torch.inference_mode, median of {args.repeats} "
          f"interleaved\n   samples after warm-up. path: per layer, the kernel's backend at that batch, or 'dense' "
          f"where 'auto'\n   runs the dense product. These times depend on the machine (CPU vector width, "
          f"cache size, load):\n   machine: {machine}")
    print(format_table([("batch", "batch", "{}"), ("path", "paths", "{}"), ("dense ms", "dense_ms", "{:.4f}"),
                        ("sparse ms", "sparse_ms", "{:.4f}"), ("speed-up", "speedup", "{:.2f}x"),
                        ("max |sparse - dense|", "max_diff", "{:.2g}")], speed))
    cached = _dense_copy_bytes(sparse, args.batches)
    if cached:
        print(f"   memory: where 'auto' runs the dense product, it keeps a dense copy of W outside training "
              f"(+{cached:,} bytes here, not counted in 4.)")

    save_plot(args.plot, rounds, speed, dense_accuracy, layers, machine)
    accuracy_text = "" if dense_accuracy is None else (
        f"; accuracy {dense_accuracy:.2%} dense -> {rounds[0]['acc_pruned']:.2%} after the first step -> "
        f"{rounds[-1]['acc_tuned']:.2%} after fine-tuning")
    bound_text = "" if rounds[0]["bound"] is None else (
        f"; the first step certified to move any output by <= {rounds[0]['bound']:.3g} "
        f"(measured {rounds[0]['change']:.3g})")
    speed_text = ", ".join(f"batch {r['batch']} {r['speedup']:.2f}x" for r in speed)
    print(f"\n6. Summary: {name}: SAP kept {_pct(rounds[-1]['remaining'])} of the prunable weights in "
          f"{args.rounds} rounds{accuracy_text}{bound_text}.\n   Sparse model: {size:.2f}x the bytes of the "
          f"dense one; speed-up {speed_text} (below 1x: slower).\n   Plot: wrote {args.plot}. "
          f"Demo took {time.perf_counter() - start:.1f} s.")
    return {"report": report, "rounds": rounds, "dense_accuracy": dense_accuracy, "model": model,
            "sparse": sparse, "layers": layers, "bytes": model_bytes, "speed": speed, "machine": machine,
            "plot": args.plot}


if __name__ == "__main__":
    main()
