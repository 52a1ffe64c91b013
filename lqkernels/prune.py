"""Compressibility reports and adaptive pruning: the ℓq rule of [T] and SAP of [S] (docs/method.md §3).

    report = lqkernels.prune.compressibility(model, scope="neuron")   # str(report), .rows(), .to_csv()
    lqkernels.prune.sap(model, p=0.5, q=1.0, scope="neuron")           # one SAP step on the survivors
    lqkernels.prune.lq_neuron(model, q=0.5)                            # per-neuron ℓq rule
    lqkernels.prune.magnitude(model, 0.5, scope="global")              # the baseline
    history = lqkernels.prune.iterative(model, train_fn, eval_fn, method="sap", rounds=10)

What is pruned (the same for every step and report): by default the weights of nn.Linear and
convolution layers (PRUNED_BY_DEFAULT, default_include), first and last layers included, which is
what users of pruning tools expect; embeddings, norms, attention projections held as plain
parameters and any other module with a weight of dim > 1 only when `include(module, fqn) -> bool`
chooses them (include replaces the default; compose with default_include to widen it). Biases and
1-d weights never. [S]'s released code prunes every parameter named *weight* with dim > 1:
include=lambda m, fqn: True gives that. A parameter shared by several modules (tied weights) is
measured once and gets one mask in every module that holds it, and is pruned only when every
holder is chosen (an LM head tied to its embedding is left alone by default). Frozen parameters are
pruned too and stay frozen. Every step logs (INFO, logger `lqkernels.prune`) the weights it touched
with their survivors before and after, and the weights it left alone and why; the CLI prints it.

A weight is kept (a survivor) iff its prune mask is set where it has one, and iff it is nonzero
where it has none: a model saved after prune.remove (`lqkernels prune --remove`) holds its pruned
weights as zeros, and every report, count and step here, like sparsify_, sees the same survivors
with or without the masks.

Masks live in torch.nn.utils.prune: each pruned module holds `weight_orig` (the parameter),
`weight_mask` (buffer) and a forward pre-hook computing weight = weight_orig * weight_mask, so
prune.remove, state_dict checkpoints and lqkernels.sparsify_ work as usual, and gradients reach
weight_orig multiplied by the mask (pruned weights receive zero gradient; a retrained pruned weight
stays zero in `weight`). Every round ranks survivors only and multiplies into the existing mask:
a pruned weight never comes back. A step writes the new `weight_mask` and `weight` into the old
ones' memory when nothing else sees them (no other name, view, alias or autograd graph, no other
process through shared memory), and allocates new ones, as torch.nn.utils.prune does, when
something does.

Decisions run through lqkernels.ops with no Python loop over rows: neuron scope = one masked
`lq_powsum(dim=1)` and one `topk_mask` with a per-row k over each weight viewed as (out, -1)
(a Conv filter is one row); layer scope the same per tensor; global scope adds the per-tensor power
sums (they add, so no concatenation) and selects with `global_topk_masks`. Ties: exact counts, with
lowest index first (global: tensor order, then flat index). The released code instead prunes every
survivor strictly below the c-th smallest, which prunes fewer than c when values tie.

Sharded models (FSDP2's fully_shard, or DTensor weights Shard(0), Shard(1), Replicate on a 1-D
mesh) take the same calls on every rank: decisions merge power sums and select histograms across
ranks (lqkernels._distributed; no rank gathers weights) and give the masks of the unsharded model.
Such a weight keeps its name and holds pruned entries as zeros, its mask a bool DTensor buffer
`<name>_mask`; optimizer hooks zero pruned gradients before each step and pruned weights after it
(torch.nn.utils.prune's reparametrisation does not compose with FSDP2; README, "Pruning a sharded
model"). Keep counts come from power sums accumulated in float64 on every model, so the same step
gives the same masks single-process, on any thread count, and sharded.

Bad input raises ValueError / TypeError naming the value, before the model is touched; if applying
masks fails midway, or iterative()'s train_fn / eval_fn raises, the model is restored exactly
(parameters, buffers, masks, hooks, requires_grad, train/eval mode).
"""
from __future__ import annotations

import copy
import csv
import json
import logging
import math
import sys
import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.utils.prune as torch_prune
from torch.utils.weak import WeakIdKeyDictionary
from torch import nn

from lqkernels import _distributed, ops, theory
from lqkernels._checks import user_terms
from lqkernels.theory import check_eta, check_number, check_pq

__all__ = ["compressibility", "CompressibilityReport", "sap", "lq_neuron", "magnitude", "iterative",
           "History", "prunable_weights", "remaining_fraction", "format_table", "default_include",
           "PRUNED_BY_DEFAULT", "SCOPES", "METHODS"]

SCOPES = ("neuron", "layer", "global")
# The modules whose weights every pruning call and report takes when include=None (default_include).
PRUNED_BY_DEFAULT = (nn.Linear, nn.modules.conv._ConvNd)
METHODS = ("sap", "lq_neuron", "lt", "os")
Include = Callable[[nn.Module, str], bool] | None
_log = logging.getLogger(__name__)


