"""Static check of every GPU kernel, without a GPU: compile, disassemble, count, hold to rules.

What it checks. Every CUDA kernel in csrc/cuda/kernels/*.cu is compiled with nvcc for sm_90a (the
flags of the real build, CMakeLists.txt), and every Triton kernel in lqkernels/_triton/ is compiled
ahead of time for sm_90 at the benchmark shapes, specialised as its launcher would specialise it
(TRITON_CASES). From ptxas -v and the cubin's resource usage come registers, stack frame, local
memory and spills; from the SASS come the hot loops (innermost loops: a backward BRA closes each)
and, per loop, the global loads by width, MUFU, BAR, SHFL, atomics, CAS, fences, CALL, LDL/STL.
RULES says what each kernel must satisfy, and why. One line per kernel, then PASS or FAIL.

The baseline (benchmarks/gpu_static_baseline.json) is a ratchet: kernel -> {rule: reason} for the
rules that kernel is allowed to break today (the kernels that break them are to be rewritten).
Every checked kernel has an entry, empty when it breaks nothing. The command fails (exit 1) when a
kernel breaks a rule that its entry does not list, or when a kernel of the baseline is missing or
fails to compile; baseline entries that now pass are printed so they can be removed.

    python benchmarks/gpu_static.py                     # check against the baseline
    python benchmarks/gpu_static.py --only 'powsum'     # only kernels whose name matches
    python benchmarks/gpu_static.py --json out/gpu_static.json
    python benchmarks/gpu_static.py --update-baseline   # accept today's failures as the baseline

Compiled outputs are cached under build/gpu_static/, keyed by a hash of the sources and flags.
Needs nvcc, cuobjdump (or Triton's bundled copy), c++filt and triton; no GPU.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import glob
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_DIR = os.path.join(ROOT, "build", "gpu_static")
BASELINE = os.path.join(ROOT, "benchmarks", "gpu_static_baseline.json")
CUDA_SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "kernels", "*.cu")))
# The kernel sources are torch-free; what they include lives in csrc/ (CMakeLists.txt: -I csrc).
CUDA_HEADERS = sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*.h*"), recursive=True))
# CMakeLists.txt: -O3 --expt-relaxed-constexpr, C++20, Hopper (TORCH_CUDA_ARCH_LIST=9.0a).
NVCC_FLAGS = ["-gencode=arch=compute_90a,code=sm_90a", "-O3", "-Xptxas", "-v", "--expt-relaxed-constexpr",
              "-std=c++20", "-I", os.path.join(ROOT, "csrc"), "-cubin"]
H200_SMS = 132  # the Triton launchers size their grids by the SM count (row_powsum_triton's splits)

# ---- rules ------------------------------------------------------------------------------------
# Defaults hold for every kernel; each RULES entry whose regex matches the kernel's name overrides
# some of them, in order.
#   max_registers: 128 per thread leaves room for 2 CTAs of 256 threads (16 warps) per SM, which a
#     memory-bound kernel needs to keep enough loads in flight.
#   streaming: the kernel reads its input once, front to back, so its hot loops should issue
#     16-byte loads (LDG.E.128): 4x fewer load instructions than 4-byte ones for the same bytes.
#   max_barriers_per_loop: a __syncthreads / bar.sync in a streaming loop stalls every warp of the
#     block once per tile; reductions should stay in registers and shuffles until the loop ends.
#   max_barriers_per_program: a kernel without loops handles one tile per program (a whole row of
#     row_powsum); its block reductions cost 1-2 barriers each, once per tile, while the other
#     programs resident on the SM (8 or more at <= 64 registers x 128 threads) keep loading. 12
#     covers the max and five exponents' sums of the five-exponent case.
# Always: no spills and no local memory (a stack frame or LDL/STL is per-thread DRAM traffic), and
# no CAS, fence or CALL in hot code (a CAS retry loop serialises contending threads; a fence drains
# the memory pipeline each time; a CALL is a slow path or a non-inlined helper). Hot code: the
# innermost loops, or the whole body of a kernel without loops (one tile per program).
DEFAULT_RULES = {"max_registers": 128, "streaming": False, "max_barriers_per_loop": 4, "max_barriers_per_program": 12}
RULES = [
    (r"row_powsum|row_gini|row_topk|global_(histogram|count|mark)|_digit_histogram|_mark_kernel"
     r"|csr16_linear|bitmap_linear|_nm_mask", {"streaming": True, "max_barriers_per_loop": 0}),
    # Radix selection ranks boundary ties across the block in index order: a block-wide scan per
    # tile (CUDA mark_tile: 3 barriers) is the algorithm, not an accident.
    (r"row_topk", {"max_barriers_per_loop": 3}),
    # A row held on chip through a radix select: each of the 4 digit passes of a 32-bit key takes a
    # shared-memory histogram, a scan of its 256 bins and two reductions (~11 barriers), then one
    # scan ranks the boundary ties; ~5 programs per SM (88-96 registers) overlap them.
    (r"row_topk_on_chip", {"max_barriers_per_program": 48}),
    # N:M groups: one thread per group of at most 32 scores, loads of one score at a time.
    (r"small_row_topk", {"streaming": False}),
    # Tensor-core tiles are compute-bound: one CTA per SM suffices, so the accumulator tile may
    # take every register (255 is the hardware's limit per thread).
    (r"_bsr_linear", {"max_registers": 255}),
]


def rules_for(kernel: str) -> dict:
    rules = dict(DEFAULT_RULES)
    for pattern, overrides in RULES:
        if re.search(pattern, kernel):
            rules.update(overrides)
    return rules


# ---- Triton cases ------------------------------------------------------------------------------
# (label, module, kernel, arguments, constexprs): arguments as the launcher passes them, tensors as
# meta tensors of the right dtype (torch's allocations are 16-byte aligned, as a launch sees them),
# integers with the benchmark shapes' values (Triton specialises ints divisible by 16, and 1).
# A launcher that passes num_warps has it among the constexprs; otherwise Triton's defaults (4 warps,
# 3 stages) apply.

def _triton_cases():
    import torch
    import triton.language as tl

    from lqkernels._triton.measures import on_chip_constexprs, on_chip_warps, powsum_geometry
    from lqkernels._triton.selection import DIGIT_BITS_ON_CHIP

    def t(dtype):
        return torch.empty(0, dtype=dtype, device="meta")

    bf16, f32, f64, i64, i32, i16, u8 = (torch.bfloat16, torch.float32, torch.float64, torch.int64, torch.int32,
                                         torch.int16, torch.bool)
    rows, cols = 14336, 4096  # benchmarks/gpu_measures.py, gpu_sparse_linear.py: W 14336 x 4096

    def on_chip(x, qs):  # rows of the benchmark shape, one per program, with the launcher's constexprs
        acc = torch.float32
        constexprs = on_chip_constexprs(qs, acc, cols, has_mask=False, fast=True)
        return dict(x_ptr=t(x), mask_ptr=t(x), qs_ptr=t(acc), sums_ptr=t(acc), scale_ptr=t(acc), count_ptr=t(i64),
                    n=cols, out_stride=rows), dict(constexprs, num_warps=on_chip_warps(constexprs["ROW"]))

    def powsum(x, n, slices, nq, kind):  # the launcher's own geometry, 2 programs per SM
        splits, span = powsum_geometry(slices, n, 2 * H200_SMS)
        return dict(x_ptr=t(x), mask_ptr=t(x), qs_ptr=t(f32), sums_ptr=t(f32), scale_ptr=t(f32), count_ptr=t(i64),
                    n=n, span=span, splits=splits, out_stride=slices * splits), \
            dict(HAS_MASK=False, NQ=nq, QPAD=1 << (nq - 1).bit_length(), KIND=kind, BLOCK=1024, ACC=tl.float32,
                 FAST=True)

    def topk(x, key, key_tl, key_bits):
        return dict(x_ptr=t(x), k_ptr=t(i64), mask_ptr=t(x), out_ptr=t(u8), kth_ptr=t(key), n=cols), \
            dict(HAS_MASK=False, MAGNITUDE=True, LARGEST=True, KEY=key_tl, KEY_BITS=key_bits, BLOCK=1024)

    select_flags = dict(HAS_MASK=False, MAGNITUDE=True, LARGEST=True, KEY=tl.uint32, KEY_BITS=32, BLOCK=1024)
    numel = 2048 * 2048  # gpu_selection.py: global top-k over 16 tensors of 2048 x 2048 float32

    def histogram(decided, shift, bits):
        return dict(x_ptr=t(f32), mask_ptr=t(f32), numel=numel, prefix_ptr=t(i32), decided=decided,
                    hist_ptr=t(i32), shift=shift, digit_mask=(1 << bits) - 1), select_flags

    def mark(ties_only):
        return dict(x_ptr=t(f32), mask_ptr=t(f32), numel=numel, kth_ptr=t(i32), out_ptr=t(u8), ties_ptr=t(i64),
                    budget_ptr=t(i64)), dict(TIES_ONLY=ties_only, **select_flags)

    def decode(index, batch, *extra):  # csr16 / bitmap: batch rows of x, bf16 W 14336 x 4096
        return dict(x_ptr=t(bf16), values_ptr=t(bf16), offsets_ptr=t(i64), index_ptr=t(index), bias_ptr=t(bf16),
                    y_ptr=t(bf16), m_rows=batch, in_features=cols, out_features=rows, **dict(extra)), \
            dict(HAS_BIAS=False, BLOCK_M=min(16, 1 << (batch - 1).bit_length()), BLOCK_K=64, ACC=tl.float32)

    def rename(args, name):  # the launchers pass the index array positionally
        args[name] = args.pop("index_ptr")
        return args

    def bsr(batch):
        return dict(x_ptr=t(bf16), values_ptr=t(bf16), offsets_ptr=t(i64), block_columns_ptr=t(i32),
                    bias_ptr=t(bf16), y_ptr=t(bf16), m_rows=batch, in_features=cols, out_features=rows), \
            dict(HAS_BIAS=False, BLOCK_M=64, B=32, IEEE=False, ACC=tl.float32)

    five = (0.2, 0.4, 0.6, 0.8, 1.0)  # gpu_measures.py: five exponents in one pass
    cases = [
        # dim=1 rows of 4096 entries: one program holds a row (benchmarks/gpu_measures.py's cases)
        *((f"_row_powsum_on_chip_kernel[{name}]", "measures", "_row_powsum_on_chip_kernel", *on_chip(x, qs))
          for name, x, qs in (("bf16 q=1", bf16, (1.0,)), ("bf16 q=2", bf16, (2.0,)), ("bf16 q=0.5", bf16, (0.5,)),
                              ("bf16 q=0.3", bf16, (0.3,)), ("bf16 pq 0.5,1", bf16, (0.5, 1.0)),
                              ("bf16 5 exponents", bf16, five), ("fp32 q=2", f32, (2.0,)),
                              ("fp32 q=0.3", f32, (0.3,)))),
        # dim=None: the whole tensor as one row, split over 2 programs per SM
        ("_row_powsum_kernel[bf16 q=0.5 one row]", "measures", "_row_powsum_kernel",
         *powsum(bf16, rows * cols, 1, 1, 3)),
        ("_row_powsum_kernel[fp32 q=2 one row]", "measures", "_row_powsum_kernel", *powsum(f32, rows * cols, 1, 1, 2)),
        ("_row_powsum_kernel[bf16 q=0.3 one row]", "measures", "_row_powsum_kernel",
         *powsum(bf16, rows * cols, 1, 1, 0)),
        ("_row_powsum_kernel[bf16 pq one row]", "measures", "_row_powsum_kernel", *powsum(bf16, rows * cols, 1, 2, 0)),
        ("_row_gini_kernel[fp32]", "measures", "_row_gini_kernel",
         dict(sorted_ptr=t(f32), pruned_ptr=t(i64), out_ptr=t(f32), n=cols), dict(BLOCK=1024, ACC=tl.float64)),
        # gpu_selection.py's per-row top-k: rows of 4096 entries, each held by one program
        *((f"_row_topk_on_chip_kernel[{name}]", "selection", "_row_topk_on_chip_kernel",
           topk(x, i32, tl.uint32, 32)[0],
           dict(HAS_MASK=False, MAGNITUDE=True, LARGEST=True, KEY=tl.uint32, KEY_BITS=32, ROW=cols,
                DIGIT_BITS=DIGIT_BITS_ON_CHIP, num_warps=on_chip_warps(cols)))
          for name, x in (("fp32", f32), ("bf16", bf16))),
        ("_row_topk_kernel[fp32]", "selection", "_row_topk_kernel", *topk(f32, i32, tl.uint32, 32)),
        ("_row_topk_kernel[bf16]", "selection", "_row_topk_kernel", *topk(bf16, i32, tl.uint32, 32)),
        # 32-bit keys, 11-bit digits: passes at shifts 21, 10, 0; the first and the last differ
        # in how `decided` is specialised (0, then a mask above 2^31: int64).
        ("_digit_histogram_kernel[fp32 first pass]", "selection", "_digit_histogram_kernel", *histogram(0, 21, 11)),
        ("_digit_histogram_kernel[fp32 last pass]", "selection", "_digit_histogram_kernel",
         *histogram(0xFFFFFC00, 0, 10)),
        # N:M 2:4 over gpu_selection.py's 4096 x 4096 float32 and gpu_measures.py's bf16 weight
        *((f"_nm_mask_kernel[{name} 2:4]", "selection", "_nm_mask_kernel",
           dict(x_ptr=t(x), out_ptr=t(u8), nan_ptr=t(i64), groups=numel_nm // 4),
           dict(N=2, M=4, MP=4, PER_ROW=per_row, MAGNITUDE=True, KEY=tl.uint32, KEY_BITS=32, ROWS=512))
          for name, x, numel_nm, per_row in (("fp32", f32, 4096 * 4096, 1), ("bf16", bf16, rows * cols, 2))),
        ("_mark_kernel[fp32]", "selection", "_mark_kernel", *mark(False)),
        ("_mark_kernel[fp32 ties]", "selection", "_mark_kernel", *mark(True)),
        ("_csr16_linear_kernel[bf16 batch 1]", "sparse_linear", "_csr16_linear_kernel",
         rename(decode(i16, 1)[0], "columns_ptr"), decode(i16, 1)[1]),
        ("_csr16_linear_kernel[bf16 batch 16]", "sparse_linear", "_csr16_linear_kernel",
         rename(decode(i16, 16)[0], "columns_ptr"), decode(i16, 16)[1]),
        ("_bitmap_linear_kernel[bf16 batch 1]", "sparse_linear", "_bitmap_linear_kernel",
         rename(decode(i32, 1, ("words", cols // 32))[0], "bitmap_ptr"), decode(i32, 1)[1]),
        ("_bitmap_linear_kernel[bf16 batch 16]", "sparse_linear", "_bitmap_linear_kernel",
         rename(decode(i32, 16, ("words", cols // 32))[0], "bitmap_ptr"), decode(i32, 16)[1]),
        ("_bsr_linear_kernel[bf16 batch 4096]", "sparse_linear", "_bsr_linear_kernel", *bsr(4096)),
    ]
    return cases


def compile_triton(fn, args: dict, constexprs: dict) -> tuple[bytes, str]:
    """(cubin, ptxas -v log) of Triton kernel `fn` for sm_90, specialised on `args` as a launch
    would (constexprs may hold the launch's num_warps, else Triton's default 4). Everything that
    depends on Triton's version (written against 3.8) is here."""
    import triton
    from triton import knobs
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.runtime.jit import native_specialize_impl

    constexprs = dict(constexprs)
    num_warps = constexprs.pop("num_warps", 4)
    signature, constants, attrs = {}, {}, {}
    for index, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name], constants[name] = "constexpr", constexprs[name]
            continue
        kind, spec = native_specialize_impl(BaseBackend, args[name], False, True, True)
        signature[name] = kind
        if kind == "constexpr":  # an int equal to 1
            constants[name] = spec
        elif spec:
            attrs[(index,)] = BaseBackend.parse_attr(spec)
    log = io.StringIO()
    with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True  # Triton prints ptxas -v only when it compiles
        knobs.compilation.always_compile = True
        kernel = triton.compile(triton.compiler.ASTSource(fn, signature, constants, attrs),
                                target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": 3})
    return kernel.asm["cubin"], log.getvalue()


# ---- tools and compilation ----------------------------------------------------------------------

def find_tool(name: str) -> str | None:
    """`name` on PATH, else beside the real nvcc, else Triton's bundled copy."""
    found = shutil.which(name)
    if found:
        return found
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.realpath(nvcc)))
        with open(nvcc, "rb") as f:  # nvcc may be a wrapper script that execs the real one
            real = re.search(rb"(/\S+)/nvcc\b", f.read())
        if real:
            candidates.append(real.group(1).decode())
    try:
        import triton
        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin"))
    except ImportError:
        pass
    for directory in candidates:
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return None


