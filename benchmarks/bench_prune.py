"""CPU benchmarks of one pruning step (issue 5's claim): lqkernels.prune against the released
reference procedure of [S] (benchmarks/sap_reference.py).

A stack of four bias-free Linear(4096, 4096) layers: 67.1M float32 parameters (64 Mi), with 50%
random survivors from an earlier round (a second-round step, masks in torch.nn.utils.prune), 2
threads. Ours is the public call on the model, including installing the masks through
torch.nn.utils.prune (weight_orig * weight_mask recomputed); the peer computes the same step over
(weights, masks) and returns new masks and zeroed weights. Groups hold `*_ours` and `*_peer`:
benchmarks/ratios.py turns a run's JSON into the table of benchmarks/RESULTS.md.
"""
import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from lqkernels import prune
from sap_reference import released_lt_step, released_sap_step

LAYERS, WIDTH = 4, 4096


@pytest.fixture(scope="module")
def stack():
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(WIDTH, WIDTH, generator=g) for _ in range(LAYERS)]
    masks = [torch.rand(WIDTH, WIDTH, generator=g) < 0.5 for _ in range(LAYERS)]
    return weights, masks


@pytest.fixture(scope="module")
def zeroed(stack):
    """The peer's inputs: weights zero where pruned (the released code's parameters between steps)."""
    weights, masks = stack
    return [torch.where(m, w, 0.0) for w, m in zip(weights, masks)], masks


def fresh_model(stack):
    """A pruned model over the shared weights (no copy): new modules, the stack's masks installed."""
    weights, masks = stack
    model = nn.Sequential(*[nn.Linear(WIDTH, WIDTH, bias=False, device="meta") for _ in weights])
    for layer, w, m in zip(model, weights, masks):
        layer.weight = nn.Parameter(w)
        torch_prune.custom_from_mask(layer, "weight", m)
    return (model,), {}


def run_ours(benchmark, stack, step):
    benchmark.pedantic(step, setup=lambda: fresh_model(stack), rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("scope", ["neuron", "layer", "global"])
def test_sap_ours(benchmark, stack, scope):
    benchmark.group = f"sap step, {scope} scope, 64M params"
    run_ours(benchmark, stack, lambda model: prune.sap(model, scope=scope))


@pytest.mark.parametrize("scope", ["neuron", "layer", "global"])
def test_sap_peer(benchmark, zeroed, scope):
    benchmark.group = f"sap step, {scope} scope, 64M params"
    benchmark.pedantic(released_sap_step, args=(*zeroed, scope), rounds=3, iterations=1)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_lt_ours(benchmark, stack, scope):
    benchmark.group = f"lottery-ticket step (20%), {scope} scope, 64M params"
    run_ours(benchmark, stack, lambda model: prune.magnitude(model, 0.2, scope=scope))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_lt_peer(benchmark, zeroed, scope):
    benchmark.group = f"lottery-ticket step (20%), {scope} scope, 64M params"
    benchmark.pedantic(released_lt_step, args=(*zeroed, scope), rounds=3, iterations=1)
