"""Ops and pruning on data spread over processes (DTensor on a 1-D mesh, or group=), on gloo worlds
of 2 and 4 CPU processes: bit-identical masks and counts, measures to rounding, against the
single-process answer on the same seed (tests/distributed_cases.py); every rank raising the same
error for bad input on one rank; no hang (each case runs under a deadline)."""
from __future__ import annotations

import os
import re

import pytest
import torch.distributed as dist

from distributed_world import World

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

SIZES = (2, 4)
_worlds: dict[int, World] = {}


@pytest.fixture(scope="module", params=SIZES, ids=[f"{n}ranks" for n in SIZES])
def world(request):
    size = request.param
    if size not in _worlds or not _worlds[size].processes:
        _worlds[size] = World(size)
    yield _worlds[size]


def teardown_module():
    for w in _worlds.values():
        w.shutdown()


def ok(results) -> list:
    """The ranks' return values, or a failure showing what the first failing rank raised."""
    for rank, (status, value) in enumerate(results):
        if status != "ok":
            pytest.fail(f"rank {rank} raised {value[0]}: {value[1]}\n{value[2]}")
    return [value for _, value in results]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_measures_on_dtensors(world, dtype):
    assert ok(world.run("measures_dtensor", 0, dtype))[0] > 0


def test_measures_with_group(world):
    ok(world.run("measures_group", 1))


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_topk_on_dtensors_heavy_ties(world, dtype):
    ok(world.run("topk_dtensor", 2, dtype))


def test_topk_with_group(world):
    ok(world.run("topk_group", 3))


def test_nm_mask_on_dtensors(world):
    ok(world.run("nm_dtensor", 9))


def test_global_topk_on_dtensors(world):
    ok(world.run("global_dtensor", 4))


def test_global_topk_with_group_and_empty_ranks(world):
    ok(world.run("global_group", 5))


@pytest.mark.parametrize("case", ["different_k", "different_q", "bad_k_one_rank", "k_above_candidates",
                                  "nan_one_rank", "global_nan_one_rank", "global_different_k",
                                  "mask_placed_elsewhere", "plain_mask_for_dtensor", "partial", "mesh_2d",
                                  "different_scope", "different_dtype", "nm_split_groups", "sparsify_sharded"])
def test_every_rank_raises_the_same(world, case):
    raised = ok(world.run("raises", case, timeout=90))
    assert all(r == raised[0] for r in raised), raised
    kind, message = raised[0]
    assert kind in ("ValueError", "TypeError"), raised[0]
    expected = {"different_k": "disagree on k", "different_q": "disagree on qs", "bad_k_one_rank": "k must be >= 0",
                "k_above_candidates": "candidates over all ranks", "nan_one_rank": "NaN in slice 0",
                "global_nan_one_rank": "NaN", "global_different_k": "disagree on k",
                "mask_placed_elsewhere": "must match", "plain_mask_for_dtensor": "mask must be one too",
                "partial": "Partial", "mesh_2d": "1-D", "different_scope": "disagree on scope",
                "different_dtype": "different dtypes", "sparsify_sharded": "sharded DTensor",
                "nm_split_groups": "split groups"}[case]
    assert expected in message, message


@pytest.mark.parametrize("how", ["fsdp", "shard1"])
def test_prune_steps_on_sharded_models(world, how):
    assert ok(world.run("prune_steps", 6, how, timeout=240))[0] > 0


def test_fsdp_finetune_keeps_masks(world):
    losses = ok(world.run("fsdp_finetune", 7))
    assert all(x == losses[0] for x in losses)


def test_fsdp_iterative(world):
    ok(world.run("fsdp_iterative", 8, timeout=240))


# gloo's worker thread lets go of a collective's tensors a moment after the call returns (a plain
# dist.all_reduce left ~15% of its temporaries held on the development machine); freeing the last
# reference there at interpreter exit aborts the process when the process group outlives
# destroy_process_group (the README's torchrun example did, 1 run in 25). lqkernels' collectives
# return only once the worker has let go.
def test_collectives_return_once_the_worker_lets_go(world):
    results = ok(world.run("held_after_collectives", 300))
    assert [held for held, _, _ in results] == [0] * world.size
    assert all(registered for _, _, registered in results)  # and the workers get a moment at exit


def test_every_collective_waits_for_the_workers():
    # lqkernels issues its collectives through _distributed.all_reduce / all_gather only.
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lqkernels")
    # the two wrappers' own calls, and agree()'s all_gather_object (never an op's last collective)
    wrappers = {"_distributed.py": 3}
    for name in sorted(os.listdir(root)):
        if name.endswith(".py"):
            with open(os.path.join(root, name)) as f:
                calls = len(re.findall(r"\b(?:dist|torch\.distributed)\.(?:all_reduce|all_gather|reduce_scatter)\w*\(", f.read()))
            assert calls == wrappers.get(name, 0), f"lqkernels/{name}: {calls} direct collective calls"