def missing_tools() -> list[str]:
    missing = [tool for tool in ("nvcc", "cuobjdump", "c++filt") if find_tool(tool) is None]
    try:
        import triton  # noqa: F401
    except ImportError:
        missing.append("triton")
    return missing


def digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
    return h.hexdigest()[:24]


def cached(key: str, build) -> tuple[bytes, str]:
    """(cubin, ptxas log) from build/gpu_static/<key>.*, building them when absent."""
    cubin_path, log_path = os.path.join(CACHE_DIR, key + ".cubin"), os.path.join(CACHE_DIR, key + ".log")
    if os.path.exists(cubin_path) and os.path.exists(log_path):
        with open(cubin_path, "rb") as c, open(log_path) as g:
            return c.read(), g.read()
    cubin, log = build()
    os.makedirs(CACHE_DIR, exist_ok=True)
    with open(log_path + ".tmp", "w") as g:
        g.write(log)
    with open(cubin_path + ".tmp", "wb") as c:
        c.write(cubin)
    os.replace(log_path + ".tmp", log_path)
    os.replace(cubin_path + ".tmp", cubin_path)
    return cubin, log


def compile_cuda(source: str) -> tuple[bytes, str]:
    nvcc = find_tool("nvcc")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    sources = b"".join(open(p, "rb").read() for p in [source, *CUDA_HEADERS])

    def build():
        out = os.path.join(CACHE_DIR, f"tmp-{os.getpid()}-{os.path.basename(source)}.cubin")
        os.makedirs(CACHE_DIR, exist_ok=True)
        run = subprocess.run([nvcc, *NVCC_FLAGS, "-o", out, source], capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"nvcc failed on {source}:\n{run.stderr[-4000:]}")
        with open(out, "rb") as f:
            cubin = f.read()
        os.remove(out)
        return cubin, run.stdout + run.stderr

    return cached(digest("cuda", sources, NVCC_FLAGS, version), build)


