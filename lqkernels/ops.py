"""lqkernels' public ops (code outside the project calls these names).

Measures (lqkernels.measures): lq_norm, lq_powsum, pq_index, sparsity_index, hoyer, gini.
Selection (lqkernels.selection): topk_mask, topk_threshold, global_topk_masks, nm_mask.
Each takes backend="auto"|"cpp"|"cuda"|"triton"|"torch" (default: LQK_BACKEND, else auto).
"""
from lqkernels.measures import PowSums, gini, hoyer, lq_norm, lq_powsum, pq_index, sparsity_index
from lqkernels.selection import global_topk_masks, nm_mask, topk_mask, topk_threshold

__all__ = ["lq_norm", "lq_powsum", "pq_index", "sparsity_index", "hoyer", "gini", "PowSums",
           "topk_mask", "topk_threshold", "global_topk_masks", "nm_mask"]