# ---- which weights, and their survivors ------------------------------------------------------
@dataclass
class _Target:
    """One prunable parameter: its name, the modules holding it (several when tied) and the
    attribute name there, the parameter itself (weight_orig once pruned) and its survivors."""
    name: str
    attr: str
    modules: list
    param: torch.Tensor
    survivors: torch.Tensor | None  # bool, the param's shape (see _survivors); None = all kept

    @property
    def weight(self) -> torch.Tensor:
        return self.param.detach()

    def rows(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight and survivors viewed as (out, -1): one row per neuron / filter."""
        return _rows_of(self.weight), _rows_of(self.survivors)

    @property
    def sharded(self) -> bool:
        return _distributed.is_dtensor(self.param)

    def survivor_count(self) -> int:
        return _survivor_counts([self])[0]


def _survivor_counts(targets: list[_Target]) -> list[int]:
    """Each target's survivors. Sharded targets count their local blocks (a replicated one on one
    rank) and merge them in one all-reduce per mesh: a collective, so every rank calls this alike."""
    counts = [t.param.numel() if t.survivors is None else
              int(torch.count_nonzero(t.survivors.to_local() if t.sharded else t.survivors)) for t in targets]
    by_mesh: dict = {}
    for i, t in enumerate(targets):
        if t.sharded:
            lay = _distributed.layout(t.param, "prune")
            if lay.shard_dim is None and lay.coordinate != 0:
                counts[i] = 0
            by_mesh.setdefault(lay.mesh, (lay.group, []))[1].append(i)
    for group, indices in by_mesh.values():  # on the parameters' device: nccl reduces CUDA tensors only
        merged = torch.tensor([counts[i] for i in indices], dtype=torch.int64,
                              device=_local(targets[indices[0]].param).device)
        _distributed.all_reduce(merged, group=group)
        for i, c in zip(indices, merged.tolist()):
            counts[i] = c
    return counts


def _survivors(param: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """The kept entries of a weight, the one meaning every report and step uses: where a prune
    mask exists, its set entries (a kept weight may hold 0); without one, the nonzero entries (a
    model saved after prune.remove holds its pruned weights as zeros). None: all are kept (never
    for a sharded weight, whose other blocks this rank cannot see without a collective)."""
    if mask is not None:
        return mask.detach().bool()  # nonzero = kept; 3x faster than != 0
    weight = param.detach()
    if _distributed.is_dtensor(weight):
        return weight != 0
    return None if bool(weight.all()) else weight != 0


def default_include(module: nn.Module, fqn: str) -> bool:
    """What every pruning call and report takes when include=None: nn.Linear and convolutions
    (PRUNED_BY_DEFAULT). Compose it to widen the set, e.g.
    include=lambda m, fqn: prune.default_include(m, fqn) or isinstance(m, nn.Embedding)."""
    return isinstance(module, PRUNED_BY_DEFAULT)


def _scan(model: nn.Module, include: Include, op: str) -> tuple[list[_Target], list[dict]]:
    """(targets, left_alone): the prunable weights `include` (default: default_include) chooses,
    and {"name", "module", "why"} for each weight-like parameter (named *weight*, dim > 1) it does
    not. A parameter held by several modules (tied) is taken only if every holder is chosen: a
    mask in one holder would leave the others computing with the unpruned values."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{op}: model must be an nn.Module, got {type(model).__name__}")
    if include is not None and not callable(include):
        raise TypeError(f"{op}: include must be a callable include(module, fqn) -> bool, got {include!r}")
    chooses = default_include if include is None else include
    _reshard(model)
    by_param: dict[int, _Target] = {}
    left_alone: dict[int, dict] = {}
    for fqn, module in model.named_modules():
        for pname, param in module._parameters.items():
            if param is None:
                continue
            attr = pname[:-5] if pname.endswith("_orig") and hasattr(module, pname[:-5] + "_mask") else pname
            if "weight" not in attr or param.dim() <= 1:
                continue
            name = f"{fqn}.{attr}" if fqn else attr
            if not chooses(module, fqn):
                why = ("not chosen by include" if include is not None else
                       f"{type(module).__name__} is not pruned by default (nn.Linear and convolutions are); "
                       f"pass include= to prune it")
                left_alone.setdefault(id(param), {"name": name, "module": type(module).__name__, "why": why})
                continue
            sharded_mask = _distributed.is_dtensor(param) and attr + "_mask" in module._buffers
            mask = _survivors(param, getattr(module, attr + "_mask", None) if attr != pname or sharded_mask else None)
            target = by_param.get(id(param))
            if target is None:
                by_param[id(param)] = _Target(name, attr, [module], param, mask)
            else:  # tied: one mask for all holders, the intersection of what each pruned
                target.modules.append(module)
                if mask is not None:
                    target.survivors = mask if target.survivors is None else target.survivors & mask
    for key in by_param.keys() & left_alone.keys():
        target, other = by_param.pop(key), left_alone[key]
        left_alone[key] = {"name": target.name, "module": type(target.modules[0]).__name__,
                           "why": f"tied to {other['name']} ({other['module']}), which is not chosen"}
    if not by_param:
        chosen = " chosen by include" if include is not None else " in nn.Linear or convolution layers"
        raise ValueError(f"{op}: the model has no prunable weight{chosen} (parameters named *weight* "
                         f"with dim > 1; include= chooses others)")
    return list(by_param.values()), list(left_alone.values())