def compile_triton_case(module: str, kernel: str, args: dict, constexprs: dict) -> tuple[bytes, str]:
    import importlib

    import triton
    mod = importlib.import_module(f"lqkernels._triton.{module}")
    fn = getattr(mod, kernel)
    described = sorted((k, repr(v) if not hasattr(v, "dtype") else f"tensor {v.dtype}") for k, v in args.items())
    key = digest("triton", triton.__version__, open(mod.__file__, "rb").read(), kernel, described,
                 sorted((k, repr(v)) for k, v in constexprs.items()))
    return cached(key, lambda: compile_triton(fn, args, constexprs))


# ---- cubin analysis -----------------------------------------------------------------------------

@dataclasses.dataclass
class Loop:
    start: int  # address of the first instruction (the backward branch's target)
    end: int  # address of the backward branch
    counts: dict


SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
HEX = re.compile(r"0x([0-9a-f]+)")


def load_width(opcode: str) -> int:
    """Bits per thread of a global load (LDG, or LDGSTS's copy into shared memory)."""
    parts = opcode.split(".")
    for bits in ("256", "128", "64"):
        if bits in parts:
            return int(bits)
    if "U16" in parts or "S16" in parts:
        return 16
    if "U8" in parts or "S8" in parts:
        return 8
    return 32


