"""Argument checks shared by the public ops: each raises TypeError or ValueError naming the value;
and user_terms, which makes errors from deeper layers name the public function that was called."""
from __future__ import annotations

import re

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


_LEADING_NAME = re.compile(r"([A-Za-z_][\w.]*): ")


def in_user_terms(error: BaseException, public: str) -> BaseException:
    """`error` as the caller of the public function `public` should read it: the same type, the
    message led by `public` (and the argument names the public function checks itself). A leading
    kernel-level op name (an op of torch.ops.lqkernels, e.g. row_topk_mask, which the caller never
    called) is replaced; the name of another public function it came through stays after `public`
    as detail. Returns `error` itself when it already names `public` or cannot be rebuilt."""
    message = str(error)
    leading = _LEADING_NAME.match(message)
    if leading and leading.group(1) == public:
        return error
    if leading and hasattr(torch.ops.lqkernels, leading.group(1)):
        message = message[leading.end():]
    try:
        retold = type(error)(f"{public}: {message}")
    except Exception:  # an exception type whose constructor takes other arguments
        return error
    return retold.with_traceback(error.__traceback__)


class user_terms:
    """`with user_terms("topk_mask"): ...` re-raises a ValueError, TypeError or RuntimeError from
    the block through in_user_terms (a class, not @contextmanager: it wraps every kernel call, and
    costs ~0.2 us there instead of ~1 us)."""
    __slots__ = ("public",)

    def __init__(self, public: str):
        self.public = public

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if isinstance(error, (ValueError, TypeError, RuntimeError)):
            raise in_user_terms(error, self.public) from None
        return False
