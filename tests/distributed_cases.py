"""What tests/test_distributed.py runs on every rank of a gloo world (tests/distributed_world.py).

Each case builds the same data on every rank from a seed, runs the distributed form (DTensor or
group=) and the single-process op on the whole data, and asserts that they agree: masks and
counts bit for bit, measures to rounding (the merge adds the same terms in another order).
Error cases return the message each rank raised, which the test compares across ranks.
"""
from __future__ import annotations

import copy
import functools
import math

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

import lqkernels.ops as ops
from lqkernels import prune

PLACEMENTS = {"shard0": Shard(0), "shard1": Shard(1), "replicate": Replicate()}
MEASURES = {"lq_norm": (ops.lq_norm, {"q": 0.5}), "lq_norm_q2": (ops.lq_norm, {"q": 2.0}),
            "pq_index": (ops.pq_index, {}), "sparsity_index": (ops.sparsity_index, {"q": 0.7}),
            "hoyer": (ops.hoyer, {}), "gini": (ops.gini, {})}


@functools.cache
def mesh():
    return init_device_mesh("cpu", (dist.get_world_size(),))


def rank() -> int:
    return dist.get_rank()


def world() -> int:
    return dist.get_world_size()


def tied(shape, seed: int, dtype=torch.float32, levels: int = 3) -> torch.Tensor:
    """Scores with heavy ties (small integers, ±0 included), the same on every rank."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-levels, levels + 1, shape, generator=g).to(dtype)


def spread(x: torch.Tensor, placement: str) -> DTensor:
    return distribute_tensor(x, mesh(), [PLACEMENTS[placement]])


def column_block(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """This rank's block of x along dim for group= (uneven blocks; the last ranks may get none)."""
    return torch.tensor_split(x, world(), dim)[rank()]


def _close(a: torch.Tensor, b: torch.Tensor, what) -> None:
    assert a.shape == b.shape, (what, a.shape, b.shape)
    assert torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-6, equal_nan=True), (what, a, b)


# ---- measures -----------------------------------------------------------------------------------
def measures_dtensor(seed: int, dtype_name: str) -> int:
    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(7, 9, generator=g) * torch.logspace(-3, 3, 9)).to(dtype)
    m = torch.rand(7, 9, generator=g) > 0.3
    checked = 0
    for placement in PLACEMENTS:
        dx, dm = spread(x, placement), spread(m, placement)
        for dim in (None, 0, 1, (0, 1)):
            for keepdim in (False, True):
                for name, (f, kwargs) in MEASURES.items():
                    got = f(dx, dim=dim, mask=dm, keepdim=keepdim, **kwargs)
                    assert isinstance(got, DTensor), name
                    _close(got.full_tensor(), f(x, dim=dim, mask=m, keepdim=keepdim, **kwargs),
                           (name, placement, dim, keepdim))
                    checked += 1
            sums = ops.lq_powsum(dx, [0.5, 1.0, 2.0], dim, mask=dm)
            want = ops.lq_powsum(x, [0.5, 1.0, 2.0], dim, mask=m)
            _close(sums.sums.full_tensor(), want.sums, ("lq_powsum", placement, dim))
            assert torch.equal(sums.count.full_tensor(), want.count), ("count", placement, dim)
    return checked


