"""benchmarks/gpu_claims.py: the claims read from the tables of the H200 run checked in under
benchmarks/h200, and from made-up tables where a claim is met."""
from __future__ import annotations

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("gpu_claims", os.path.join(ROOT, "benchmarks", "gpu_claims.py"))
gpu_claims = sys.modules["gpu_claims"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(gpu_claims)


def by_claim(result: dict) -> dict:
    return {(r["claim"], r["dtype"]): r for r in result["claims"]}


def test_the_first_h200_run():
    result = gpu_claims.evaluate(os.path.join(ROOT, "benchmarks", "h200"))
    assert (result["device"], result["torch"], result["triton"]) == ("NVIDIA H200", "2.11.0+cu130", "3.6.0")
    claims = by_claim(result)
    # the best backend of each case, as benchmarks/h200/*.md list them
    assert claims[("lq_norm q=0.5 vs torch", "bfloat16")]["measured"] == 1.21  # triton's
    assert claims[("lq_norm q=1.0: % of copy bandwidth", "float32")]["measured"] == 38.0  # triton's
    assert claims[("nm_mask 2:4 time / floor", "float32")]["measured"] == 11.87  # cuda's
    assert claims[("per-row topk_mask time", "bfloat16")]["measured"] == 1749.1
    assert claims[("global_topk_masks vs kthvalue(cat)", "float32")]["measured"] == 161.8
    assert claims[("block-sparse (90% of 32x32 blocks empty) batch 4096 vs cuBLAS", "bfloat16")]["measured"] == 2.37
    auto = claims[("SparseLinear auto vs cuBLAS, worst point of the sweep", "bfloat16")]
    assert auto["measured"] == 0.02 and auto["at"] == "50% unstructured, batch 64"
    decode = claims[("decode step of the pruned block vs the dense block", "bfloat16")]
    assert decode["measured"] is None and not decode["met"]  # that run had no decode block
    assert not any(r["met"] for r in result["claims"])  # the run this work starts from


def test_met_claims_at_least_and_at_most(tmp_path):
    (tmp_path / "gpu_measures.md").write_text(
        "device: NVIDIA H200, torch 2.14.0, triton 3.8.0\n\n"
        "| op | dtype | backend | time (us) | read GB/s | % of copy BW | peer (us) | peer / ours | rel err vs fp64 |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        "| lq_norm q=2.0 | bfloat16 | cuda | 60.0 | 1957 | 46% | 47.9 | 0.80x | 1e-3 |\n"
        "| lq_norm q=2.0 | bfloat16 | triton | 33.0 | 3558 | 84% | 47.9 | 1.45x | 1e-3 |\n")
    (tmp_path / "gpu_selection.md").write_text(
        "| case | backend | time (us) | floor (us) | time / floor | sort peer / ours | topk peer / ours |\n"
        "|---|---|---|---|---|---|---|\n"
        "| 2:4 4096x4096 float32 | triton | 30.1 | 19.8 | 1.52 | | |\n"
        "| 2:4 4096x4096 float32 | cuda | 234.7 | 19.8 | 11.87 | | |\n")
    claims = by_claim(gpu_claims.evaluate(str(tmp_path)))
    assert claims[("lq_norm q=2.0 vs torch", "bfloat16")] | {} == {
        "claim": "lq_norm q=2.0 vs torch", "shape": "14336x4096", "dtype": "bfloat16", "target": 1.25, "unit": "x",
        "measured": 1.45, "met": True}
    assert claims[("lq_norm q=2.0: % of copy bandwidth", "bfloat16")]["met"]  # 84% >= 80%
    nm = claims[("nm_mask 2:4 time / floor", "float32")]
    assert nm["measured"] == 1.52 and nm["met"]  # at most 2x the floor
    assert not claims[("lq_norm q=1.0 vs torch", "bfloat16")]["met"]  # absent from the table