def _reshard(model: nn.Module) -> None:
    """Puts every FSDP2 module's parameters back to their sharded DTensors (the root module keeps
    its all-gathered copies after a forward without backward, e.g. an evaluation), so that steps
    and reports see, and mask, the sharded parameters. Local: no communication."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def _targets(model: nn.Module, include: Include, op: str) -> list[_Target]:
    return _scan(model, include, op)[0]


def _kept_fraction(targets: list[_Target]) -> float:
    return sum(_survivor_counts(targets)) / sum(t.param.numel() for t in targets)


def remaining_fraction(model: nn.Module, include: Include = None) -> float:
    """The fraction of the prunable weights (tied ones counted once) still kept: mask set where a
    weight has a prune mask, nonzero where it has none (so the same before and after prune.remove)."""
    return _kept_fraction(_targets(model, include, "remaining_fraction"))


def prunable_weights(model: nn.Module, include: Include = None) -> list[tuple[str, torch.Tensor, torch.Tensor | None]]:
    """(name, weight, survivors) of every prunable weight: the dense values (weight_orig once
    pruned) and the bool survivor mask (mask set, or nonzero without a mask; None when every entry
    is kept). Tied weights appear once."""
    return [(t.name, t.weight, t.survivors) for t in _targets(model, include, "prunable_weights")]


# ---- snapshot / restore ----------------------------------------------------------------------
class _Snapshot:
    """Everything prune and training change on a model: per module the __dict__ (hooks, plain
    attributes like the computed `weight`, the parameter and buffer dicts, training flag), and,
    with values=True, the data and requires_grad of every parameter and buffer."""

    def __init__(self, model: nn.Module, values: bool):
        self.modules = [(m, {k: (copy.copy(v) if isinstance(v, dict) else v) for k, v in vars(m).items()})
                        for m in model.modules()]
        self.values = []
        if values:
            seen = set()
            for m in model.modules():
                for t in list(m._parameters.values()) + list(m._buffers.values()):
                    if t is not None and id(t) not in seen:
                        seen.add(id(t))
                        self.values.append((t, t.detach().clone(), t.requires_grad))

    def restore(self) -> None:
        for module, state in self.modules:
            vars(module).clear()
            vars(module).update({k: (copy.copy(v) if isinstance(v, dict) else v) for k, v in state.items()})
        with torch.no_grad():
            for t, value, requires_grad in self.values:
                t.copy_(value)
                t.requires_grad_(requires_grad)
                if isinstance(t, nn.Parameter):
                    t.grad = None


def _owners(container: dict, key: str) -> tuple[int, int, int] | None:
    """Who holds container[key], a plain tensor in this process's own memory: (Python references,
    owners of its TensorImpl, owners of its memory), counted from here; None for anything else
    (shared memory, which other processes see, is: CUDA tensors count as shared). Equal to
    _SOLE_OWNER only when the container alone sees the tensor: another Python name, an autograd
    graph that saved it, a view, .data, detach() or numpy alias each add one (the counts
    torch.utils.swap_tensors checks too)."""
    t = container.get(key)
    if type(t) is not torch.Tensor or t.is_inference() or t.is_shared():
        return None
    return sys.getrefcount(t), t._use_count(), torch._C._storage_Use_Count(t.untyped_storage()._cdata)


try:  # private counters of torch; without them no memory is reused
    _SOLE_OWNER = _owners({"probe": torch.zeros(1)}, "probe")
except (AttributeError, RuntimeError):
    _SOLE_OWNER = None


def _sole_owner(container: dict, key: str) -> bool:
    return _SOLE_OWNER is not None and _owners(container, key) == _SOLE_OWNER


def _reusable(module: nn.Module, attr: str) -> bool:
    """Whether a pruned module's old `weight_mask` and computed `weight` can take the new ones'
    values in place (never for a module not pruned yet: it has no computed weight to reuse): nothing but the module sees either, and their layouts are those of the new ones.
    Writing there is unobservable, needs no memory, and on the CPU is 3-5x faster than filling new
    tensors (first-touch page faults of fresh memory dominate a step there).

    A computed weight that nothing else holds can still carry the unreachable graph of the hook's
    `weight_orig * weight_mask`, which saved the mask; it is detached first (same values)."""
    mask_key, computed = attr + "_mask", vars(module)
    if not _sole_owner(computed, attr):
        return False
    if computed[attr].grad_fn is not None:
        computed[attr] = computed[attr].detach()
    if not _sole_owner(module._buffers, mask_key):
        return False
    orig, mask, weight = module._parameters.get(attr + "_orig"), module._buffers[mask_key], computed[attr]
    return (orig is not None and weight.dtype == torch.result_type(orig, mask)
            and orig.shape == mask.shape == weight.shape and orig.stride() == mask.stride() == weight.stride()
            and orig.device == mask.device == weight.device)


def _apply_masks(model: nn.Module, targets: list[_Target], masks: list[torch.Tensor]) -> None:
    """Installs each new mask (a subset of the survivors) in every module holding the parameter,
    the torch.nn.utils.prune way; restores the model if anything fails midway.

    A module not pruned yet goes through prune.custom_from_mask (weight_orig, weight_mask, hook).
    One already pruned gets a new `weight_mask` buffer holding the new mask (a subset of the old
    one, since only survivors were candidates: exactly the combination prune's PruningContainer
    would compute, without its clones and slice assignments and without a container growing by one
    method per round) and its `weight` recomputed; its existing hook reads the buffer, so forward,
    prune.remove and later torch.nn.utils.prune calls see the new mask. The new tensors take the
    old ones' memory when nothing else sees it (_reusable); those in-place writes, which cannot
    fail, come last, so that a failure leaves them unwritten and the restore is exact.

    Everything is installed under no_grad: the `weight` computed here is a plain tensor rather than
    a graph node, so the pruned model can be deep-copied right away (torch.nn.utils.prune's own
    calls leave a non-leaf there, which copy.deepcopy refuses); the hook recomputes it, with
    gradients to weight_orig, at every forward."""
    updates = [(module, target.attr, mask, _reusable(module, target.attr))
               for target, mask in zip(targets, masks) for module in target.modules if not target.sharded]
    snapshot = _Snapshot(model, values=False)
    try:
        with torch.no_grad():
            for target, mask in zip(targets, masks):
                if target.sharded:
                    _hold_sharded_mask(target, mask)
            for module, attr, mask, in_place in sorted(updates, key=lambda update: update[3]):
                old = getattr(module, attr + "_mask", None)
                if old is None:
                    torch_prune.custom_from_mask(module, attr, mask)
                    continue
                orig = getattr(module, attr + "_orig")
                # bool -> float by copy_: 2x faster than .to
                combined = (old.detach() if in_place else torch.empty_like(old)).copy_(mask)
                weight = torch.mul(orig, combined, out=getattr(module, attr).detach()) if in_place else orig * combined
                module._buffers[attr + "_mask"] = combined
                setattr(module, attr, weight)
            for target, mask in zip(targets, masks):
                if target.sharded:  # last: zeroing cannot fail, and nothing before it wrote values
                    _zero_pruned(target.param, mask)
                target.survivors = mask
    except BaseException:
        snapshot.restore()
        raise


# ---- sharded weights (DTensor: FSDP2's fully_shard, tensor parallelism) -------------------------
# torch.nn.utils.prune's reparametrisation (weight = weight_orig * weight_mask in a forward
# pre-hook) does not compose with FSDP2, which swaps the registered parameter for its all-gathered
# copy around each forward. A sharded weight therefore keeps its name and holds its pruned entries
# as zeros; its mask is a bool DTensor buffer `<name>_mask`, placed like the weight, which the
# reports and later steps read as the survivors. Every optimizer step keeps it applied: a global
# optimizer hook zeroes the pruned entries' gradients before the step (so momentum and Adam's
# moments of pruned weights stay zero) and the pruned weights after it (weight decay, momentum
# from before pruning). Each rank touches only its own blocks: no communication.
_SHARDED_MASKS = WeakIdKeyDictionary()  # parameter (by identity) -> [(module weakref, attr)]
_optimizer_hooks: list = []


def _hold_sharded_mask(target: _Target, mask: torch.Tensor) -> None:
    for module in target.modules:
        module._buffers[target.attr + "_mask"] = mask
    holders = _SHARDED_MASKS.setdefault(target.param, [])
    holders[:] = [(weakref.ref(m), target.attr) for m in target.modules]
    if not _optimizer_hooks:
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
        _optimizer_hooks.append(register_optimizer_step_pre_hook(_mask_gradients))
        _optimizer_hooks.append(register_optimizer_step_post_hook(_mask_weights))


def _zero_pruned(param: torch.Tensor, mask: torch.Tensor) -> None:
    with torch.no_grad():
        param.to_local().mul_(mask.to_local())


def _sharded_masks(optimizer):
    """(parameter, mask) for the sharded pruned parameters this optimizer steps."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for ref, attr in _SHARDED_MASKS.get(param, ()):
                module = ref()
                mask = module._buffers.get(attr + "_mask") if module is not None else None
                if mask is not None:
                    yield param, mask
                    break


def _mask_gradients(optimizer, args, kwargs) -> None:
    for param, mask in _sharded_masks(optimizer):
        if param.grad is not None:
            grad = param.grad.to_local() if _distributed.is_dtensor(param.grad) else param.grad
            grad.mul_(mask.to_local())


def _mask_weights(optimizer, args, kwargs) -> None:
    for param, mask in _sharded_masks(optimizer):
        _zero_pruned(param, mask)


def _number(x: torch.Tensor) -> float:
    """A 0-d result as a Python number (a replicated DTensor's local value)."""
    return _local(x).item()


def _local(x):
    return x.to_local() if _distributed.is_dtensor(x) else x


# ---- keep-count rules (vectorised over slices) --------------------------------------------------
def _stats(w: torch.Tensor, s: torch.Tensor | None, qs: list[float], dim):
    """(sums (len(qs), slices) float64 or None without exponents, count int64) of the survivors over
    `dim` (None: the whole tensor), one pass (also for the count alone: torch's bool sums run 20x
    slower on the CPU). For a sharded w, this rank's slices (all of them where they were merged).

    Accumulated in float64 whatever w's dtype: a keep count is a ceiling of these sums, and float32
    accumulation (~1e-7 relative over a million entries, in an order that depends on the thread
    count and on how the tensor is sharded) would move it by a fraction of a weight; in float64
    the same step gives the same masks single-process, on any thread count, and sharded."""
    sums, count = ops.lq_powsum(w, qs, dim, mask=s, dtype=torch.float64)
    return _local(sums) if qs else None, _local(count)


def _tensor_stats(weights: list[torch.Tensor], survivors: list, qs: list[float]):
    """(sums (len(qs), tensors) float64, counts (tensors,) int64): each whole tensor's power sums
    over its survivors, as _stats. Sharded tensors add their blocks' sums in one all-reduce for
    all of them (a replicated one counted on one rank), instead of one merge per tensor."""
    sharded = [w for w in weights if _distributed.is_dtensor(w)]
    if not sharded:
        stats = [_stats(w, s, qs, None) for w, s in zip(weights, survivors)]
        sums = torch.stack([st[0] for st in stats], 1) if qs else None
        return sums, torch.stack([st[1] for st in stats])
    lay = _distributed.layout(sharded[0], "prune")
    columns = []
    for w, s in zip(weights, survivors):
        owner = not _distributed.is_dtensor(w) or _distributed.layout(w, "prune").shard_dim is not None
        part = _stats(_local(w), _local(s), qs, None) if owner or lay.coordinate == 0 else None
        columns.append(torch.cat([part[0] if qs else part[1].new_empty(0, dtype=torch.float64),
                                  part[1].double()[None]]) if part is not None
                       else torch.zeros(len(qs) + 1, dtype=torch.float64, device=_local(w).device))
    merged = torch.stack(columns, 1)
    _distributed.all_reduce(merged, group=lay.group)
    return (merged[:-1] if qs else None), merged[-1].round().to(torch.int64)


