"""One decode step of a Llama-style decoder block, dense against SAP-pruned and sparsified (issue 16).

The block has Llama-3-8B's shapes: hidden 4096, SwiGLU MLP of 14336, 32 query heads of 128 and 8
KV heads (grouped-query attention), RMSNorm, RoPE, no biases; random weights from a seed (nothing
is downloaded). Its three MLP projections (gate, up, down) are pruned by SAP steps
(lqkernels.prune.sap, neuron scope) until the target share of their weights is pruned, then
swapped for SparseLinear by lqkernels.sparsify_ (format "auto"); attention stays dense.

One decode step: batch 1, a KV cache holding 1024 tokens, the new token's k and v written into
the next slot, attention over all 1025. The pruned and sparsified block is timed against the dense
block (the weights before pruning, plain torch) in the same run, median of interleaved repeats;
its output is checked against the pruned block's computed densely (W * mask, plain torch).

    python benchmarks/decode_block.py                        # CPU, full size (up to ~6.5 GB of memory)
    python benchmarks/decode_block.py --dtype float32 bfloat16 --threads 2
    python benchmarks/decode_block.py --device cuda          # bfloat16, eager and CUDA graph
    python benchmarks/decode_block.py --dry-run              # tiny shapes, seconds (the tests run it)

Exits 1 when the sparse block's output does not match.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

import lqkernels
from lqkernels import prune
from lqkernels.cli import remove_masks
from lqkernels.nn import FORMATS

from bench_sparse_linear import machine, median_ms  # benchmarks/ is on sys.path for a script run from it


@dataclass(frozen=True)
class Shapes:
    hidden: int
    mlp: int
    heads: int
    kv_heads: int
    cached_tokens: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


LLAMA3_8B = Shapes(hidden=4096, mlp=14336, heads=32, kv_heads=8, cached_tokens=1024)
DRY_RUN = Shapes(hidden=256, mlp=896, heads=4, kv_heads=2, cached_tokens=16)
ROPE_THETA = 500000.0  # Llama 3's
INIT_STD = 0.02  # Llama's initializer_range
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
# The CPU runs both dtypes (SparseLinear has float32 and bfloat16 kernels); float32 by measurement
# (benchmarks/RESULTS.md, "Decode step of a Llama-style block"): it gains 1.3-1.4x over the dense
# block with AVX-512 and AVX2 alike, where bfloat16 gains 1.6x with AVX-512 but 1.0-1.1x with AVX2.
# CUDA: bfloat16, as models are served there.
DEFAULT_DTYPE = {"cpu": "float32", "cuda": "bfloat16"}


class Attention(nn.Module):
    def __init__(self, s: Shapes):
        super().__init__()
        self.shapes = s
        self.q_proj = nn.Linear(s.hidden, s.heads * s.head_dim, bias=False)
        self.k_proj = nn.Linear(s.hidden, s.kv_heads * s.head_dim, bias=False)
        self.v_proj = nn.Linear(s.hidden, s.kv_heads * s.head_dim, bias=False)
        self.o_proj = nn.Linear(s.heads * s.head_dim, s.hidden, bias=False)

    def forward(self, x: torch.Tensor, cache: "KVCache") -> torch.Tensor:
        s = self.shapes
        q = cache.rope(self.q_proj(x).view(1, s.heads, 1, s.head_dim))
        cache.k[:, :, -1:] = cache.rope(self.k_proj(x).view(1, s.kv_heads, 1, s.head_dim))
        cache.v[:, :, -1:] = self.v_proj(x).view(1, s.kv_heads, 1, s.head_dim)
        out = F.scaled_dot_product_attention(q, cache.k, cache.v, enable_gqa=True)
        return self.o_proj(out.reshape(1, s.heads * s.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, s: Shapes):
        super().__init__()
        self.gate_proj = nn.Linear(s.hidden, s.mlp, bias=False)
        self.up_proj = nn.Linear(s.hidden, s.mlp, bias=False)
        self.down_proj = nn.Linear(s.mlp, s.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderBlock(nn.Module):
    """Pre-norm Llama block; forward takes one token's hidden state, (1, hidden)."""

    def __init__(self, s: Shapes):
        super().__init__()
        self.input_norm = nn.RMSNorm(s.hidden, eps=1e-5)
        self.attn = Attention(s)
        self.post_attention_norm = nn.RMSNorm(s.hidden, eps=1e-5)
        self.mlp = SwiGLU(s)

    def forward(self, x: torch.Tensor, cache: "KVCache") -> torch.Tensor:
        h = x + self.attn(self.input_norm(x), cache)
        return h + self.mlp(self.post_attention_norm(h))


