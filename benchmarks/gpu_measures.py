"""GPU benchmark of the measure ops (issue 2's H200 claims): time with triton.testing.do_bench
(median), bandwidth against the copy bandwidth measured in the same run, ratio against the torch
peers, and each result's relative error against float64.

    python benchmarks/gpu_measures.py --out $OUT/gpu_measures.md
"""
import torch
from gpu_common import median_ms, rel_err, start

from lqkernels import ops
from peers import torch_lq_norm, torch_pq_index

ROWS, COLS = 14336, 4096


def main() -> None:
    table, bw, gen = start(__doc__, "out/gpu_measures.md",
                           "| op | dtype | backend | time (us) | read GB/s | % of copy BW | peer (us) | peer / ours | rel err vs fp64 |",
                           f"; W = {ROWS} x {COLS}, dim=1 unless noted")
    exponents = (0.2, 0.4, 0.6, 0.8, 1.0)
    for dtype in (torch.bfloat16, torch.float32):
        w = torch.randn(ROWS, COLS, device="cuda", dtype=dtype, generator=gen)
        w64 = w.double()
        nbytes = w.numel() * w.element_size()
        cases = [(f"lq_norm q={q}", lambda b, q=q: ops.lq_norm(w, q, 1, backend=b),
                  lambda q=q: torch_lq_norm(w, q, 1), torch_lq_norm(w64, q, 1)) for q in (0.5, 1.0, 2.0, 0.3, 1.7)]
        cases.append(("lq_norm q=0.5 dim=None", lambda b: ops.lq_norm(w, 0.5, backend=b),
                      lambda: torch_lq_norm(w, 0.5), torch_lq_norm(w64, 0.5)))
        cases.append(("pq_index (0.5, 1)", lambda b: ops.pq_index(w, 0.5, 1.0, 1, backend=b),
                      lambda: torch_pq_index(w, 0.5, 1.0, 1), torch_pq_index(w64, 0.5, 1.0, 1)))
        cases.append(("powsum 5 exponents", lambda b: ops.lq_powsum(w, exponents, 1, backend=b).sums,
                      lambda: torch.stack([w.float().abs().pow(q).sum(1) for q in exponents]),
                      torch.stack([w64.abs().pow(q).sum(1) for q in exponents])))
        for name, ours, peer, ref in cases:
            peer_ms = median_ms(peer)
            for backend in ("cuda", "triton"):
                with table.guard(f"{name} | {str(dtype)[6:]} | {backend}"):
                    err = rel_err(ours(backend), ref)
                    ms = median_ms(lambda: ours(backend))
                    read = nbytes / (ms * 1e-3)
                    table.add(f"| {name} | {str(dtype)[6:]} | {backend} | {ms * 1e3:.1f} | {read / 1e9:.0f} | "
                              f"{100 * read / bw:.0f}% | {peer_ms * 1e3:.1f} | {peer_ms / ms:.2f}x | {err:.1e} |")


if __name__ == "__main__":
    main()