def _bounded_prune(count: torch.Tensor, keep_bound: torch.Tensor, gamma: float, beta: float) -> torch.Tensor:
    """Keep counts from [S]'s step c = floor(d·min(γ(1 − r/d), β)) (clamped at 0), as
    d − c; computed as floor(min(γ(d − r), β·d)) so that γ = 1 prunes exactly d − r (the released
    code's float32 d·(1 − r/d) often lands just below the integer and prunes one fewer)."""
    d = count.double()
    prune_now = torch.minimum(gamma * (d - keep_bound.double()), beta * d).clamp_min(0)
    return count - torch.floor(prune_now).to(torch.int64).minimum(count)


@dataclass(frozen=True)
class _PQRule:
    """SAP ([S] Algorithm 1) and, with p = q_T, q = 1, min_keep = 1, the per-neuron ℓq rule of [T]."""
    p: float
    q: float
    eta: float
    gamma: float
    beta: float
    min_keep: int = 0

    @property
    def exponents(self) -> list[float]:
        return [self.p, self.q]

    def keep(self, sums, count):
        r = theory.ceil_count(theory.keep_bound_from_sums(sums[0], sums[1], self.p, self.q, self.eta), count)
        if self.min_keep:
            r = torch.maximum(r, count.clamp_max(self.min_keep))
        return _bounded_prune(count, r, self.gamma, self.beta)


@dataclass(frozen=True)
class _ToleranceRule:
    """[T]'s s-term guarantee per neuron: keep what keep_count_for_tolerance says (β, γ as SAP)."""
    q: float
    tolerance: float
    lipschitz: float
    input_bound: float
    r: float  # the tail norm the input norm pairs with: 1 for ‖x‖_∞, 2 for ‖x‖_2
    gamma: float
    beta: float

    @property
    def exponents(self) -> list[float]:
        return [self.q]

    def keep(self, sums, count):
        r = theory.tolerance_count_from_sums(sums[0], count, self.tolerance, self.q,
                                             self.lipschitz * self.input_bound, self.r)
        return _bounded_prune(count, r, self.gamma, self.beta)


@dataclass(frozen=True)
class _FractionRule:
    """Magnitude baseline: prune round(amount·d) survivors (torch.nn.utils.prune's count)."""
    amount: float
    exponents: tuple = ()

    def keep(self, sums, count):
        return count - torch.round(self.amount * count.double()).to(torch.int64)


def _select(targets: list[_Target], rule, scope: str, weights: list[torch.Tensor] | None = None,
            survivors: list | None = None) -> list[torch.Tensor]:
    """New bool masks (subsets of the survivors): keep counts from `rule` at `scope`, then the
    largest |w| among survivors. `weights`/`survivors` override the targets' own (one shot)."""
    weights = [t.weight for t in targets] if weights is None else weights
    survivors = [t.survivors for t in targets] if survivors is None else survivors
    qs = list(rule.exponents)
    if scope in ("global", "layer"):
        sums, counts = _tensor_stats(weights, survivors, qs)
    if scope == "global":
        k = int(rule.keep(sums.sum(1) if qs else None, counts.sum()))
        return ops.global_topk_masks(weights, k, masks=None if all(s is None for s in survivors) else
                                     [torch.ones_like(w, dtype=torch.bool) if s is None else s
                                      for w, s in zip(weights, survivors)])
    out = []
    for i, (w, s) in enumerate(zip(weights, survivors)):
        if scope == "layer":  # one long row: the global kernel spreads it over every thread
            keep = int(rule.keep(sums[:, i] if qs else None, counts[i]))
            out.append(ops.global_topk_masks([w], keep, masks=None if s is None else [s])[0])
            continue
        rows, srows = _rows_of(w), _rows_of(s)
        keep = rule.keep(*_stats(rows, srows, qs, 1))
        if _distributed.is_dtensor(rows):  # one keep count per row, placed like the rows
            lay = _distributed.layout(rows, "prune")
            keep = _distributed.wrap(keep, lay, 0 if lay.shard_dim == 0 else None, rows.shape[:1])
        out.append(_unrows(ops.topk_mask(rows, keep, 1, mask=srows, magnitude=True), w))
    return out


def _rows_of(x: torch.Tensor | None) -> torch.Tensor | None:
    """x viewed as (out, -1): one row per neuron / filter. A sharded x is viewed block by block: a
    block along dim 0 or 1 is contiguous in the row-major order of every row, so the view is a
    DTensor sharded the same way (DTensor's own view refuses uneven blocks)."""
    if x is None or not _distributed.is_dtensor(x):
        return x if x is None else x.reshape(x.shape[0], math.prod(x.shape[1:]))
    lay = _distributed.layout(x, "prune")
    if lay.shard_dim not in (None, 0, 1):
        raise ValueError(f"prune: a weight sharded along dim {lay.shard_dim} is split inside its rows' "
                         f"row-major order; shard weights along dim 0 or 1")
    local = x.to_local()
    return _distributed.wrap(local.reshape(local.shape[0], math.prod(local.shape[1:])), lay, lay.shard_dim,
                             (x.shape[0], math.prod(x.shape[1:])))