def measures_group(seed: int) -> int:
    """Rows split across ranks by column blocks (group=), and whole tensors (dim=None); a rank
    whose block is empty takes part too; NaN on one rank's block gives NaN everywhere."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 7, generator=g) * 1e30
    m = torch.rand(5, 7, generator=g) > 0.4
    checked = 0
    for dim in (1, None):
        for name, (f, kwargs) in MEASURES.items():
            got = f(column_block(x), dim=dim, mask=column_block(m), group=True, **kwargs)
            _close(got, f(x, dim=dim, mask=m, **kwargs), (name, dim))
            checked += 1
    x[2, -1] = math.nan  # on the last rank's block only
    x[3, 0] = math.inf
    for name, (f, kwargs) in MEASURES.items():
        _close(f(column_block(x), dim=1, group=True, **kwargs), f(x, dim=1, **kwargs), (name, "nan/inf"))
    empty = ops.lq_norm(torch.empty(5, 0) if rank() else x[:, :0], 1.0, dim=1, group=True)
    assert torch.equal(empty, torch.zeros(5)), empty
    return checked


# ---- selection ----------------------------------------------------------------------------------
def topk_dtensor(seed: int, dtype_name: str) -> int:
    dtype = getattr(torch, dtype_name)
    x = tied((6, 11), seed, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    m = torch.rand(6, 11, generator=g) > 0.3
    k_rows = torch.minimum(torch.randint(0, 11, (6,), generator=g), m.sum(1))
    k_rows[0], k_rows[1] = 0, m[1].sum()  # k = 0 and k = all candidates
    checked = 0
    for placement in PLACEMENTS:
        dx, dm = spread(x, placement), spread(m, placement)
        for magnitude in (False, True):
            for largest in (True, False):
                flags = {"magnitude": magnitude, "largest": largest}
                got = ops.topk_mask(dx, k_rows, 1, mask=dm, **flags)
                assert got.placements == dx.placements
                assert torch.equal(got.full_tensor(), ops.topk_mask(x, k_rows, 1, mask=m, **flags)), (placement, flags)
                got = ops.topk_threshold(dx, k_rows, 1, mask=dm, **flags).full_tensor()
                assert torch.equal(got, ops.topk_threshold(x, k_rows, 1, mask=m, **flags)), (placement, flags)
                got = ops.topk_mask(dx, 4, 0, **flags).full_tensor()  # along dim 0, an int k
                assert torch.equal(got, ops.topk_mask(x, 4, 0, **flags)), (placement, flags, "dim 0")
                checked += 3
        k_dt = distribute_tensor(k_rows, mesh(), [Shard(0) if placement == "shard0" else Replicate()])
        assert torch.equal(ops.topk_mask(dx, k_dt, 1, mask=dm).full_tensor(), ops.topk_mask(x, k_rows, 1, mask=m))
    return checked


def topk_group(seed: int) -> int:
    """Each rank a column block of every row (group=), heavy ties, per-row k."""
    x = tied((8, 13), seed, torch.float64, levels=2)
    g = torch.Generator().manual_seed(seed + 2)
    k_rows = torch.randint(0, 14, (8,), generator=g)
    got = ops.topk_mask(column_block(x), k_rows, 1, group=True, magnitude=True)
    assert torch.equal(got, column_block(ops.topk_mask(x, k_rows, 1, magnitude=True)))
    threshold = ops.topk_threshold(column_block(x), k_rows, 1, group=True, magnitude=True)
    assert torch.equal(threshold, ops.topk_threshold(x, k_rows, 1, magnitude=True))
    return 2


def nm_dtensor(seed: int) -> int:
    """2:4 masks of DTensors: each rank masks its block; the same as the single-process mask."""
    x = tied((6, 16), seed)
    for placement in ("shard0", "shard1", "replicate"):
        if placement == "shard1" and 16 // world() % 4:
            continue  # blocks would split groups of 4 (tested as an error)
        got = ops.nm_mask(spread(x, placement), 2, 4)
        assert got.placements[0] == PLACEMENTS[placement]
        assert torch.equal(got.full_tensor(), ops.nm_mask(x, 2, 4)), placement
    return 1


def global_dtensor(seed: int) -> int:
    a, b, c = tied((9, 4), seed), tied((3, 5, 2), seed + 1), tied((10,), seed + 2)
    mb = tied((3, 5, 2), seed + 3) != 0
    tensors = [spread(a, "shard0"), spread(b, "shard1"), spread(c, "replicate")]
    masks = [spread(torch.ones_like(a, dtype=torch.bool), "shard0"), spread(mb, "shard1"),
             spread(torch.ones_like(c, dtype=torch.bool), "replicate")]
    total = a.numel() + int(mb.sum()) + c.numel()
    checked = 0
    for k in (0, 1, 17, total // 2, total):
        for magnitude in (True, False):
            got = ops.global_topk_masks(tensors, k, masks=masks, magnitude=magnitude)
            want = ops.global_topk_masks([a, b, c], k, masks=[torch.ones_like(a, dtype=torch.bool), mb,
                                                              torch.ones_like(c, dtype=torch.bool)],
                                         magnitude=magnitude)
            for g_, w_, t in zip(got, want, tensors):
                assert g_.placements == t.placements
                assert torch.equal(g_.full_tensor(), w_), (k, magnitude)
            checked += 1
    return checked


def global_group(seed: int) -> int:
    """Each rank its own list of tensors (odd ranks none): the union is the candidate set, ties by
    rank, then list position, then flat index."""
    lists = [[tied((4, 3), seed + r), tied((5,), seed + 10 + r)] if r % 2 == 0 else [] for r in range(world())]
    flat = [t for tensors in lists for t in tensors]
    for k in (0, 5, sum(t.numel() for t in flat) // 3, sum(t.numel() for t in flat)):
        got = ops.global_topk_masks(lists[rank()], k, group=True)
        want = ops.global_topk_masks(flat, k)
        first = sum(len(tensors) for tensors in lists[:rank()])
        assert all(torch.equal(g_, w_) for g_, w_ in zip(got, want[first:first + len(got)])), k
    return 4


# ---- errors: every rank raises the same exception -----------------------------------------------
def raises(name: str):
    """The (type, message) `name` raises on this rank (it must raise)."""
    try:
        ERRORS[name]()
    except (TypeError, ValueError, RuntimeError) as e:
        return type(e).__name__, str(e)
    raise AssertionError(f"{name} did not raise on rank {rank()}")


ERRORS = {
    "different_k": lambda: ops.topk_mask(column_block(tied((4, 9), 0)), 2 + rank(), 1, group=True),
    "different_q": lambda: ops.lq_norm(column_block(torch.randn(4, 9)), 1.0 + rank(), dim=1, group=True),
    "bad_k_one_rank": lambda: ops.topk_mask(column_block(tied((4, 9), 0)), -1 if rank() == world() - 1 else 1,
                                            1, group=True),
    "k_above_candidates": lambda: ops.topk_mask(spread(tied((4, 9), 0), "shard1"), 10, 1),
    "nan_one_rank": lambda: ops.topk_mask(column_block(torch.tensor([[1.0, 2.0, 3.0, 4.0, math.nan]])), 2, 1,
                                          group=True),
    "global_nan_one_rank": lambda: ops.global_topk_masks([torch.full((3,), math.nan if rank() == 1 else 1.0)], 2,
                                                         group=True),
    "global_different_k": lambda: ops.global_topk_masks([torch.ones(3)], 1 + rank(), group=True),
    "mask_placed_elsewhere": lambda: ops.lq_norm(spread(torch.ones(4, 4), "shard0"), 1.0,
                                                 mask=spread(torch.ones(4, 4, dtype=torch.bool), "shard1")),
    "plain_mask_for_dtensor": lambda: ops.topk_mask(spread(torch.ones(4, 4), "shard1"), 1,
                                                    mask=torch.ones(4, 4, dtype=torch.bool)),
    "partial": lambda: ops.lq_norm(DTensor.from_local(torch.ones(4), mesh(), [Partial()]), 1.0),
    "mesh_2d": lambda: ops.lq_norm(distribute_tensor(torch.ones(4, 4), init_device_mesh("cpu", (2, world() // 2)),
                                                     [Shard(0), Shard(1)]), 1.0),
    "different_scope": lambda: prune.sap(sharded_mlp(0, "fsdp")[1], scope=["neuron", "layer"][rank() % 2]),
    "different_dtype": lambda: ops.topk_mask(column_block(torch.ones(2, 8, dtype=[torch.float32, torch.float64][rank() % 2])),
                                             1, 1, group=True),
    "nm_split_groups": lambda: ops.nm_mask(spread(torch.ones(2, 8 * world() + 2), "shard1"), 2, 4),
    "sparsify_sharded": lambda: __import__("lqkernels").sparsify_(sharded_mlp(0, "fsdp")[1]),
}


# ---- pruning sharded models ----------------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self, sizes=(12, 10, 9, 3), dtype=torch.float64):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b, dtype=dtype) for a, b in zip(sizes, sizes[1:]))
        self.conv = nn.Conv1d(3, 4, 2, dtype=dtype)  # a 3-d weight: rows are (in, kernel) filters

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            x = torch.relu(x) if i < len(self.layers) - 1 else x
        return self.conv(x.unsqueeze(-1).expand(-1, -1, 2)).sum((1, 2))


def sharded_mlp(seed: int, how: str):
    """(the plain model, a copy sharded by `how`: "fsdp" = fully_shard per layer and at the root,
    "shard1" = every weight a Shard(1) DTensor parameter)."""
    torch.manual_seed(seed)
    model = MLP()
    with torch.no_grad():
        for layer in model.layers:  # ties in the magnitudes: exact tie handling matters
            layer.weight.copy_(torch.round(layer.weight * 8) / 8)
    sharded = copy.deepcopy(model)
    if how == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for layer in sharded.layers:
            fully_shard(layer, mesh=mesh())
        fully_shard(sharded, mesh=mesh())
    else:
        for module in sharded.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d)):
                module.weight = nn.Parameter(distribute_tensor(module.weight.detach(), mesh(), [Shard(1)]))
    return model, sharded


def _masks(model) -> dict:
    """name -> the kept entries of every prunable weight, whole on this rank."""
    return {name: (torch.ones_like(w, dtype=torch.bool) if s is None else s).full_tensor()
            if isinstance(w, DTensor) else (torch.ones_like(w, dtype=torch.bool) if s is None else s)
            for name, w, s in prune.prunable_weights(model)}


def _same_masks(plain, sharded, what) -> None:
    want, got = _masks(plain), _masks(sharded)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), (what, name, int((want[name] != got[name]).sum()))


STEPS = {
    "sap_neuron": lambda m: prune.sap(m, scope="neuron"),
    "sap_layer": lambda m: prune.sap(m, scope="layer", beta=0.7),
    "sap_global": lambda m: prune.sap(m, scope="global", p=0.6, q=1.5),
    "lq_neuron": lambda m: prune.lq_neuron(m, q=0.5),
    "lq_neuron_tolerance": lambda m: prune.lq_neuron(m, q=0.5, tolerance=0.5),
    "magnitude_neuron": lambda m: prune.magnitude(m, 0.3, scope="neuron"),
    "magnitude_layer": lambda m: prune.magnitude(m, 0.4, scope="layer"),
    "magnitude_global": lambda m: prune.magnitude(m, 0.5, scope="global"),
}


def prune_steps(seed: int, how: str) -> int:
    """Two rounds of every step on the plain and the sharded model: the same masks; the sharded
    weights hold zeros where pruned; compressibility reports agree."""
    for name, step in STEPS.items():
        plain, sharded = sharded_mlp(seed, how)
        for round_ in range(2):
            step(plain)
            step(sharded)
            _same_masks(plain, sharded, (name, round_))
        for _, w, s in prune.prunable_weights(sharded):
            assert not bool((w.full_tensor() != 0)[~s.full_tensor()].any()), (name, "pruned weights not zero")
    plain, sharded = sharded_mlp(seed, how)
    prune.magnitude(plain, 0.3, scope="global")
    prune.magnitude(sharded, 0.3, scope="global")
    for scope in ("layer", "neuron"):
        want = prune.compressibility(plain, scope=scope, tolerance=0.3).rows()
        got = prune.compressibility(sharded, scope=scope, tolerance=0.3).rows()
        assert len(want) == len(got)
        for w_row, g_row in zip(want, got):
            for key, value in w_row.items():
                if isinstance(value, float):
                    assert math.isclose(value, g_row[key], rel_tol=1e-6, abs_tol=1e-9), (scope, key, value, g_row[key])
                elif key != "shape" or scope != "global":
                    assert value == g_row[key], (scope, key, value, g_row[key])
    return len(STEPS)


def fsdp_finetune(seed: int) -> list[float]:
    """A pruned FSDP2 model fine-tuned 3 steps (AdamW with weight decay, momentum from before the
    pruning): its masks stay exact (pruned weights stay 0, gradients of pruned weights reach the
    optimizer as 0), and it trains like the single-process model pruned through
    torch.nn.utils.prune."""
    plain, sharded = sharded_mlp(seed, "fsdp")
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 12, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1) for m in (plain, sharded)]
    for model, opt in zip((plain, sharded), optimizers):  # one dense step: momentum everywhere
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
        prune.sap(model, scope="neuron")
    masks = _masks(sharded)
    losses = []
    for _ in range(3):
        for model, opt in zip((plain, sharded), optimizers):
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(float(loss))
        _same_masks(plain, sharded, "finetune")
        assert all(torch.equal(masks[n], m) for n, m in _masks(sharded).items())
        for name, w, s in prune.prunable_weights(sharded):
            full = w.full_tensor()
            assert not bool(full[~s.full_tensor()].any()), (name, "a pruned weight revived")
    for (name, w, _), (_, w_plain, _) in zip(prune.prunable_weights(sharded), prune.prunable_weights(plain)):
        assert torch.allclose(w.full_tensor() * masks[name], w_plain * masks[name], rtol=1e-6, atol=1e-9), name
    return losses


def fsdp_iterative(seed: int) -> list[float]:
    """prune.iterative (SAP per neuron, one-shot global, lottery ticket per layer; rewind to init)
    on an FSDP2 model: the same remaining fractions and masks as the single-process run."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 12, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)

    def train(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(2):
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
            opt.zero_grad()

    def evaluate(model):
        with torch.no_grad():
            return float(((model(x) - y) ** 2).mean())

    remaining = []
    for method, scope in (("sap", "neuron"), ("os", "global"), ("lt", "layer")):
        plain, sharded = sharded_mlp(seed, "fsdp")
        histories = [prune.iterative(m, train, evaluate, method=method, scope=scope, rounds=2, progress=False)
                     for m in (plain, sharded)]
        _same_masks(plain, sharded, ("iterative", method))
        want, got = (h.rounds for h in histories)
        assert [r["remaining_total"] for r in want] == [r["remaining_total"] for r in got], method
        remaining.append(got[-1]["remaining_total"])
    return remaining


def held_after_collectives(iterations: int) -> tuple[int, int, bool]:
    """How often a temporary is still held by the process group's worker thread when the
    collective returns: (through lqkernels' all_reduce, through dist.all_reduce), and whether the
    exit-time wait for the workers is registered."""
    from lqkernels import _distributed
    held = [0, 0]
    for _ in range(iterations):
        for i, reduce in enumerate((_distributed.all_reduce, dist.all_reduce)):
            t = torch.tensor([1, 2, 3])
            reduce(t)
            held[i] += t._use_count() > 1
    return held[0], held[1], _distributed._settle_at_exit_registered
