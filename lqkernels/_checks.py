"""Argument checks shared by the public ops: each raises TypeError or ValueError naming the value."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_scores(x, op: str, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float16, bfloat16, float32 or float64, got {x.dtype}")


def check_mask(mask, x: torch.Tensor, op: str, name: str = "mask", of: str = "x") -> None:
    """None, or a bool tensor of x's shape on x's device (`of` names x in messages)."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"{op}: {name} must be a bool tensor, got {got}")
    if mask.shape != x.shape:
        raise ValueError(f"{op}: {name} shape {tuple(mask.shape)} does not match {of} shape {tuple(x.shape)}")
    if mask.device != x.device:
        raise ValueError(f"{op}: {name} is on {mask.device} but {of} is on {x.device}")