def _unrows(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """_rows_of undone: rows back in like's shape (and placement)."""
    if not _distributed.is_dtensor(like):
        return rows.reshape(like.shape)
    lay = _distributed.layout(like, "prune")
    return _distributed.wrap(rows.to_local().reshape(like.to_local().shape), lay, lay.shard_dim, like.shape)


def _check_scope(scope, op: str) -> str:
    if scope not in SCOPES:
        raise ValueError(f"{op}: scope must be one of {SCOPES}, got {scope!r}")
    return scope


def _check_beta_gamma(gamma, beta, op: str) -> tuple[float, float]:
    gamma = check_number("gamma", gamma, op, low=0.0)
    beta = check_number("beta", beta, op, low=0.0, low_open=True, high=1.0)
    return gamma, beta


def _agree_sharded(targets: list[_Target], op: str, **common) -> None:
    """For a sharded model, one agreement over the mesh that every rank runs the same step on the
    same weights (each step's collectives then match rank by rank); the same error on every rank
    if not."""
    sharded = [t for t in targets if t.sharded]
    if sharded:
        weights = [(t.name, tuple(t.param.shape), str(t.param.placements[0]) if t.sharded else "plain")
                   for t in targets]
        _distributed.agree(_distributed.layout(sharded[0].param, op).group, op, {**common, "weights": weights})


def _prune(model, include, rule, scope, op) -> nn.Module:
    targets, left_alone = _scan(model, include, op)
    _agree_sharded(targets, op, rule=repr(rule), scope=scope)
    before = _counts_to_log(targets)
    with user_terms(op):  # e.g. NaN weights, or an LQK_BACKEND that cannot run here
        masks = _select(targets, rule, scope)
    _apply_masks(model, targets, masks)
    _log_step(op, targets, before, left_alone)
    return model


def _counts_to_log(targets: list[_Target]) -> list[int] | None:
    """Each target's survivors before a step, if the step's log record will be emitted (always for
    a sharded model: counting is a collective, and every rank must take the same path whatever
    its log level)."""
    if _log.isEnabledFor(logging.INFO) or any(t.sharded for t in targets):
        return _survivor_counts(targets)
    return None


def _log_step(op: str, targets: list[_Target], before: list[int] | None, left_alone: list[dict]) -> None:
    """Logs (INFO, logger lqkernels.prune) what a step touched: per weight its module, survivors
    before and after; then the weights it left alone and why."""
    if before is None:
        return
    after = _survivor_counts(targets)
    if not _log.isEnabledFor(logging.INFO):
        return
    rows = [{"layer": t.name, "module": type(t.modules[0]).__name__, "shape": "x".join(map(str, t.param.shape)),
             "before": b, "kept": a, "params": t.param.numel()} for t, b, a in zip(targets, before, after)]
    total = {"layer": "all weights", "module": "", "shape": f"{len(rows)} tensors",
             **{k: sum(r[k] for r in rows) for k in ("before", "kept", "params")}}
    for row in [*rows, total]:
        row["pct"] = f"{100 * row['kept'] / max(row['params'], 1):.2f}%"
    table = format_table([("layer", "layer", "{}"), ("module", "module", "{}"), ("shape", "shape", "{}"),
                          ("kept before", "before", "{:d}"), ("kept now", "kept", "{:d}"),
                          ("of", "params", "{:d}"), ("kept", "pct", "{}")], [*rows, total], separate_last=True)
    lines = [f"{op}: pruned {total['before'] - total['kept']} weights in {len(rows)} tensors", table]
    lines += [f"left alone: {w['name']} ({w['module']}): {w['why']}" for w in left_alone]
    _log.info("\n".join(lines))


# ---- public pruning steps --------------------------------------------------------------------
def sap(model: nn.Module, *, p: float = 0.5, q: float = 1.0, eta: float = 0.0, gamma: float = 1.0,
        beta: float = 0.9, scope: str = "neuron", include: Include = None) -> nn.Module:
    """One SAP pruning step ([S] Algorithm 1, one iteration without the training) on the survivors.

    Per slice (scope "neuron": each row of the weight viewed as (out, -1); "layer": each weight;
    "global": all prunable weights together), with d survivors and PQ Index I = I_{p,q} over them:
    r = ceil(d·(1+η)^{−q/(q−p)}·(1 − I)^{pq/(q−p)}) (Theorem 2), then prune
    c = floor(d·min(γ(1 − r/d), β)) (clamped at 0) smallest-|w| survivors. Defaults are [S]'s main
    setting (η = 0, γ = 1, β = 0.9; (p, q) = (0.5, 1), so a first round keeps d·(1 − PQI)).
    Needs 0 < p < q < inf, η ≥ 0, γ ≥ 0, 0 < β ≤ 1. Returns the model, pruned in place.
    """
    op = "sap"
    p, q = check_pq(p, q, op)
    eta = check_eta(eta, op)
    gamma, beta = _check_beta_gamma(gamma, beta, op)
    return _prune(model, include, _PQRule(p, q, eta, gamma, beta), _check_scope(scope, op), op)


def lq_neuron(model: nn.Module, *, q: float = 0.5, eta: float = 0.0, gamma: float = 1.0,
              beta: float = 0.9, tolerance: float | None = None, lipschitz: float = 1.0,
              input_bound: float = 1.0, input_norm="inf", include: Include = None) -> nn.Module:
    """The per-neuron ℓq rule ([T]-style; docs/method.md §3, from the authors' 2022 code).

    For each row i (d_i survivors): k_i = max(1, ceil((1+η)^{−1/(1−q)}·(‖w_i‖_q/‖w_i‖_1)^{q/(1−q)})),
    0 < q < 1, which is SAP's bound with (p, q) = (q, 1); then prune floor(d_i·min(γ(1 − k_i/d_i), β)).
    With `tolerance` ε instead (η must stay 0): k_i = theory.keep_count_for_tolerance(w_i, ε, q,
    lipschitz=L, input_bound=B, input_norm) — the s-term guarantee that each neuron's output moves
    by at most ε for inputs with ‖x‖ ≤ B (γ ≤ 1 keeps the guarantee; β only prunes less).
    Returns the model, pruned in place.
    """
    op = "lq_neuron"
    q = check_number("q", q, op, low=0.0, low_open=True, high=1.0, high_open=True)
    eta = check_eta(eta, op)
    gamma, beta = _check_beta_gamma(gamma, beta, op)
    if tolerance is None:
        rule = _PQRule(q, 1.0, eta, gamma, beta, min_keep=1)
    else:
        if eta != 0:
            raise ValueError(f"{op}: pass either eta or tolerance, got eta={eta:g} and tolerance={tolerance!r}")
        r_exp = theory.input_norm_exponent(input_norm, op)
        tolerance = check_number("tolerance", tolerance, op, low=0.0, low_open=True)
        rule = _ToleranceRule(check_number("q", q, op, low=0.0, low_open=True, high=r_exp, high_open=True),
                              tolerance, check_number("lipschitz", lipschitz, op, low=0.0, low_open=True),
                              check_number("input_bound", input_bound, op, low=0.0),
                              r_exp, gamma, beta)
    return _prune(model, include, rule, "neuron", op)


def magnitude(model: nn.Module, amount: float, *, scope: str = "layer", include: Include = None) -> nn.Module:
    """Magnitude pruning baseline: prune round(amount·d) smallest-|w| survivors per slice
    (scope "layer": per weight, equal to torch.nn.utils.prune.l1_unstructured(amount) away from
    ties; "global": over all weights, = global_unstructured with L1Unstructured; "neuron": per row).
    amount in [0, 1]. Returns the model, pruned in place."""
    op = "magnitude"
    amount = check_number("amount", amount, op, low=0.0, high=1.0)
    return _prune(model, include, _FractionRule(amount), _check_scope(scope, op), op)


# ---- compressibility report ------------------------------------------------------------------
_LAYER_COLUMNS = ["scope", "layer", "neuron", "shape", "params", "survivors", "q", "p", "pq",
                  "lq_norm", "si", "pqi", "hoyer", "gini", "keep_ratio", "keep_pqi", "keep_eps"]


@dataclass
class CompressibilityReport:
    """compressibility()'s result: `layers` (one dict per prunable weight), `total` (all weights
    together), `neurons` (one dict per row of every weight, scope "neuron" only) and the settings.
    Keys: layer, shape, params, survivors (d), lq_norm (‖w‖_q), si (SI_q), pqi (I_{p,pq}), hoyer,
    gini, keep_ratio (Theorem 2's keep ratio r/d at η, from pqi), keep_pqi (ceil of Theorem 2's
    bound: fewer weights cannot reach relative ℓp tail η), keep_eps (tolerance given: the s-term
    count each neuron needs for output error ≤ tolerance, summed over neurons — a sufficient count).
    `left_alone`: the weight-like parameters outside the scope (see default_include), and why."""
    settings: dict
    layers: list = field(default_factory=list)
    total: dict = field(default_factory=dict)
    neurons: list | None = None
    left_alone: list = field(default_factory=list)  # {"name", "module", "why"} of weights not measured

    def rows(self) -> list[dict]:
        """Layer rows, the total row ('all weights'), then neuron rows if any; each has 'scope'."""
        return [*self.layers, self.total, *(self.neurons or [])]

    def to_csv(self, path) -> None:
        """Writes rows() as CSV (one header; empty cells where a key does not apply)."""
        rows = self.rows()
        columns = [c for c in _LAYER_COLUMNS if any(c in r for r in rows)]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def __str__(self) -> str:
        s = self.settings
        tol = f", tolerance {s['tolerance']:g} (L={s['lipschitz']:g}, ‖x‖_{s['input_norm']} ≤ {s['input_bound']:g})" \
            if s["tolerance"] is not None else ""
        head = (f"Compressibility (q={s['q']:g}; PQI p={s['p']:g}, q={s['pq']:g}; eta={s['eta']:g}{tol}; "
                f"d counts survivors)")
        columns = [("layer", "layer", "{}"), ("shape", "shape", "{}"), ("survivors", "survivors", "{:d}"),
                   (f"l_{s['q']:g} norm", "lq_norm", "{:.4g}"), (f"SI_{s['q']:g}", "si", "{:.4f}"),
                   (f"PQI({s['p']:g},{s['pq']:g})", "pqi", "{:.4f}"), ("Hoyer", "hoyer", "{:.4f}"),
                   ("Gini", "gini", "{:.4f}"), ("keep ratio", "keep_ratio", "{:.4f}"),
                   ("keep (Thm 2)", "keep_pqi", "{:d}")]
        if s["tolerance"] is not None:
            columns.append(("keep (eps)", "keep_eps", "{:d}"))
        parts = [head, format_table(columns, [*self.layers, self.total], separate_last=True)]
        parts += [f"not measured: {w['name']} ({w['module']}): {w['why']}" for w in self.left_alone]
        if self.neurons:
            summary = _neuron_summary(self.layers, self.neurons)
            parts += ["", "Per neuron (over rows: PQI min / mean / max; keep counts summed):",
                      format_table([("layer", "layer", "{}"), ("rows", "rows", "{:d}"),
                              ("PQI min", "min", "{:.4f}"), ("PQI mean", "mean", "{:.4f}"),
                              ("PQI max", "max", "{:.4f}"), ("keep (Thm 2)", "keep_pqi", "{:d}")]
                             + ([("keep (eps)", "keep_eps", "{:d}")] if s["tolerance"] is not None else []),
                             summary)]
        return "\n".join(parts)


def _neuron_summary(layers, neurons) -> list[dict]:
    out = []
    for layer in layers:
        rows = [n for n in neurons if n["layer"] == layer["layer"]]
        pqi = torch.tensor([n["pqi"] for n in rows], dtype=torch.float64)
        entry = {"layer": layer["layer"], "rows": len(rows), "min": pqi.min().item(),
                 "mean": pqi.mean().item(), "max": pqi.max().item(),
                 "keep_pqi": sum(n["keep_pqi"] for n in rows)}
        if "keep_eps" in rows[0]:
            entry["keep_eps"] = sum(n["keep_eps"] for n in rows)
        out.append(entry)
    return out


def format_table(columns, rows, separate_last: bool = False) -> str:
    """A fixed-width text table (the reports' and the demo's): `columns` are (header, key, format
    spec) triples, `rows` dicts; the first two columns align left, the rest right, and
    `separate_last` rules off the last row (a total)."""
    cells = [[fmt.format(r[key]) for _, key, fmt in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (h, _, _) in enumerate(columns)]

    def line(values):
        return "  ".join(v.ljust(w) if i < 2 else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    header = line([h for h, _, _ in columns])
    body = [line(c) for c in cells]
    if separate_last and len(body) > 1:
        body.insert(len(body) - 1, "-" * len(header))
    return "\n".join([header, "-" * len(header), *body])


def compressibility(model: nn.Module, *, q: float = 0.5, p: float = 0.5, pq: float = 1.0,
                    scope: str = "layer", include: Include = None, eta: float = 0.0,
                    tolerance: float | None = None, lipschitz: float = 1.0, input_bound: float = 1.0,
                    input_norm="inf") -> CompressibilityReport:
    """How compressible is each prunable weight? ([T]'s ℓq view and [S]'s PQI, docs/method.md §1-2.)

    Per weight (survivors of any existing prune mask only): shape, params, survivors, ‖w‖_q, SI_q,
    PQ Index I_{p,pq}, Hoyer, Gini, Theorem 2's keep ratio and count at η, and with `tolerance` the
    s-term keep count per neuron (theory.keep_count_for_tolerance with lipschitz, input_bound,
    input_norm) summed per weight. Plus a total row over all weights ('all weights', measured on
    their concatenation: one copy of the weights). scope="neuron" adds one row per output row
    (neuron / filter) with the same measures. q in (0, 1), 0 < p < pq. Every number comes from
    lqkernels.ops.
    """
    op = "compressibility"
    q = check_number("q", q, op, low=0.0, low_open=True, high=1.0, high_open=True)
    p, pq = check_pq(p, pq, op)
    eta = check_eta(eta, op)
    if scope not in SCOPES:
        raise ValueError(f"{op}: scope must be one of {SCOPES}, got {scope!r}")
    settings = {"q": q, "p": p, "pq": pq, "eta": eta, "scope": scope, "tolerance": None,
                "lipschitz": lipschitz, "input_bound": input_bound, "input_norm": input_norm}
    if tolerance is not None:
        # validated here, before any work, by the function that uses them
        theory.keep_count_for_tolerance(torch.ones(1, 1), tolerance, q, 1, lipschitz=lipschitz,
                                        input_bound=input_bound, input_norm=input_norm)
        settings["tolerance"] = float(tolerance)
    targets, left_alone = _scan(model, include, op)
    _agree_sharded(targets, op, settings=settings)
    with user_terms(op):
        report = _measure(targets, settings, scope, tolerance)
    report.left_alone = left_alone
    return report


def _measure(targets: list[_Target], settings: dict, scope: str, tolerance) -> CompressibilityReport:
    """compressibility()'s rows for `targets`, its arguments already checked."""
    report = CompressibilityReport(settings, neurons=[] if scope == "neuron" else None)
    for t in targets:
        report.layers.append(_measure_row(t.weight, t.survivors, settings, dim=None,
                                          layer=t.name, scope="layer"))
        if scope == "neuron":
            w2d, s2d = t.rows()
            per_row = _measure_row(w2d, s2d, settings, dim=1, layer=t.name, scope="neuron")
            for i in range(w2d.shape[0]):  # unpacking finished per-row tensors into dicts
                report.neurons.append({k: (v[i] if isinstance(v, list) else v) for k, v in per_row.items()}
                                      | {"neuron": i})
    flat, survivors, group = _concatenated(targets)
    report.total = _measure_row(flat, survivors, settings, dim=None, layer="all weights", scope="global",
                                group=group)
    report.total["shape"] = f"{len(targets)} tensors"
    report.total["params"] = sum(t.param.numel() for t in targets)
    if tolerance is not None:
        report.total["keep_eps"] = sum(r["keep_eps"] for r in report.layers)
    return report


def _concatenated(targets: list[_Target]):
    """(every weight flattened into one vector, its survivors or None, group): one copy of the
    weights. For a sharded model, this rank's blocks (a replicated weight on one rank only) and
    the mesh's group, over which the measures merge them."""
    sharded = [t for t in targets if t.sharded]
    group = None
    if sharded:
        layouts = [_distributed.layout(t.param, "compressibility") for t in sharded]
        if any(lay.mesh != layouts[0].mesh for lay in layouts):
            raise ValueError("compressibility: the model's weights live on different device meshes; "
                             "the total over all weights needs one")
        group = layouts[0].group

    def block(t: _Target, x: torch.Tensor) -> torch.Tensor:
        if not sharded:
            return x.reshape(-1)
        owned = t.sharded and _distributed.layout(t.param, "compressibility").shard_dim is not None
        local = _local(x).reshape(-1)
        return local if owned or layouts[0].coordinate == 0 else local[:0]

    flat = torch.cat([block(t, t.weight) for t in targets])
    survivors = None if all(t.survivors is None for t in targets) else torch.cat(
        [block(t, torch.ones_like(t.weight, dtype=torch.bool) if t.survivors is None else t.survivors)
         for t in targets])
    return flat, survivors, group


def _full(x: torch.Tensor) -> torch.Tensor:
    """A result whole on this rank (a sharded DTensor's blocks gathered: O(rows) numbers)."""
    return x.full_tensor() if _distributed.is_dtensor(x) else x


def _measure_row(w, mask, s: dict, *, dim, layer: str, scope: str, group=None) -> dict:
    """Every measure of `w` over `dim` (None: the whole tensor) as Python numbers (lists per row);
    with `group`, w is this rank's part of one vector split across the group."""
    def value(x):
        x = _full(x)
        return x.tolist() if dim is not None else x.item()

    pqi = _full(ops.pq_index(w, s["p"], s["pq"], dim, mask=mask, group=group)).double()
    count = _full(ops.lq_powsum(w, [], dim, mask=mask, group=group).count)
    ratio = (1 + s["eta"]) ** (-s["pq"] / (s["pq"] - s["p"])) * (1 - pqi).pow(s["pq"] * s["p"] / (s["pq"] - s["p"]))
    ratio = torch.where(count > 0, ratio, 0.0)
    row = {"scope": scope, "layer": layer, "shape": "x".join(map(str, w.shape)) if dim is None else str(w.shape[1]),
           "params": w.numel() if dim is None else w.shape[1], "survivors": value(count),
           "q": s["q"], "p": s["p"], "pq": s["pq"],
           "lq_norm": value(ops.lq_norm(w, s["q"], dim, mask=mask, group=group)),
           "si": value(ops.sparsity_index(w, s["q"], dim, mask=mask, group=group)),
           "pqi": value(pqi), "hoyer": value(ops.hoyer(w, dim, mask=mask, group=group)),
           "gini": value(ops.gini(w, dim, mask=mask, group=group)),
           "keep_ratio": value(ratio), "keep_pqi": value(theory.ceil_count(ratio * count, count))}
    if s["tolerance"] is not None:
        rows, rmask = (_rows_of(w), _rows_of(mask)) if dim is None and scope == "layer" else (w, mask)
        if scope == "layer":  # the guarantee is per neuron: sum the rows' counts
            counts = theory.keep_count_for_tolerance(rows, s["tolerance"], s["q"], 1, lipschitz=s["lipschitz"],
                                                     input_bound=s["input_bound"], input_norm=s["input_norm"],
                                                     mask=rmask)
            row["keep_eps"] = int(_full(counts).sum())
        elif scope == "neuron":
            row["keep_eps"] = _full(theory.keep_count_for_tolerance(
                w, s["tolerance"], s["q"], 1, lipschitz=s["lipschitz"], input_bound=s["input_bound"],
                input_norm=s["input_norm"], mask=mask)).tolist()
    return row


# ---- prune–retrain loop ----------------------------------------------------------------------
@dataclass
class History:
    """iterative()'s record: `settings` (method, scope, exponents, ...) and `rounds`, one dict per
    trained mask: round (0 = dense), remaining (fraction of each weight's entries alive),
    remaining_total, pqi (I_{p,q} of each weight's survivors after training, the method's (p, q);
    (0.5, 1) for lt / os), metrics (what eval_fn returned)."""
    settings: dict
    rounds: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"settings": self.settings, "rounds": self.rounds}

    def save(self, path) -> None:
        """Writes JSON (History.load reads it back)."""
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    @classmethod
    def load(cls, path) -> "History":
        with open(path) as f:
            data = json.load(f)
        return cls(data["settings"], data["rounds"])

    def plot(self, path) -> None:
        """PNG with three panels: metrics vs remaining weights, PQI per layer and remaining
        fraction per layer vs round (matplotlib's Agg canvas: no display, no global backend change)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(15, 4.2))
        FigureCanvasAgg(fig)
        ax_metric, ax_pqi, ax_left = fig.subplots(1, 3)
        remaining = [100 * r["remaining_total"] for r in self.rounds]
        for name in self.rounds[0]["metrics"] if self.rounds else []:
            ax_metric.plot(remaining, [r["metrics"][name] for r in self.rounds], "o-", label=name)
        ax_metric.set(xscale="log", xlabel="weights remaining (%)", title="metrics")
        ax_metric.invert_xaxis()
        rounds = [r["round"] for r in self.rounds]
        for layer in self.rounds[0]["pqi"] if self.rounds else []:
            ax_pqi.plot(rounds, [r["pqi"][layer] for r in self.rounds], ".-", label=layer)
            ax_left.plot(rounds, [100 * r["remaining"][layer] for r in self.rounds], ".-", label=layer)
        ax_pqi.set(xlabel="round", title=f"PQI({self.settings['p']:g}, {self.settings['q']:g}) of survivors")
        ax_left.set(xlabel="round", ylabel="%", yscale="log", title="weights remaining per layer")
        for ax in (ax_metric, ax_pqi, ax_left):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.suptitle(f"{self.settings['method']} ({self.settings['scope']} scope)")
        fig.tight_layout()
        fig.savefig(path, dpi=100)


def _values_by_identity(model: nn.Module, state_dict, op: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(tensor, value to rewind to) for every parameter and buffer except prune masks: the current
    values (state_dict None) or the entries of a state_dict, keyed either way (`w` or `w_orig`)."""
    pairs, seen = [], set()
    for fqn, module in model.named_modules():
        for kind in (module._parameters, module._buffers):
            for name, t in kind.items():
                if t is None or id(t) in seen or (name.endswith("_mask") and hasattr(module, name[:-5] + "_orig")):
                    continue
                seen.add(id(t))
                key = f"{fqn}.{name}" if fqn else name
                if state_dict is None:
                    pairs.append((t, t.detach().clone()))
                    continue
                plain = key[:-5] if name.endswith("_orig") else key
                value = state_dict.get(key, state_dict.get(plain))
                if value is None:
                    raise ValueError(f"{op}: rewind state_dict has no entry for {plain!r}")
                if not isinstance(value, torch.Tensor) or value.shape != t.shape:
                    got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                    raise ValueError(f"{op}: rewind state_dict entry {plain!r} has shape {got}, "
                                     f"the model's is {tuple(t.shape)}")
                pairs.append((t, value.detach().to(t.device, t.dtype).clone()))
    return pairs


def _rewind(pairs) -> None:
    with torch.no_grad():
        for t, value in pairs:
            t.copy_(value)


def _refresh(targets: list[_Target]) -> None:
    """Recomputes weight = weight_orig * weight_mask after the originals changed outside a forward."""
    for t in targets:
        if t.sharded:
            if t.survivors is not None and t.attr + "_mask" in t.modules[0]._buffers:
                _zero_pruned(t.param, t.survivors)
            continue
        for module in t.modules:
            if hasattr(module, t.attr + "_mask"):
                setattr(module, t.attr, getattr(module, t.attr + "_orig") * getattr(module, t.attr + "_mask"))


def _record(model, targets, t: int, p: float, q: float, metrics) -> dict:
    remaining, pqi = {}, {}
    for target in targets:
        remaining[target.name] = target.survivor_count() / target.param.numel()
        pqi[target.name] = _number(ops.pq_index(target.weight, p, q, mask=target.survivors))
    return {"round": t, "remaining": remaining, "remaining_total": _kept_fraction(targets),
            "pqi": pqi, "metrics": metrics}


def _metrics(value, op: str) -> dict:
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items()}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"metric": float(value)}
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return {"metric": value.item()}
    raise TypeError(f"{op}: eval_fn must return a number or a dict of numbers, got {type(value).__name__}")


