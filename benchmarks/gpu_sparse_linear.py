"""GPU benchmark of SparseLinear (issue 4's H200 claims), timed with triton.testing.do_bench
(median) against cuBLAS (dense F.linear on W * mask) in the same run:

  * decode: bf16, W = 14336 x 4096, batch 1-64, sparsity 50/70/90/95%: bitmap and csr16 on the
    CUDA C++ and Triton backends, "auto", and the bytes each reads against the copy bandwidth;
  * block-sparse: batch 4096, 90% of 32x32 blocks empty: bsr (Triton tl.dot) against cuBLAS;
  * 2:4 (nm_mask-style) weights: torch's semi-structured sparsity against cuBLAS, to decide
    whether N:M layers should use it (it is not wired into SparseLinear until this is measured).
Relative errors against float64 are reported with each time. Budget: about a minute.

    python benchmarks/gpu_sparse_linear.py --out $OUT/gpu_sparse_linear.md
"""
import torch
from gpu_common import median_ms, rel_err, start
from torch.nn import functional as F

from lqkernels.nn import SparseLinear

OUT_FEATURES, IN_FEATURES = 14336, 4096


def masked_layer(mask: torch.Tensor, gen: torch.Generator):
    linear = torch.nn.Linear(IN_FEATURES, OUT_FEATURES, bias=False, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, device="cuda", generator=gen))
    return linear, (linear.weight * mask).detach()


def main() -> None:
    table, bw, gen = start(__doc__, "out/gpu_sparse_linear.md",
                           "| case | batch | kernel | time (us) | cuBLAS (us) | cuBLAS / ours | weight bytes read, % of copy BW | rel err vs fp64 |",
                           f"; W = {OUT_FEATURES} x {IN_FEATURES} bf16")
    with torch.no_grad():
        for sparsity in (0.5, 0.7, 0.9, 0.95):
            mask = torch.rand(OUT_FEATURES, IN_FEATURES, device="cuda", generator=gen) >= sparsity
            linear, masked = masked_layer(mask, gen)
            case = f"{sparsity:.0%} unstructured"
            layers = {}
            for fmt, backend in [("bitmap", "cuda"), ("bitmap", "triton"), ("csr16", "cuda"), ("csr16", "triton"),
                                 ("auto", None)]:
                name = "auto" if fmt == "auto" else f"{fmt}/{backend}"
                with table.guard(f"{case} | - | {name}"):
                    layers[name] = SparseLinear.from_linear(linear, mask, format=fmt, backend=backend)
            for batch in (1, 4, 16, 64):
                x = torch.randn(batch, IN_FEATURES, device="cuda", dtype=torch.bfloat16, generator=gen)
                ref = F.linear(x.double(), masked.double())
                dense = median_ms(lambda: F.linear(x, masked))
                for name, layer in layers.items():
                    with table.guard(f"{case} | {batch} | {name}"):
                        err = rel_err(layer(x), ref)
                        t = median_ms(lambda: layer(x))
                        share = layer.nbytes / (t * 1e-3) / bw  # bytes read per second over copy traffic
                        table.add(f"| {case} | {batch} | {name} ({layer.format}) | {t * 1e3:.1f} | "
                                  f"{dense * 1e3:.1f} | {dense / t:.2f} | {layer.nbytes / 1e6:.1f} MB, {share:.0%} | "
                                  f"{err:.1e} |")
            del layers
        # Block-sparse at large batch: 90% of the 32x32 blocks empty, the rest fully kept.
        blocks = torch.rand(OUT_FEATURES // 32, IN_FEATURES // 32, device="cuda", generator=gen) >= 0.9
        mask = blocks.repeat_interleave(32, 0).repeat_interleave(32, 1)
        linear, masked = masked_layer(mask, gen)
        with table.guard("90% empty 32x32 blocks | - | bsr/triton"):
            bsr = SparseLinear.from_linear(linear, mask, format="bsr")
            for batch in (512, 4096):
                x = torch.randn(batch, IN_FEATURES, device="cuda", dtype=torch.bfloat16, generator=gen)
                err = rel_err(bsr(x), F.linear(x.double(), masked.double()))
                dense, t = median_ms(lambda: F.linear(x, masked)), median_ms(lambda: bsr(x))
                table.add(f"| 90% empty 32x32 blocks | {batch} | bsr/triton | {t * 1e3:.1f} | {dense * 1e3:.1f} | "
                          f"{dense / t:.2f} | {bsr.nbytes / 1e6:.1f} MB | {err:.1e} |")
        # 2:4 weights through torch's semi-structured sparsity (cuSPARSELt / CUTLASS).
        groups = torch.randn(OUT_FEATURES, IN_FEATURES // 4, 4, device="cuda", generator=gen).abs()
        keep = groups >= groups.topk(2, -1).values[..., 1:]
        linear, masked = masked_layer(keep.flatten(1), gen)
        with table.guard("2:4 semi-structured (torch) | - | torch"):
            semi = torch.sparse.to_sparse_semi_structured(masked)
            for batch in (1, 16, 64, 4096):
                x = torch.randn(batch, IN_FEATURES, device="cuda", dtype=torch.bfloat16, generator=gen)
                err = rel_err(F.linear(x, semi), F.linear(x.double(), masked.double()))
                dense, t = median_ms(lambda: F.linear(x, masked)), median_ms(lambda: F.linear(x, semi))
                table.add(f"| 2:4 semi-structured (torch) | {batch} | torch | {t * 1e3:.1f} | {dense * 1e3:.1f} | "
                          f"{dense / t:.2f} | | {err:.1e} |")


if __name__ == "__main__":
    main()
