"""Swap pruned `nn.Linear` layers of a model for `lqkernels.nn.SparseLinear`, and back.

    lqkernels.sparsify_(model)                                   # every pruned nn.Linear
    lqkernels.sparsify_(model, lambda mod, fqn: "mlp" in fqn, format="bitmap")
    print(model.sparsify_report)                                 # what was swapped, what was not and why
    lqkernels.densify_(model)

What sparsify_ did is logged (logger `lqkernels.sparsify`: INFO per layer, WARNING when it swapped
nothing) and attached to the model it returns as `sparsify_report` (a SparsifyReport).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from lqkernels import _distributed
from lqkernels._checks import user_terms
from lqkernels.nn import FORMATS, MIN_SPARSE_WEIGHTS, SparseLinear, check_batch_sizes
from lqkernels.prune import format_table

__all__ = ["sparsify_", "densify_", "SparsifyReport"]

_log = logging.getLogger(__name__)


@dataclass
class SparsifyReport:
    """What one sparsify_ call did. `swapped`: one dict per layer replaced by a SparseLinear (layer,
    shape, kept fraction, format stored, why: for a "dense" format, why auto kept it dense);
    `left_alone`: one dict per layer it did not replace (layer, module, why: not pruned, not chosen
    by filter_fn, already a SparseLinear, not an nn.Linear but pruned)."""
    swapped: list = field(default_factory=list)
    left_alone: list = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"sparsify_: swapped {len(self.swapped)} nn.Linear layer(s) for SparseLinear, "
                 f"left {len(self.left_alone)} alone"]
        if self.swapped:
            parts.append(format_table([("layer", "layer", "{}"), ("shape", "shape", "{}"), ("kept", "kept", "{:.1%}"),
                                       ("format", "format", "{}")], self.swapped))
        parts += [f"stored dense: {row['layer']}: {row['why']}" for row in self.swapped if row["why"]]
        parts += [f"left alone: {row['layer']} ({row['module']}): {row['why']}" for row in self.left_alone]
        return "\n".join(parts)


def _is_pruned(linear: nn.Module) -> bool:
    """Carries a torch.nn.utils.prune mask, or has exact zeros in its weight (prune's meaning of
    "kept": mask set, else nonzero)."""
    return hasattr(linear, "weight_mask") or bool((linear.weight == 0).any())


def _replace(model: nn.Module, fqn: str, new: nn.Module) -> nn.Module:
    if not fqn:
        return new
    parent_name, _, child = fqn.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)
    return model


def _why_dense(layer: SparseLinear) -> str:
    if not layer.auto:
        return "format 'dense' asked for"
    weights = layer.in_features * layer.out_features
    if weights < MIN_SPARSE_WEIGHTS:
        return f"auto: too small for a sparse kernel ({weights:,} < {MIN_SPARSE_WEIGHTS:,} weights)"
    if layer._calibrating(layer.values.device):
        return "auto: no sparse format measured faster than dense on this CPU (calibrated)"
    return "auto: no sparse format predicted faster at this density on this device"


def _why_left_alone(module: nn.Module, fqn: str, filter_fn) -> str | None:
    """None: sparsify_ swaps `module`; "": not a layer it considers (containers, activations,
    unpruned non-Linear layers); else why it leaves the layer alone."""
    if isinstance(module, SparseLinear):
        return "already a SparseLinear"
    if not isinstance(module, nn.Linear):
        return "pruned, but SparseLinear replaces nn.Linear only" if hasattr(module, "weight_mask") else ""
    if filter_fn is not None:
        return None if filter_fn(module, fqn) else "not chosen by filter_fn"
    return None if _is_pruned(module) else "not pruned (no weight_mask and no zero weight)"


def sparsify_(model: nn.Module, filter_fn: Callable[[nn.Module, str], bool] | None = None, *,
              format: str = "auto", backend: str | None = None, calibrate: bool = True,
              batch_sizes: Sequence[int] | None = None) -> nn.Module:
    """Replaces, in place, each `nn.Linear` chosen by `filter_fn(module, fqn)` (torchao's
    convention; default: the pruned ones, see `_is_pruned`) with `SparseLinear.from_linear(module,
    format=format)`; the mask is prune's `weight_mask` if present, else `weight != 0`. Returns the
    model (a new module only if `model` itself is a chosen nn.Linear) with a SparsifyReport as its
    `sparsify_report` attribute: which layers were swapped (and, for "auto", why one stayed dense:
    too small, or no sparse format faster), which were left alone and why. The same goes to the
    `lqkernels.sparsify` logger (INFO; WARNING when nothing was swapped, e.g. on an unpruned
    model). SparseLinear layers are left as they are; `format` must be one of
    lqkernels.nn.FORMATS or "auto" (else ValueError).
    `calibrate` (format "auto", CPU): measure each layer's choices on this machine (a few calls
    per candidate, shared by layers of the same shape and density) rather than follow the cost
    model; see lqkernels.nn, "calibration". `batch_sizes` (format "auto"): the batch sizes the
    format is chosen for (default 1 and 16 where measured; (1,) for a model that serves decode
    steps); see SparseLinear.from_linear. Bad values raise before any layer is swapped.
    """
    if format not in FORMATS + ("auto",):  # checked before any layer is swapped
        raise ValueError(f"sparsify_: unknown format {format!r}; choose one of {FORMATS} or 'auto'")
    batch_sizes = check_batch_sizes(batch_sizes, "sparsify_")
    sharded = next((name for name, p in model.named_parameters() if _distributed.is_dtensor(p)), None)
    if sharded is not None:
        raise ValueError(f"sparsify_: {sharded} is a sharded DTensor; SparseLinear packs whole weights, so "
                         f"sparsify an unsharded copy (e.g. from torch.distributed.checkpoint.state_dict."
                         f"get_model_state_dict(model, options=StateDictOptions(full_state_dict=True)))")
    report = SparsifyReport()
    for fqn, module in list(model.named_modules()):
        why = _why_left_alone(module, fqn, filter_fn)
        if why is not None:
            if why:
                report.left_alone.append({"layer": fqn or "(model)", "module": type(module).__name__, "why": why})
            continue
        with user_terms("sparsify_"):
            layer = SparseLinear.from_linear(module, format=format, backend=backend, calibrate=calibrate,
                                             batch_sizes=batch_sizes)
        model = _replace(model, fqn, layer)
        report.swapped.append({"layer": fqn or "(model)", "shape": f"{layer.out_features}x{layer.in_features}",
                               "kept": 1 - layer.sparsity, "format": layer.format,
                               "why": _why_dense(layer) if layer.format == "dense" else ""})
    if report.swapped:
        _log.info("%s", report)
    else:
        _log.warning("sparsify_ changed nothing: no nn.Linear layer to swap (prune the model first, e.g. "
                     "with lqkernels.prune, or choose layers with filter_fn)\n%s", report)
    model.sparsify_report = report
    return model


def densify_(model: nn.Module) -> nn.Module:
    """Replaces, in place, every SparseLinear with the equivalent `nn.Linear` (W * mask). Returns
    the model (a new module only if `model` itself is a SparseLinear)."""
    for fqn, module in list(model.named_modules()):
        if isinstance(module, SparseLinear):
            model = _replace(model, fqn, module.to_linear())
    return model
