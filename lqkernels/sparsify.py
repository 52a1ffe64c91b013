"""Swap pruned `nn.Linear` layers of a model for `lqkernels.nn.SparseLinear`, and back.

    lqkernels.sparsify_(model)                                   # every pruned nn.Linear
    lqkernels.sparsify_(model, lambda mod, fqn: "mlp" in fqn, format="bitmap")
    lqkernels.densify_(model)
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from lqkernels.nn import SparseLinear

__all__ = ["sparsify_", "densify_"]


def _is_pruned(linear: nn.Linear) -> bool:
    """Carries a torch.nn.utils.prune mask, or has exact zeros in its weight."""
    return hasattr(linear, "weight_mask") or bool((linear.weight == 0).any())


def _replace(model: nn.Module, fqn: str, new: nn.Module) -> nn.Module:
    if not fqn:
        return new
    parent_name, _, child = fqn.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)
    return model


def sparsify_(model: nn.Module, filter_fn: Callable[[nn.Module, str], bool] | None = None, *,
              format: str = "auto", backend: str | None = None, calibrate: bool = True) -> nn.Module:
    """Replaces, in place, each `nn.Linear` chosen by `filter_fn(module, fqn)` (torchao's
    convention; default: the pruned ones, see `_is_pruned`) with `SparseLinear.from_linear(module,
    format=format)`; the mask is prune's `weight_mask` if present, else `weight != 0`. Returns the
    model (a new module only if `model` itself is a chosen nn.Linear). SparseLinear layers are left
    as they are; `format` must be one of lqkernels.nn.FORMATS or "auto" (else ValueError).
    `calibrate` (format "auto", CPU): measure each layer's choices on this machine (a few calls
    per candidate, shared by layers of the same shape and density) rather than follow the cost
    model; see lqkernels.nn, "calibration".
    """
    chosen = filter_fn if filter_fn is not None else (lambda module, fqn: _is_pruned(module))
    for fqn, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and not isinstance(module, SparseLinear) and chosen(module, fqn):
            model = _replace(model, fqn, SparseLinear.from_linear(module, format=format, backend=backend,
                                                                   calibrate=calibrate))
    return model


def densify_(model: nn.Module) -> nn.Module:
    """Replaces, in place, every SparseLinear with the equivalent `nn.Linear` (W * mask). Returns
    the model (a new module only if `model` itself is a SparseLinear)."""
    for fqn, module in list(model.named_modules()):
        if isinstance(module, SparseLinear):
            model = _replace(model, fqn, module.to_linear())
    return model