def classify(opcode: str) -> list[str]:
    """The counters an instruction adds to."""
    base = opcode.split(".")[0]
    kinds = []
    if base in ("LDG", "LDGSTS"):
        kinds.append(f"LDG{load_width(opcode)}")
    if base in ("MUFU", "BAR", "SHFL", "CALL", "LDL", "STL"):
        kinds.append(base)
    if base in ("ATOM", "ATOMS", "ATOMG", "RED", "REDG"):  # not REDUX: a warp reduction in registers
        kinds.append("ATOMIC")
        if "CAS" in opcode:  # ATOMS.CAS, ATOMG.E.CAS, ATOMS.CAST.SPIN
            kinds.append("CAS")
    # FENCE.VIEW.ASYNC only orders shared-memory writes before the tensor cores' async reads
    # (wgmma); it waits for no memory traffic.
    if base in ("MEMBAR", "CCTL") or (base == "FENCE" and not opcode.startswith("FENCE.VIEW.ASYNC")):
        kinds.append("FENCE")
    return kinds


def parse_sass(sass: str) -> dict[str, list[tuple[int, str, str]]]:
    """Function name -> [(address, opcode, operands)] from cuobjdump --dump-sass."""
    functions, current = {}, None
    for line in sass.splitlines():
        header = re.match(r"\s*Function : (\S+)", line)
        if header:
            current = functions.setdefault(header.group(1), [])
        elif current is not None:
            m = SASS_LINE.search(line)
            if m:
                current.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return functions


