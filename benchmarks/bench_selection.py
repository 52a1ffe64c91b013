"""CPU benchmarks of selection against the torch ways to do it (issue 3's claims).

Per row: W = 4096 x 4096 float32, magnitude ranking, k_i uniform in [0.05n, 0.95n].
Global: 16 tensors of 4M float32 (64M in all), k = half. 2 threads; see benchmarks/ratios.py.
"""
import pytest
import torch

from lqkernels import ops
from peers import torch_global_masks, torch_kthvalue_mask, torch_rowwise_topk_mask


@pytest.fixture(scope="module")
def weight():
    return torch.randn(4096, 4096, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def per_row_k():
    n = 4096
    return torch.randint(int(0.05 * n), int(0.95 * n) + 1, (4096,), generator=torch.Generator().manual_seed(1))


def test_per_row_k_ours(benchmark, weight, per_row_k):
    benchmark.group = "per-row k topk_mask"
    benchmark(ops.topk_mask, weight, per_row_k, magnitude=True)


def test_per_row_k_peer(benchmark, weight, per_row_k):
    """Sort |W| per row, gather the k_i-th value, compare."""
    benchmark.group = "per-row k topk_mask"
    benchmark(torch_rowwise_topk_mask, weight, per_row_k)


def test_per_row_k_kthvalue(benchmark, weight):
    """torch.kthvalue with one k for all rows (no per-row k in torch), then a compare."""
    benchmark.group = "per-row k topk_mask"
    benchmark(torch_kthvalue_mask, weight, 2048)


@pytest.fixture(scope="module")
def model_weights():
    gen = torch.Generator().manual_seed(2)
    return [torch.randn(4 * 1024 * 1024, generator=gen).view(2048, 2048) for _ in range(16)]


def test_global_ours(benchmark, model_weights):
    benchmark.group = "global top-k 64M"
    k = sum(t.numel() for t in model_weights) // 2
    benchmark.pedantic(ops.global_topk_masks, (model_weights, k), rounds=5, iterations=1, warmup_rounds=1)


def test_global_peer(benchmark, model_weights):
    benchmark.group = "global top-k 64M"
    k = sum(t.numel() for t in model_weights) // 2
    benchmark.pedantic(torch_global_masks, (model_weights, k), rounds=3, iterations=1, warmup_rounds=1)


def test_nm_2_4_ours(benchmark, weight):
    benchmark.group = "2:4 mask"
    benchmark(ops.nm_mask, weight, 2, 4)


def test_nm_2_4_peer(benchmark, weight):
    """The usual torch recipe: topk over groups of 4, scattered into a mask."""
    benchmark.group = "2:4 mask"

    def peer(w):
        groups = w.abs().reshape(-1, 4)
        return torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.topk(2, dim=1).indices, True).view(w.shape)
    benchmark(peer, weight)
