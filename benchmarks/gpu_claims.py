"""The GPU claims, measured: reads the tables a device run of benchmarks/gpu_check.sh returns
(gpu_measures.md, gpu_selection.md, gpu_sparse_linear.md, decode_block.md) and writes one record
per claim, {claim, shape, dtype, target, measured, unit, met}, with the device, torch and triton
of the run and the commit, as JSON (benchmarks/h200/claims.json once committed).

    python benchmarks/gpu_claims.py out/gpu > benchmarks/h200/claims.json
    python benchmarks/gpu_claims.py benchmarks/h200            # the tables of an earlier run

Each claim takes the best of the backends (or kernels) the table lists for its case: the claim is
about what the library can run, and `auto` follows the best once it is measured. A table that is
missing, or a case it lacks, gives a record with measured None and met False.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

W = "14336x4096"  # the weight of the measures and sparse-linear benchmarks


@dataclass
class Claim:
    claim: str
    table: str  # the file it is read from
    shape: str
    dtype: str
    target: float
    unit: str  # "x" and "%": at least the target; "us" and "x floor": at most
    rows: Callable[[dict], bool]  # the table rows (one per backend) of the case
    value: Callable[[dict], float]  # a row's measure

    @property
    def at_most(self) -> bool:
        return self.unit in ("us", "x floor")


def _num(text: str) -> float:
    return float(re.search(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", text).group())


def _measure_rows(op: str, dtype: str) -> Callable[[dict], bool]:
    return lambda row: row["op"] == op and row["dtype"] == dtype


def _sparse_rows(case: str, batch: int, kernels: tuple[str, ...] = ("bitmap", "csr16", "bsr")) -> Callable[[dict], bool]:
    return lambda row: (row["case"] == case and int(row["batch"]) == batch
                        and row["kernel"].split("/")[0] in kernels)


def claims() -> list[Claim]:
    peer_ratio = lambda row: _num(row["peer / ours"])  # noqa: E731
    time_us = lambda row: _num(row["time (us)"])  # noqa: E731
    cublas_ratio = lambda row: _num(row["cublas / ours"])  # noqa: E731
    out = []
    for dtype in ("bfloat16", "float32"):  # issue 15: measures, dim=1 unless noted, peer torch
        for op, target in (("lq_norm q=1.0", 1.25), ("lq_norm q=2.0", 1.25), ("lq_norm q=0.5", 3.0),
                           ("lq_norm q=0.3", 2.5), ("lq_norm q=1.7", 2.5), ("lq_norm q=0.5 dim=None", 3.0),
                           ("pq_index (0.5, 1)", 4.0), ("powsum 5 exponents", 15.0)):
            out.append(Claim(f"{op} vs torch", "gpu_measures.md", W, dtype, target, "x",
                             _measure_rows(op, dtype), peer_ratio))
        for op in ("lq_norm q=1.0", "lq_norm q=2.0"):
            out.append(Claim(f"{op}: % of copy bandwidth", "gpu_measures.md", W, dtype, 80.0, "%",
                             _measure_rows(op, dtype), lambda row: _num(row["% of copy bw"])))
    for case, shape, dtype, most in (("per-row k 4096x4096 float32", "4096x4096", "float32", 80.0),
                                     ("per-row k 14336x4096 bfloat16", W, "bfloat16", 166.0)):
        rows = lambda row, case=case: row["case"] == case  # noqa: E731
        out.append(Claim("per-row topk_mask time", "gpu_selection.md", shape, dtype, most, "us", rows, time_us))
        out.append(Claim("per-row topk_mask vs the sort-based way", "gpu_selection.md", shape, dtype, 8.0, "x", rows,
                         lambda row: _num(row["sort peer / ours"])))
    for case, shape, dtype in (("2:4 4096x4096 float32", "4096x4096", "float32"), ("2:4 14336x4096 bfloat16", W, "bfloat16")):
        out.append(Claim("nm_mask 2:4 time / floor", "gpu_selection.md", shape, dtype, 2.0, "x floor",
                         lambda row, case=case: row["case"] == case, lambda row: _num(row["time / floor"])))
    global_case = lambda row: row["case"].startswith("global 16 x 4M")  # noqa: E731
    out.append(Claim("global_topk_masks time", "gpu_selection.md", "16x4M", "float32", 300.0, "us", global_case, time_us))
    out.append(Claim("global_topk_masks vs kthvalue(cat)", "gpu_selection.md", "16x4M", "float32", 1500.0, "x",
                     global_case, lambda row: _num(row["sort peer / ours"].split(":")[-1])))
    for sparsity, batch, target in ((50, 1, 1.6), (70, 1, 2.5), (90, 1, 5.0), (50, 16, 1.3), (90, 16, 3.0)):  # issue 16
        out.append(Claim(f"SparseLinear {sparsity}% batch {batch} vs cuBLAS", "gpu_sparse_linear.md", W, "bfloat16",
                         target, "x", _sparse_rows(f"{sparsity}% unstructured", batch), cublas_ratio))
    for batch, target in ((4096, 4.0), (512, 1.5)):
        out.append(Claim(f"block-sparse (90% of 32x32 blocks empty) batch {batch} vs cuBLAS", "gpu_sparse_linear.md",
                         W, "bfloat16", target, "x", _sparse_rows("90% empty 32x32 blocks", batch), cublas_ratio))
    out.append(Claim("decode step of the pruned block vs the dense block", "decode_block.md",
                     "Llama-3-8B block, MLP ~70% pruned, batch 1, 1024 cached", "bfloat16", 1.8, "x",
                     lambda row: row["dtype"] == "bfloat16", lambda row: _num(row["dense / sparse"])))
    return out


def read_tables(path: str) -> tuple[list[dict], dict]:
    """The rows of every markdown table in `path` (keys: the lowercased headers) and the run's
    device line ({device, torch, triton})."""
    rows, header, run = [], None, {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            found = re.match(r"device: (.*?), torch (\S+), triton (\S+)", line)
            if found:
                run = dict(zip(("device", "torch", "triton"), found.groups()))
            if not line.startswith("|"):
                header = None
                continue
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = [c.lower() for c in cells]
            elif not set(line) <= set("|-: "):
                rows.append(dict(zip(header, cells)))
    return rows, run


def auto_claims(rows: list[dict]) -> list[dict]:
    """'auto >= 0.95x cuBLAS at every point of the sweep': the worst auto row."""
    auto = [r for r in rows if r.get("kernel", "").startswith("auto")]
    worst = min(auto, key=lambda r: _num(r["cublas / ours"]), default=None)
    return [{"claim": "SparseLinear auto vs cuBLAS, worst point of the sweep", "shape": W, "dtype": "bfloat16",
             "target": 0.95, "unit": "x", "measured": _num(worst["cublas / ours"]) if worst else None,
             "at": f"{worst['case']}, batch {worst['batch']}" if worst else None,
             "met": bool(worst) and _num(worst["cublas / ours"]) >= 0.95}]


def evaluate(directory: str) -> dict:
    tables, run = {}, {}
    for name in ("gpu_measures.md", "gpu_selection.md", "gpu_sparse_linear.md", "decode_block.md"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            tables[name], found = read_tables(path)
            run = run or found
    records = []
    for c in claims():
        values = []
        for row in tables.get(c.table, []):
            try:
                if c.rows(row):
                    values.append(c.value(row))
            except (KeyError, ValueError, AttributeError):  # a row of another table in the file
                continue
        best = (min(values) if c.at_most else max(values)) if values else None
        met = best is not None and (best <= c.target if c.at_most else best >= c.target)
        records.append({"claim": c.claim, "shape": c.shape, "dtype": c.dtype, "target": c.target, "unit": c.unit,
                        "measured": best, "met": met})
    records += auto_claims(tables.get("gpu_sparse_linear.md", []))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    return {**run, "commit": commit, "claims": records}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="where the device run's tables are (e.g. out/gpu)")
    args = parser.parse_args()
    result = evaluate(args.directory)
    json.dump(result, sys.stdout, indent=1)
    print()
    met = sum(r["met"] for r in result["claims"])
    print(f"{met} of {len(result['claims'])} claims met", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
