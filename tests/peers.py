"""What users do today without lqkernels: the peers the benchmarks measure against, written the
way the peers' own documentation and the paper authors' released code do it."""
import torch


def torch_lq_norm(w: torch.Tensor, q: float, dim=None) -> torch.Tensor:
    """One torch.linalg.vector_norm call: one pass with an accurate pow per element."""
    return torch.linalg.vector_norm(w, q, dim=dim)


def torch_pq_index(w: torch.Tensor, p: float = 0.5, q: float = 1.0, dim=None) -> torch.Tensor:
    """PQ Index as in the authors' code: two vector_norm calls (two passes over w)."""
    d = w.numel() if dim is None else w.shape[dim]
    return 1 - d ** (1 / q - 1 / p) * torch.linalg.vector_norm(w, p, dim=dim) / torch.linalg.vector_norm(w, q, dim=dim)


def torch_gini(w: torch.Tensor, dim=None) -> torch.Tensor:
    """Gini index (Hurley–Rickard) as users write it: sort |w| (each row for dim=1 of a matrix,
    all of it for None), then the rank-weighted sum 1 − 2 Σ_k c_(k) (d − k + ½) / (d Σ c)."""
    c = w.abs().reshape(1 if dim is None else w.shape[0], -1).sort(dim=1).values
    d = c.shape[1]
    rank = torch.arange(1, d + 1, dtype=c.dtype, device=c.device)
    return (1 - 2 * (c * (d - rank + 0.5)).sum(1) / (d * c.sum(1))).reshape(() if dim is None else -1)


def torch_rowwise_topk_mask(w: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per-row k without lqkernels: sort |w| per row, gather the k_i-th value, compare."""
    a = w.abs()
    ranked = a.sort(dim=1, descending=True).values
    threshold = ranked.gather(1, (k - 1).clamp_min(0)[:, None])
    return (a >= threshold) & (k[:, None] > 0)


def torch_kthvalue_mask(w: torch.Tensor, k: int) -> torch.Tensor:
    """One k for every row (torch has no per-row k): kthvalue of |w|, then a compare."""
    a = w.abs()
    return a >= torch.kthvalue(a, a.shape[1] - k + 1, dim=1, keepdim=True).values


def torch_topk_rows_mask(w: torch.Tensor, k: int) -> torch.Tensor:
    """torch.topk-based per-row selection (one k for all rows), scattered into a mask."""
    out = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
    return out.scatter_(1, w.abs().topk(k, dim=1).indices, True)


def torch_global_masks(tensors, k: int):
    """Global magnitude pruning as users do it: kthvalue over the concatenation, then compares."""
    flat = torch.cat([t.abs().flatten() for t in tensors])
    threshold = torch.kthvalue(flat, flat.numel() - k + 1).values
    return [t.abs() >= threshold for t in tensors]
