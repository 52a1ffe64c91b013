"""The released reference procedure of [S] (github: diaoenmao/Pruning-Deep-Neural-Networks-from-a-
Sparsity-Perspective, src/modules/compression.py and sparsity_index.py), restated as functions
over (weights, survivor masks) so the benchmarks time one pruning step against ours. Written the
way that code does it: PQI from torch.linalg.norm over the masked-to-zero weights (pruned entries
are zeros there; d from the mask), r = ceil(...) in float32, then per scope
  neuron: |w| copy with NaN at pruned entries, a per-row sort (NaNs last), gather the c_i-th
          smallest, prune everything strictly below it;
  layer:  masked copy w[mask], sort, index the c-th smallest;
  global: concatenation of every w[mask], sort, index the c-th smallest;
  LT / OS baselines: the pivot from torch.nanquantile (neuron), np.quantile (layer — the released
          code calls torch.quantile, which refuses inputs over 2^24 elements — and global).
Each returns the new masks and the weights zeroed outside them (the released code's param.data
update), without changing its inputs."""
import numpy as np
import torch


def _released_si(x: torch.Tensor, mask: torch.Tensor, dim, p: float, q: float) -> torch.Tensor:
    d = mask.float().sum(dim=dim)
    nq = torch.linalg.norm(x, q, dim=dim)
    return (nq - d ** ((1 / q) - (1 / p)) * torch.linalg.norm(x, p, dim=dim)) / nq, d


def _released_num_prune(si, d, p, q, eta, gamma, beta):
    m = torch.ceil(d * (1 + eta) ** (q / (p - q)) * (1 - si) ** ((q * p) / (q - p))).long()
    prune_ratio = torch.clamp(gamma * (1 - m / d), 0, beta)
    return torch.floor(d * prune_ratio).long()


def _finish(weights, masks, pivots):
    new_masks = [torch.where(w.abs() < pivot, False, m) for w, m, pivot in zip(weights, masks, pivots)]
    return new_masks, [torch.where(m, w, torch.tensor(0, dtype=torch.float)) for w, m in zip(weights, new_masks)]


def released_sap_step(weights, masks, scope: str, p=0.5, q=1.0, eta=0.0, gamma=1.0, beta=0.9):
    """One SAP step of the released code at `scope` ("neuron", "layer" or "global"). `weights` are
    zero where `masks` is False, as the released code keeps its parameters between steps."""
    pivots = []
    if scope == "neuron":
        for w, m in zip(weights, masks):
            rows = w.view(w.size(0), -1)
            si, d = _released_si(rows, m.view(rows.shape), 1, p, q)
            num_prune = _released_num_prune(si, d, p, q, eta, gamma, beta)
            pivot_param = w.abs()
            pivot_param[~m] = float("nan")
            pivot = torch.sort(pivot_param.view(w.size(0), -1), dim=1)[0][torch.arange(w.size(0)), num_prune]
            pivots.append(pivot.view(-1, *[1] * (w.dim() - 1)))
    elif scope == "layer":
        for w, m in zip(weights, masks):
            si, d = _released_si(w.view(-1), m.view(-1), -1, p, q)
            num_prune = _released_num_prune(si, d, p, q, eta, gamma, beta)
            pivots.append(torch.sort(w[m].abs().view(-1))[0][num_prune])
    else:
        flat = torch.cat([w.view(-1) for w in weights])
        flat_mask = torch.cat([m.view(-1) for m in masks])
        si, d = _released_si(flat, flat_mask, -1, p, q)
        num_prune = _released_num_prune(si, d, p, q, eta, gamma, beta)
        survivors = torch.cat([w[m].abs().view(-1) for w, m in zip(weights, masks)])
        pivot = torch.sort(survivors)[0][num_prune]
        pivots = [pivot] * len(weights)
    return _finish(weights, masks, pivots)


def released_lt_step(weights, masks, scope: str, amount=0.2):
    """One lottery-ticket step (prune `amount` of the survivors) of the released code; `weights`
    zero where `masks` is False."""
    if scope == "layer":
        pivots = [float(np.quantile(w[m].abs().numpy(), amount)) for w, m in zip(weights, masks)]
    else:
        survivors = torch.cat([w[m].abs().view(-1) for w, m in zip(weights, masks)])
        pivots = [float(np.quantile(survivors.numpy(), amount))] * len(weights)
    return _finish(weights, masks, pivots)