class KVCache:
    """A static cache of cached_tokens + 1 slots: the first hold the earlier tokens' k and v (random,
    seeded), the last is where each step writes the new token's. Every step therefore does the
    same work on the same addresses, as a decode step at that position does, and a CUDA graph of
    it can be replayed."""

    def __init__(self, s: Shapes, dtype: torch.dtype, device: str, gen: torch.Generator):
        shape = (1, s.kv_heads, s.cached_tokens + 1, s.head_dim)
        self.k = torch.randn(shape, generator=gen).to(device, dtype)
        self.v = torch.randn(shape, generator=gen).to(device, dtype)
        position = s.cached_tokens
        frequencies = ROPE_THETA ** (-torch.arange(0, s.head_dim, 2, dtype=torch.float64) / s.head_dim)
        angles = torch.cat([position * frequencies] * 2)
        self.cos, self.sin = (angles.cos().to(device, dtype), angles.sin().to(device, dtype))

    def to(self, dtype: torch.dtype) -> "KVCache":
        """A copy, in `dtype` (the float64 reference computes on the same rounded values)."""
        converted = copy.copy(self)
        for name in ("k", "v", "cos", "sin"):
            setattr(converted, name, getattr(self, name).to(dtype, copy=True))
        return converted

    def rope(self, x: torch.Tensor) -> torch.Tensor:
        """Rotary embedding at the new token's position (Llama's rotate-half layout)."""
        first, second = x.chunk(2, dim=-1)
        return x * self.cos + torch.cat((-second, first), dim=-1) * self.sin


def random_block(s: Shapes, seed: int) -> DecoderBlock:
    """Llama's initialisation: every projection normal(0, INIT_STD), the norms' weights 1."""
    torch.manual_seed(seed)
    block = DecoderBlock(s)
    with torch.no_grad():
        for linear in block.modules():
            if isinstance(linear, nn.Linear):
                linear.weight.normal_(0.0, INIT_STD)
    return block.eval()


def prune_mlp(block: DecoderBlock, target: float, gamma: float, max_steps: int) -> list[float]:
    """SAP steps (p = 0.5, q = 1, neuron scope) on the MLP until at least `target` of its weights
    are pruned (or max_steps), then the masks made permanent (zeros in plain weights, which
    sparsify_ takes as the mask). Returns the MLP's sparsity after each step.

    gamma scales each step's prune count (SAP's γ, capped by β = 0.9 of a row's survivors): on
    these random normal weights, γ = 1 prunes ~15% in a first step and ever less in the next
    (68.9% after 30 steps); γ = 4 reaches 70% in 4."""
    sparsities = []
    while len(sparsities) < max_steps and (not sparsities or sparsities[-1] < target):
        prune.sap(block.mlp, p=0.5, q=1.0, gamma=gamma, scope="neuron")
        sparsities.append(1.0 - prune.remaining_fraction(block.mlp))
        print(f"SAP step {len(sparsities)} (gamma {gamma:g}): {sparsities[-1]:.2%} of the MLP weights pruned",
              flush=True)
    remove_masks(block.mlp)
    return sparsities


def formats(block: DecoderBlock) -> str:
    """The format auto stored per MLP projection, and where a batch-1 call runs the dense product
    instead (measured on the layer when it was first called on the CPU)."""
    parts = []
    for name in MLP_PROJECTIONS:
        layer = getattr(block.mlp, name)
        dense_at_decode = layer.format != "dense" and layer.resolved_backend(1) == "dense"
        parts.append(f"{name.removesuffix('_proj')} {layer.format}" + (" (dense product at batch 1)" * dense_at_decode))
    return ", ".join(parts)


def check_output(sparse: DecoderBlock, pruned: DecoderBlock, s: Shapes, dtype: torch.dtype, device: str,
                 seed: int) -> bool:
    """Whether the sparse block's output matches the pruned block's, computed densely by torch in
    the same dtype. The bound follows flash-attention's tests: the sparse block's error against
    the float64 computation may be at most twice torch's own error in this dtype, plus one unit
    in the last place of the output (the kernels sum in another order, and bfloat16 rounds each
    product's inputs and the activations between the layers)."""
    x = torch.randn(1, s.hidden, generator=torch.Generator().manual_seed(seed + 1)).to(device, dtype)
    cache = KVCache(s, dtype, device, torch.Generator().manual_seed(seed + 2))
    outputs = {"sparse": sparse(x, cache.to(dtype)).double(), "torch": pruned(x, cache.to(dtype)).double(),
               "float64": copy.deepcopy(pruned).double()(x.double(), cache.to(torch.float64))}
    reference = outputs["float64"]
    error = {name: (outputs[name] - reference).abs().max().item() for name in ("sparse", "torch")}
    ulp = torch.finfo(dtype).eps * reference.abs().max().item()
    ok = error["sparse"] <= 2 * error["torch"] + ulp
    difference = (outputs["sparse"] - outputs["torch"]).abs().max().item()
    print(f"correctness ({dtype_name(dtype)}): sparse block vs pruned dense block, max |difference| "
          f"{difference:.2e}; against float64: sparse {error['sparse']:.2e}, torch {error['torch']:.2e} "
          f"(bound: 2x torch's + 1 ulp = {2 * error['torch'] + ulp:.2e}): {'OK' if ok else 'MISMATCH'}", flush=True)
    return ok


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def synchronized(step, device: str):
    """On CUDA each timed call waits for the step to finish: batch-1 decode waits for each token
    before sampling the next, so the latency of one step is what counts."""
    if device != "cuda":
        return step

    def call(x):
        step(x)
        torch.cuda.synchronize()
    return call