def count(instructions) -> dict:
    counts = {"instructions": len(instructions)}
    for _, opcode, _ in instructions:
        for kind in classify(opcode):
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def hot_loops(instructions) -> list[Loop]:
    """Innermost loops: spans [target, branch] of backward BRAs that contain no other such span.
    (A BRA to itself is the idle loop after EXIT, not a loop.)"""
    spans = set()
    for address, opcode, operands in instructions:
        if opcode.split(".")[0] == "BRA":
            targets = HEX.findall(operands)
            if targets and int(targets[-1], 16) < address:
                spans.add((int(targets[-1], 16), address))
    innermost = [s for s in spans if not any(o != s and s[0] <= o[0] and o[1] <= s[1] for o in spans)]
    return [Loop(start, end, count([i for i in instructions if start <= i[0] <= end]))
            for start, end in sorted(innermost)]


def resource_usage(text: str) -> dict[str, dict]:
    """Function name -> {REG, STACK, SHARED, LOCAL} from cuobjdump --dump-resource-usage."""
    usage, current = {}, None
    for line in text.splitlines():
        header = re.match(r"\s*Function (\S+):", line)
        if header:
            current = header.group(1)
        elif current and "REG:" in line:
            usage[current] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}
            current = None
    return usage


def spills(ptxas_log: str) -> dict[str, tuple[int, int]]:
    """Function name -> (spill store bytes, spill load bytes) from ptxas -v."""
    return {name: (int(stores), int(loads)) for name, stores, loads in re.findall(
        r"Function properties for (\S+)\s+\d+ bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
        ptxas_log)}