def iterative(model: nn.Module, train_fn: Callable[[nn.Module], object], eval_fn: Callable[[nn.Module], object],
              *, method: str = "sap", rounds: int = 10, rewind="init", scope: str = "neuron",
              p: float = 0.5, q: float = 1.0, eta: float = 0.0, gamma: float = 1.0, beta: float = 0.9,
              amount: float = 0.2, include: Include = None, progress: bool = True) -> History:
    """The prune–retrain loop of [S] (docs/method.md §3): train, evaluate, prune, rewind, repeat.

    Round 0 trains the dense model; each of the next `rounds` prunes (on the survivors), rewinds
    and retrains, so `rounds + 1` masks are trained and recorded in the returned History.
    method:
      "sap"       [S] Algorithm 1: sap(p, q, eta, gamma, beta, scope) each round.
      "lq_neuron" the per-neuron ℓq rule: lq_neuron(q=p, eta, gamma, beta) each round ([T]).
      "lt"        lottery ticket: prune a fixed `amount` (0.2) of the survivors by magnitude.
      "os"        one shot: masks always ranked from the dense trained weights of round 0, keeping
                  (1 − amount)^t of each scope's entries in round t (nested, so combining with the
                  existing mask changes nothing).
    rewind: "init" (the values when iterative() was called, the lottery-ticket rewind; survivors
    take them, pruned weights stay masked), "none" (keep training from the trained weights:
    iterative magnitude pruning with fine-tuning), or a state_dict (e.g. weights from an early
    epoch; keys with or without `_orig`, every parameter and buffer needed).
    train_fn(model) trains in place (create the optimizer inside: parameters are renamed to
    weight_orig after the first pruning, and momentum from before a rewind is stale); gradients
    of pruned weights are zero through the prune hook. eval_fn(model) returns a number or a dict of
    numbers. progress: a tqdm bar (off with False). If train_fn or eval_fn raises, the model is
    restored to its state before this call and RuntimeError says which round failed.
    """
    op = "iterative"
    if not callable(train_fn) or not callable(eval_fn):
        raise TypeError(f"{op}: train_fn and eval_fn must be callables taking the model, got "
                        f"{type(train_fn).__name__} and {type(eval_fn).__name__}")
    if method not in METHODS:
        raise ValueError(f"{op}: method must be one of {METHODS}, got {method!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"{op}: rounds must be an int >= 0, got {rounds!r}")
    if not (isinstance(rewind, dict) or rewind in ("init", "none")):
        raise ValueError(f"{op}: rewind must be 'init', 'none' or a state_dict, got {rewind!r}")
    scope = _check_scope(scope, op)
    gamma, beta = _check_beta_gamma(gamma, beta, op)
    eta = check_eta(eta, op)
    amount = check_number("amount", amount, op, low=0.0, high=1.0)
    if method == "sap":
        p, q = check_pq(p, q, op)
        step = lambda: sap(model, p=p, q=q, eta=eta, gamma=gamma, beta=beta, scope=scope, include=include)  # noqa: E731
    elif method == "lq_neuron":
        if scope != "neuron":
            raise ValueError(f"{op}: method 'lq_neuron' is per neuron; got scope={scope!r}")
        p = check_number("p", p, op, low=0.0, low_open=True, high=1.0, high_open=True)
        q = 1.0
        step = lambda: lq_neuron(model, q=p, eta=eta, gamma=gamma, beta=beta, include=include)  # noqa: E731
    else:
        p, q = 0.5, 1.0  # what the history's PQI column measures
        step = lambda: magnitude(model, amount, scope=scope, include=include)  # noqa: E731
    targets, left_alone = _scan(model, include, op)
    snapshot = _Snapshot(model, values=True)
    rewind_to = None if rewind == "none" else _values_by_identity(model, rewind if isinstance(rewind, dict) else None, op)
    history = History({"method": method, "scope": scope, "rounds": rounds, "p": p, "q": q, "eta": eta,
                       "gamma": gamma, "beta": beta, "amount": amount,
                       "rewind": rewind if isinstance(rewind, str) else "state_dict"})
    _agree_sharded(targets, op, settings=history.settings)
    from tqdm.auto import tqdm

    dense, stage, t = None, "pruning", 0
    bar = tqdm(range(rounds + 1), desc=f"{method} ({scope})", disable=not progress, leave=False)
    try:
        for t in bar:
            stage = "pruning"
            if t > 0:
                if method == "os":
                    fraction = 1 - (1 - amount) ** t
                    before = _counts_to_log(targets)
                    masks = _select(targets, _FractionRule(fraction), scope, weights=dense,
                                    survivors=[None] * len(targets))
                    masks = [m if tg.survivors is None else m & tg.survivors for m, tg in zip(masks, targets)]
                    _apply_masks(model, targets, masks)
                    _log_step(f"{op} (os, round {t})", targets, before, left_alone)
                else:
                    step()
                targets = _targets(model, include, op)
                if rewind_to is not None:
                    _rewind(rewind_to)
                    _refresh(targets)
            stage = "train_fn"
            train_fn(model)
            _refresh(targets)
            stage = "eval_fn"
            metrics = _metrics(eval_fn(model), op)
            if t == 0 and method == "os":
                dense = [target.weight.clone() for target in targets]
            history.rounds.append(_record(model, targets, t, p, q, metrics))
            bar.set_postfix(left=f"{100 * history.rounds[-1]['remaining_total']:.2f}%",
                            **{k: f"{v:.4g}" for k, v in list(metrics.items())[:2]})
    except Exception as e:
        snapshot.restore()
        if isinstance(e, (TypeError, ValueError)) and str(e).startswith(f"{op}:"):
            raise
        raise RuntimeError(f"{op}: {stage} raised {type(e).__name__} in round {t}: {e}; the model "
                           f"was restored to its state before iterative()") from e
    finally:
        bar.close()
    return history