def cuda_graph(step, x: torch.Tensor):
    """The step captured in a CUDA graph (x is its static input; the cache slot it writes is the
    same on every replay), warmed up on a side stream first as torch.cuda.graph needs."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(x)
    return lambda _: graph.replay()


def measure(dense: DecoderBlock, sparse: DecoderBlock, s: Shapes, dtype: torch.dtype, args) -> list[dict]:
    """Median ms of one decode step of each block, interleaved; eager, and on CUDA also graphed."""
    device = args.device
    x = torch.randn(1, s.hidden, generator=torch.Generator().manual_seed(args.seed + 3)).to(device, dtype)
    caches = {name: KVCache(s, dtype, device, torch.Generator().manual_seed(args.seed + 2))
              for name in ("dense", "sparse")}
    steps = {"dense": lambda x: dense(x, caches["dense"]), "sparse": lambda x: sparse(x, caches["sparse"])}
    modes = {"eager": steps}
    if device == "cuda":
        try:
            modes["CUDA graph"] = {name: cuda_graph(step, x) for name, step in steps.items()}
        except RuntimeError as error:  # keep the eager numbers of a scarce GPU run
            print(f"CUDA graph capture failed, eager only: {error}", flush=True)
    rows = []
    for mode, fns in modes.items():
        ms = median_ms({name: synchronized(fn, device) for name, fn in fns.items()}, x, args.budget,
                       min_reps=min(5, args.repeats), max_reps=args.repeats)
        rows.append({"mode": mode, **ms})
    return rows


def run_dtype(dense32: DecoderBlock, pruned32: DecoderBlock, s: Shapes, dtype: torch.dtype,
              args) -> tuple[bool, list[dict]]:
    """The blocks in `dtype` on the device: checked, then timed. Returns (output matches, table rows)."""
    dense = copy.deepcopy(dense32).to(args.device, dtype)
    pruned = copy.deepcopy(pruned32).to(args.device, dtype)
    # batch_sizes=(1,): auto chooses each layer's format for what the block serves, decode steps
    sparse = lqkernels.sparsify_(copy.deepcopy(pruned), lambda module, fqn: fqn.startswith("mlp."), format=args.format,
                                 batch_sizes=(1,))
    with torch.inference_mode():
        ok = check_output(sparse, pruned, s, dtype, args.device, args.seed)
        del pruned  # before timing: the memory of the run is the two timed blocks
        rows = measure(dense, sparse, s, dtype, args)
    for row in rows:
        row.update(dtype=dtype_name(dtype), formats=formats(sparse))
    return ok, rows


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", nargs="+", choices=("float32", "bfloat16", "float16"),
                        help="one row per dtype (default: float32 on the CPU, bfloat16 on CUDA)")
    parser.add_argument("--format", choices=("auto",) + FORMATS, default="auto",
                        help="the format sparsify_ stores (default auto: its choice per layer on this machine)")
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's setting)")
    parser.add_argument("--target-sparsity", type=float, default=0.7, help="share of the MLP weights to prune")
    parser.add_argument("--gamma", type=float, default=4.0, help="SAP's gamma per step (see prune_mlp)")
    parser.add_argument("--max-steps", type=int, default=40, help="SAP steps at most")
    parser.add_argument("--repeats", type=int, help="interleaved timed steps of each block at most (default 100; "
                        "dry run 10)")
    parser.add_argument("--budget", type=float, default=4.0, help="seconds of timing per block and mode at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help=f"tiny shapes ({DRY_RUN}), a few seconds")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    s = DRY_RUN if args.dry_run else LLAMA3_8B
    args.repeats = args.repeats or (10 if args.dry_run else 100)
    dtypes = [getattr(torch, name) for name in (args.dtype or [DEFAULT_DTYPE[args.device]])]

    dense32 = random_block(s, args.seed)
    pruned32 = copy.deepcopy(dense32)
    start = time.perf_counter()
    sparsities = prune_mlp(pruned32, args.target_sparsity, args.gamma, args.max_steps)
    print(f"pruned {sparsities[-1]:.2%} of the MLP weights in {len(sparsities)} SAP steps, "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    all_ok, rows = True, []
    for dtype in dtypes:
        ok, dtype_rows = run_dtype(dense32, pruned32, s, dtype, args)
        all_ok &= ok
        rows += dtype_rows

    print(f"\ndecode step, batch 1, {s.cached_tokens} cached tokens + 1; hidden {s.hidden}, MLP {s.mlp}, "
          f"{s.heads} heads / {s.kv_heads} KV heads of {s.head_dim}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of up to {args.repeats} interleaved steps")
    print("| device | dtype | mode | dense ms | sparse ms | dense / sparse | MLP sparsity | formats |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {device_name(args.device)} | {row['dtype']} | {row['mode']} | {row['dense']:.3f} | "
              f"{row['sparse']:.3f} | {row['dense'] / row['sparse']:.2f}x | {sparsities[-1]:.2%} | {row['formats']} |")
    print(f"\ncorrectness: {'the sparse block matches the pruned dense block' if all_ok else 'MISMATCH (see above)'}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
