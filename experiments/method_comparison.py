"""What studies 4 and 5 share: the pruning methods they compare, a trainer that keeps the best
validation checkpoint, one prune–retrain run per method through lqkernels.prune.iterative, the
validation-based choice of a round, and the plots.

Every method starts from the same initialisation and rewinds to it after each pruning step
(method.md §3: SAP's Algorithm 1 and the lottery ticket both rewind), so round 0 is the same
dense model for all of them and the curves differ only by which weights each rule removes.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from lqkernels import prune

# label -> keyword arguments of prune.iterative. lq_neuron(q) is SAP's bound with (p, q) = (q, 1)
# in neuron scope (keeping at least one weight per row), so "lq neuron" doubles as neuron-wise
# SAP(0.5, 1); SAP itself runs in layer scope. η = 0.1 is [S]'s knob for pruning harder: at
# η = 0 the bound stops pruning once the survivors' magnitudes are nearly equal.
METHODS = {
    "lq neuron": dict(method="lq_neuron", p=0.5),
    "lq neuron η=0.1": dict(method="lq_neuron", p=0.5, eta=0.1),
    "SAP layer": dict(method="sap", scope="layer", p=0.5, q=1.0),
    "SAP layer η=0.1": dict(method="sap", scope="layer", p=0.5, q=1.0, eta=0.1),
    "LT (20%/round)": dict(method="lt", scope="layer", amount=0.2),
    "OS (0.8^t)": dict(method="os", scope="layer", amount=0.2),
}


@contextlib.contextmanager
def single_threaded():
    """Runs the body with one intra-op thread: matmuls this small gain nothing from more, and on a
    busy 2-core machine the thread pool's spin-waiting made such training 10-100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def mlp(widths: list[int]) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (none after the last)."""
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        layers += [nn.Linear(fan_in, fan_out)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    return nn.Sequential(*layers)


@dataclass
class Task:
    """Train / validation / test tensors, the training loss and the reported score.

    score(output, target) -> float, higher is better (accuracy, R²)."""
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    loss: Callable
    score: Callable
    score_name: str

    def evaluate(self, model: nn.Module, split: str) -> tuple[float, float]:
        """(loss, score) of `model` on split "val" or "test"."""
        x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
        model.eval()
        with torch.no_grad():
            out = model(x)
            return self.loss(out, y).item(), self.score(out, y)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def r_squared(pred: torch.Tensor, target: torch.Tensor) -> float:
    return 1 - ((pred - target) ** 2).sum().item() / ((target - target.mean()) ** 2).sum().item()


def trainer(task: Task, *, epochs: int, batch_size: int, lr: float, seed: int) -> Callable[[nn.Module], None]:
    """train_fn for prune.iterative: minibatch Adam from the model's current (rewound) weights, then
    the epoch with the lowest validation loss is put back (early stopping chosen on validation, never
    on test: the pitfall method.md §5 names). The optimizer is made per call, as iterative()
    asks, and the shuffling restarts from `seed` so every round trains on the same batch order."""
    def train_fn(model: nn.Module) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)
        shuffle = torch.Generator().manual_seed(seed)
        best_loss, best = math.inf, None
        for _ in range(epochs):
            model.train()
            for idx in torch.randperm(len(task.x_train), generator=shuffle).split(batch_size):
                opt.zero_grad(set_to_none=True)
                task.loss(model(task.x_train[idx]), task.y_train[idx]).backward()
                opt.step()
            val_loss, _ = task.evaluate(model, "val")
            if val_loss < best_loss:
                best_loss, best = val_loss, [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, value in zip(params, best):
                p.copy_(value)
    return train_fn


def evaluator(task: Task) -> Callable[[nn.Module], dict]:
    """eval_fn for prune.iterative: loss and score on validation and test."""
    def eval_fn(model: nn.Module) -> dict:
        (val_loss, val_score), (test_loss, test_score) = task.evaluate(model, "val"), task.evaluate(model, "test")
        return {"val_loss": val_loss, "val_score": val_score, "test_loss": test_loss, "test_score": test_score}
    return eval_fn


def run_methods(task: Task, make_model: Callable[[], nn.Module], *, rounds: int, methods: dict = METHODS,
                **train) -> dict[str, prune.History]:
    """One prune.iterative run per method, each on a fresh `make_model()` (which must be
    deterministic: every method starts from the same weights); `train`: trainer()'s keywords."""
    train_fn, eval_fn = trainer(task, **train), evaluator(task)
    with single_threaded():
        return {label: prune.iterative(make_model(), train_fn, eval_fn, rounds=rounds, progress=False, **kwargs)
                for label, kwargs in methods.items()}


def sparsest_within(history: prune.History, tolerance: float) -> dict:
    """The round with the fewest weights whose validation score is at most `tolerance` below the
    dense model's (round 0): compression chosen on validation, reported on test."""
    floor = history.rounds[0]["metrics"]["val_score"] - tolerance
    return min((r for r in history.rounds if r["metrics"]["val_score"] >= floor), key=lambda r: r["remaining_total"])


def best_on_validation(history: prune.History) -> dict:
    """The round with the highest validation score (the sparser one on ties)."""
    return max(history.rounds, key=lambda r: (r["metrics"]["val_score"], -r["remaining_total"]))


def per_layer(values: dict, scale: float = 1.0, digits: int = 1) -> str:
    """A round's per-weight numbers (History's `remaining` or `pqi`) as one cell: "a / b / c"."""
    return " / ".join(f"{scale * v:.{digits}f}" for v in values.values())


def score_at(history: prune.History, percent: float) -> float | None:
    """Test score at `percent` % of the weights remaining, interpolated linearly in log(remaining)
    between the two rounds around it (methods prune at different rates, so their rounds do not line
    up); None if the method never got that sparse."""
    rounds = history.rounds[::-1]  # remaining ascending, as np.interp wants
    left = [math.log(r["remaining_total"]) for r in rounds]
    if left[0] > math.log(percent / 100):
        return None
    return float(np.interp(math.log(percent / 100), left, [r["metrics"]["test_score"] for r in rounds]))


def mean_curve(runs: list[prune.History], value: Callable[[dict], float]) -> tuple[list[float], list[float]]:
    """Mean and sample standard deviation over runs (seeds) of value(round), round by round
    (a spread of 0 for a single run)."""
    table = np.array([[value(r) for r in h.rounds] for h in runs])
    spread = table.std(0, ddof=1) if len(runs) > 1 else np.zeros(table.shape[1])
    return table.mean(0).tolist(), spread.tolist()


def plot_comparison(axes, runs: dict[str, list[prune.History]], *, score_name: str, title: str) -> None:
    """Panel 0: test score vs weights remaining, one line per method (means over its runs, with the
    seeds' standard deviation as error bars); the other panels: PQI(0.5, 1) of each prunable weight's
    survivors per round (one panel per weight, as many as `axes` has)."""
    layers = list(next(iter(runs.values()))[0].rounds[0]["pqi"])
    for label, histories in runs.items():
        remaining, _ = mean_curve(histories, lambda r: 100 * r["remaining_total"])
        score, spread = mean_curve(histories, lambda r: r["metrics"]["test_score"])
        axes[0].errorbar(remaining, score, yerr=spread, fmt=".-", capsize=2, label=label)
        rounds = range(len(remaining))
        for ax, layer in zip(axes[1:], layers):
            ax.plot(rounds, mean_curve(histories, lambda r: r["pqi"][layer])[0], ".-", label=label)
    axes[0].set(xscale="log", xlabel="weights remaining (%)", ylabel=f"test {score_name}", title=title)
    axes[0].invert_xaxis()
    for ax, layer in zip(axes[1:], layers):
        ax.set(xlabel="round", ylabel="PQI(0.5, 1) of survivors", title=f"{title}: {layer}")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
