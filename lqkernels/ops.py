"""lqkernels' public ops (code outside the project calls these names).

Measures (lqkernels.measures): lq_norm, lq_powsum, pq_index, sparsity_index, hoyer, gini.
Selection (lqkernels.selection): topk_mask, topk_threshold, global_topk_masks, nm_mask.
Each takes backend="auto"|"cpp"|"cuda"|"triton"|"torch" (default: LQK_BACKEND, else auto).
Sharded data: each also takes a DTensor (1-D mesh; Shard or Replicate) and returns results placed
as its input, and the measures, topk_mask, topk_threshold and global_topk_masks take group= for
plain tensors split across ranks by the caller (lqkernels._distributed; README, "Pruning a
sharded model").
"""
from lqkernels.measures import PowSums, gini, hoyer, lq_norm, lq_powsum, pq_index, sparsity_index
from lqkernels.selection import global_topk_masks, nm_mask, topk_mask, topk_threshold

__all__ = ["lq_norm", "lq_powsum", "pq_index", "sparsity_index", "hoyer", "gini", "PowSums",
           "topk_mask", "topk_threshold", "global_topk_masks", "nm_mask"]
