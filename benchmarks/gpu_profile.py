"""Where the time of one call goes on the GPU: for each op family, the kernels one call launches
(torch.profiler, after a warm-up) with their device time, against the call's median wall time.
A gap between the two is host work (Python, checks, allocation, synchronisation).

    python benchmarks/gpu_profile.py --out $OUT/gpu_profile.md
"""
import torch
from gpu_common import median_ms, start
from torch.profiler import ProfilerActivity, profile

from lqkernels import ops
from lqkernels.nn import SparseLinear


def main() -> None:
    table, _, gen = start(__doc__, "out/gpu_profile.md", "| call | median (us) | kernel | launches | device time (us) |")
    w = torch.randn(14336, 4096, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randint(200, 3900, (w.shape[0],), device="cuda", generator=gen)
    mask = torch.rand(w.shape, device="cuda", generator=gen) >= 0.9
    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16, generator=gen)
    layer = SparseLinear.from_linear(torch.nn.Linear(4096, 14336, bias=False, device="cuda", dtype=torch.bfloat16), mask,
                                     format="csr16", backend="cuda")
    calls = {f"lq_norm q=0.5 {b}": (lambda b=b: ops.lq_norm(w, 0.5, 1, backend=b)) for b in ("cuda", "triton")}
    calls |= {f"topk_mask per-row k {b}": (lambda b=b: ops.topk_mask(w, k, backend=b)) for b in ("cuda", "triton")}
    calls["csr16 linear 90% batch 1 cuda"] = lambda: layer(x)
    for name, fn in calls.items():
        with table.guard(name):
            fn()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
            ms = median_ms(fn)
            events = sorted((e for e in prof.key_averages() if e.device_time_total > 0),
                            key=lambda e: -e.device_time_total)
            for e in events[:6]:
                table.add(f"| {name} | {ms * 1e3:.1f} | {e.key[:90]} | {e.count} | {e.device_time_total:.1f} |")


if __name__ == "__main__":
    main()