def demangle(names: list[str]) -> dict[str, str]:
    """Mangled name -> short readable one: namespaces and parameter lists dropped."""
    out = subprocess.run([find_tool("c++filt")], input="\n".join(names), capture_output=True, text=True).stdout
    short = {}
    for name, plain in zip(names, out.splitlines()):
        plain = re.sub(r"^void ", "", plain).replace("lqk::cuda::(anonymous namespace)::", "")
        depth, cut = 0, len(plain)
        for i, ch in enumerate(plain):  # the parameter list: the first '(' outside template brackets
            depth += ch == "<"
            depth -= ch == ">"
            if ch == "(" and depth == 0:
                cut = i
                break
        short[name] = plain[:cut]
    return short


def analyse(cubin: bytes, ptxas_log: str, names: dict[str, str] | None = None) -> list[dict]:
    """One report per kernel of the cubin. `names`: display names by mangled name (default: c++filt)."""
    cuobjdump = find_tool("cuobjdump")
    path = os.path.join(CACHE_DIR, f"tmp-{os.getpid()}-{digest(cubin)}.cubin")
    os.makedirs(CACHE_DIR, exist_ok=True)
    with open(path, "wb") as f:
        f.write(cubin)
    try:
        sass = subprocess.run([cuobjdump, "--dump-sass", path], capture_output=True, text=True, check=True).stdout
        usage = resource_usage(subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True,
                                              text=True, check=True).stdout)
    finally:
        os.remove(path)
    functions = parse_sass(sass)
    spill_bytes = spills(ptxas_log)
    names = names or demangle(list(functions))
    reports = []
    for mangled, instructions in functions.items():
        use = usage.get(mangled, {})
        stores, loads = spill_bytes.get(mangled, (0, 0))
        reports.append({"kernel": names[mangled], "mangled": mangled, "registers": use.get("REG", 0),
                        "stack": use.get("STACK", 0), "local": use.get("LOCAL", 0), "shared": use.get("SHARED", 0),
                        "spill_stores": stores, "spill_loads": loads, "whole": count(instructions),
                        "loops": [dataclasses.asdict(loop) for loop in hot_loops(instructions)]})
    return reports


