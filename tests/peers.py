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
