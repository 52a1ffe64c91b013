"""CPU benchmarks of the measure ops against their torch peers (issue 2's claims).

W = 4096 x 4096 float32, dim=1, 2 threads. Each group holds ours and its peer: benchmarks/ratios.py
turns a run's JSON into the ratio table of benchmarks/RESULTS.md.
"""
import pytest
import torch

from lqkernels import ops
from peers import torch_gini, torch_lq_norm, torch_pq_index


@pytest.fixture(scope="module")
def weight():
    return torch.randn(4096, 4096, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("q", [0.5, 0.3, 1.7, 1.0, 2.0])
def test_lq_norm_ours(benchmark, weight, q):
    benchmark.group = f"lq_norm q={q}"
    benchmark(ops.lq_norm, weight, q, 1)


@pytest.mark.parametrize("q", [0.5, 0.3, 1.7, 1.0, 2.0])
def test_lq_norm_peer(benchmark, weight, q):
    benchmark.group = f"lq_norm q={q}"
    benchmark(torch_lq_norm, weight, q, 1)


def test_pq_index_ours(benchmark, weight):
    benchmark.group = "pq_index (0.5, 1)"
    benchmark(ops.pq_index, weight, 0.5, 1.0, 1)


def test_pq_index_peer(benchmark, weight):
    benchmark.group = "pq_index (0.5, 1)"
    benchmark(torch_pq_index, weight, 0.5, 1.0, 1)


def test_pq_index_one_read_floor(benchmark, weight):
    """The floor: one vector_norm(W, 1) reads W once with the cheapest per-element work."""
    benchmark.group = "pq_index (0.5, 1)"
    benchmark(torch.linalg.vector_norm, weight, 1, 1)


def test_lq_powsum_grid_ours(benchmark, weight):
    """The authors' (p, q) grid needs ten exponents; ours does five per pass (shared log2)."""
    benchmark.group = "powsum grid 0.1..1.0"
    qs = [0.1 * k for k in range(1, 11)]
    benchmark(lambda: [ops.lq_powsum(weight, qs[i:i + 5], 1) for i in (0, 5)])


def test_lq_powsum_grid_peer(benchmark, weight):
    benchmark.group = "powsum grid 0.1..1.0"
    qs = [0.1 * k for k in range(1, 11)]
    benchmark(lambda: [weight.abs().pow(q).sum(1) for q in qs])


@pytest.mark.parametrize("dim", [1, None], ids=["rows", "whole"])
def test_gini_ours(benchmark, weight, dim):
    benchmark.group = f"gini {'per row' if dim else 'whole tensor'}"
    benchmark(ops.gini, weight, dim)


@pytest.mark.parametrize("dim", [1, None], ids=["rows", "whole"])
def test_gini_peer(benchmark, weight, dim):
    benchmark.group = f"gini {'per row' if dim else 'whole tensor'}"
    benchmark(torch_gini, weight, dim)