# ---- rules --------------------------------------------------------------------------------------

def hot_regions(report: dict) -> list[dict]:
    """Counters of the code that runs per tile: the hot loops, or the whole body of a kernel
    without loops (one tile per program or thread: its body is what repeats, across the grid)."""
    return [loop["counts"] for loop in report["loops"]] or [report["whole"]]


def hot_total(report: dict, kind: str) -> int:
    return sum(region.get(kind, 0) for region in hot_regions(report))


def widest_hot_load(report: dict) -> int:
    return max((int(k[3:]) for region in hot_regions(report) for k in region if k.startswith("LDG")), default=0)


def broken_rules(report: dict) -> dict[str, str]:
    """Rule name -> what breaks it, for the rules this kernel breaks."""
    rules, whole, broken = rules_for(report["kernel"]), report["whole"], {}
    if report["spill_stores"] or report["spill_loads"]:
        broken["no_spills"] = f"{report['spill_stores']} bytes spill stores, {report['spill_loads']} loads"
    if report["stack"] or report["local"] or whole.get("LDL") or whole.get("STL"):
        broken["no_local_memory"] = (f"stack {report['stack']} B, local {report['local']} B, "
                                     f"{whole.get('LDL', 0)} LDL / {whole.get('STL', 0)} STL")
    if report["registers"] > rules["max_registers"]:
        broken["max_registers"] = f"{report['registers']} registers > {rules['max_registers']}"
    if rules["streaming"] and widest_hot_load(report) < 128:
        broken["streaming_16B_loads"] = f"widest global load in hot code {widest_hot_load(report)} bits, not 128"
    for kind, rule in (("CAS", "no_cas_in_loops"), ("FENCE", "no_fences_in_loops"), ("CALL", "no_calls_in_loops")):
        if hot_total(report, kind):
            broken[rule] = f"{hot_total(report, kind)} {kind} in hot code"
    barriers = max(region.get("BAR", 0) for region in hot_regions(report))
    if report["loops"] and barriers > rules["max_barriers_per_loop"]:
        broken["max_barriers_per_loop"] = f"{barriers} BAR per hot-loop iteration > {rules['max_barriers_per_loop']}"
    if not report["loops"] and barriers > rules["max_barriers_per_program"]:
        broken["max_barriers_per_program"] = (f"{barriers} BAR per program (no loop) > "
                                              f"{rules['max_barriers_per_program']}")
    return broken


def summary_line(report: dict, verdict: str) -> str:
    widest = widest_hot_load(report)
    return (f"{report['kernel'][:58]:58} reg {report['registers']:3} stack {report['stack']:3} "
            f"spill {report['spill_stores'] + report['spill_loads']:3} loops {len(report['loops']):2} "
            f"load {widest or '-':>3} MUFU {hot_total(report, 'MUFU'):3} BAR {hot_total(report, 'BAR'):2} "
            f"CALL {hot_total(report, 'CALL'):2} CAS {hot_total(report, 'CAS'):2}  {verdict}")


# ---- main ---------------------------------------------------------------------------------------

def collect(only: str | None) -> tuple[list[dict], list[str]]:
    """(reports, compile errors): every CUDA source on worker threads while the Triton cases compile
    here (nvcc runs as a subprocess, Triton in this process)."""
    reports, errors = [], []
    cases = [c for c in _triton_cases() if not only or re.search(only, "triton:" + c[0])]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        cuda_jobs = {pool.submit(compile_cuda, source): source for source in CUDA_SOURCES}
        for label, module, kernel, args, constexprs in cases:
            try:
                cubin, log = compile_triton_case(module, kernel, args, constexprs)
                reports += analyse(cubin, log, {kernel: "triton:" + label})
            except Exception as e:  # reported, and fails the check
                errors.append(f"triton:{label}: {type(e).__name__}: {str(e)[-2000:]}")
        for job, source in cuda_jobs.items():
            try:
                cubin, log = job.result()
                for report in analyse(cubin, log):
                    report["kernel"] = "cuda:" + report["kernel"]
                    reports.append(report)
            except Exception as e:
                errors.append(f"{os.path.relpath(source, ROOT)}: {type(e).__name__}: {str(e)[-2000:]}")
    reports = [r for r in reports if not only or re.search(only, r["kernel"])]
    return sorted(reports, key=lambda r: r["kernel"]), errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="check only the kernels whose name matches this regex")
    parser.add_argument("--json", help="write the full per-kernel report here")
    parser.add_argument("--update-baseline", action="store_true",
                        help=f"write today's failures as the baseline ({os.path.relpath(BASELINE, ROOT)})")
    args = parser.parse_args()
    os.environ.pop("TRITON_INTERPRET", None)  # the interpreter cannot compile (`make test` sets it)
    missing = missing_tools()
    if missing:
        print(f"gpu_static: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    started = time.time()
    reports, errors = collect(args.only)
    baseline = {}
    if not args.update_baseline and os.path.exists(BASELINE):
        with open(BASELINE) as f:
            baseline = json.load(f)
    failed = bool(errors)
    for report in reports:
        report["broken"] = broken_rules(report)
        allowed = baseline.get(report["kernel"], {})
        regressions = sorted(set(report["broken"]) - set(allowed))
        if regressions:
            failed = True
            verdict = "FAIL " + "; ".join(f"{r}: {report['broken'][r]}" for r in regressions)
        elif report["broken"]:
            verdict = "PASS (baseline: " + ", ".join(sorted(report["broken"])) + ")"
        else:
            verdict = "PASS"
        print(summary_line(report, verdict))
        fixed = sorted(set(allowed) - set(report["broken"]))
        if fixed:
            print(f"    now passes {', '.join(fixed)}: remove from the baseline")
    checked = {r["kernel"] for r in reports}
    absent = [k for k in baseline if k not in checked and (not args.only or re.search(args.only, k))]
    for kernel in absent:
        print(f"MISSING {kernel}: in the baseline, not compiled (renamed or removed? --update-baseline)")
    failed = failed or bool(absent and not args.update_baseline)
    for error in errors:
        print(f"ERROR {error}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"rules": {"defaults": DEFAULT_RULES, "by_kernel": RULES}, "kernels": reports}, f, indent=1)
    if args.update_baseline:
        if args.only or errors:
            print("gpu_static: not updating the baseline from a partial run", file=sys.stderr)
            return 1
        with open(BASELINE, "w") as f:
            json.dump({r["kernel"]: r["broken"] for r in reports}, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"baseline written: {os.path.relpath(BASELINE, ROOT)}")
        failed = False
    allowed_total = sum(len(v) for v in baseline.values())
    print(f"{len(reports)} kernels, {sum(bool(r['broken']) for r in reports)} break rules "
          f"({sum(len(r['broken']) for r in reports)} breaks; baseline allows {allowed_total}); "
          f"{len(errors)} compile errors; {time.time() - started:.0f} s: {'FAIL' if failed else 'PASS'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
