"""benchmarks/gpu_static.py: its SASS loop parser and rules on hand-written SASS (no compiler
needed), and the whole check against the checked-in baseline (needs nvcc, cuobjdump, triton)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_static.py")
_spec = importlib.util.spec_from_file_location("gpu_static", SCRIPT)
gpu_static = sys.modules["gpu_static"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(gpu_static)

# A streaming loop (0x0040-0x00b0) that loads 8 bytes a thread, calls a slow path and retries a
# CAS; after EXIT, the idle self-branch (not a loop) and the called subroutine.
SASS = """
        code for sm_90a
                Function : _Z6kernelPKfPf
        .headerflags    @"EF_CUDA_ACCELERATORS EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                        /* 0x00000a00ff017b82 */
        /*0010*/                   S2R R0, SR_TID.X ;                            /* 0x0000000000007919 */
        /*0020*/                   ISETP.GE.AND P0, PT, R0, 0x10, PT ;           /* 0x000000100000780c */
        /*0030*/               @P0 BRA 0xc0 ;                                    /* 0x0000000000200947 */
        /*0040*/                   LDG.E.64 R4, desc[UR4][R2.64] ;               /* 0x0000000402047981 */
        /*0050*/                   LDG.E.U16 R6, desc[UR4][R8.64] ;              /* 0x0000000408067981 */
        /*0060*/                   MUFU.LG2 R7, R4 ;                             /* 0x0000000400077308 */
        /*0070*/                   CALL.REL.NOINC 0xe0 ;                         /* 0x0000006000147944 */
        /*0080*/                   ATOMS.CAST.SPIN P1, RZ, [R9], R10, R11 ;      /* 0x0000000a09ff758d */
        /*0090*/              @!P1 BRA 0x80 ;                                    /* 0x000000fffff89947 */
        /*00a0*/                   ISETP.NE.AND P0, PT, R0, RZ, PT ;             /* 0x000000ff0000720c */
        /*00b0*/               @P0 BRA 0x40 ;                                    /* 0x000000fffff80947 */
        /*00c0*/                   EXIT ;                                        /* 0x000000000000794d */
        /*00d0*/                   BRA 0xd0;                                     /* 0xfffffffc00fc7947 */
        /*00e0*/                   RET.REL.NODEC R2 0x0 ;                        /* 0xffffff8002007950 */
"""


def report_of(sass: str, kernel: str) -> dict:
    (mangled, instructions), = gpu_static.parse_sass(sass).items()
    assert mangled == "_Z6kernelPKfPf"
    return {"kernel": kernel, "registers": 32, "stack": 0, "local": 0, "spill_stores": 0, "spill_loads": 0,
            "whole": gpu_static.count(instructions),
            "loops": [vars(loop) for loop in gpu_static.hot_loops(instructions)]}


def test_hot_loops_are_the_innermost_backward_branches():
    instructions = gpu_static.parse_sass(SASS)["_Z6kernelPKfPf"]
    loops = gpu_static.hot_loops(instructions)
    # 0x80-0x90 (the CAS retry) is inside 0x40-0xb0, so only it is innermost; 0xd0 -> 0xd0 is no loop.
    assert [(loop.start, loop.end) for loop in loops] == [(0x80, 0x90)]
    assert loops[0].counts == {"instructions": 2, "ATOMIC": 1, "CAS": 1}


def test_load_widths_and_counters():
    whole = gpu_static.count(gpu_static.parse_sass(SASS)["_Z6kernelPKfPf"])
    assert whole["LDG64"] == 1 and whole["LDG16"] == 1 and whole["MUFU"] == 1 and whole["CALL"] == 1
    assert whole["instructions"] == 15
    assert [gpu_static.load_width(op) for op in ("LDG.E.128.CONSTANT", "LDG.E", "LDG.E.U8", "LDGSTS.E.BYPASS.128")] \
        == [128, 32, 8, 128]


def test_rules_fail_a_narrow_streaming_loop_with_a_call():
    # Without the CAS retry, the streaming loop 0x40-0xb0 is the hot loop: 8-byte loads and a CALL.
    sass = SASS.replace("@!P1 BRA 0x80", "@!P1 BRA 0xa0")
    broken = gpu_static.broken_rules(report_of(sass, "cuda:row_powsum_kernel<float, float>"))
    assert set(broken) == {"streaming_16B_loads", "no_calls_in_loops", "no_cas_in_loops"}
    assert "64 bits" in broken["streaming_16B_loads"]
    # The same code passes once it loads 16 bytes, calls nothing and retries no CAS.
    fixed = (sass.replace("LDG.E.64", "LDG.E.128").replace("CALL.REL.NOINC 0xe0", "NOP")
             .replace("ATOMS.CAST.SPIN P1, RZ, [R9], R10, R11", "NOP"))
    assert gpu_static.broken_rules(report_of(fixed, "cuda:row_powsum_kernel<float, float>")) == {}


def test_the_cas_retry_loop_breaks_the_cas_rule_for_any_kernel():
    broken = gpu_static.broken_rules(report_of(SASS, "cuda:merge_parts_kernel<float>"))
    assert set(broken) == {"no_cas_in_loops"}


def test_barriers_count_per_loop_iteration_or_per_program():
    # The streaming loop 0x40-0xb0 (CAS retry and call gone) with a barrier in it breaks the
    # per-loop rule; without its backward branch the kernel has no loop, one program per tile, and
    # its barriers are counted against the per-program allowance instead.
    looped = (SASS.replace("LDG.E.64", "LDG.E.128").replace("CALL.REL.NOINC 0xe0", "BAR.SYNC.DEFER_BLOCKING 0x0")
              .replace("ATOMS.CAST.SPIN P1, RZ, [R9], R10, R11", "NOP").replace("@!P1 BRA 0x80", "@!P1 BRA 0xa0"))
    broken = gpu_static.broken_rules(report_of(looped, "cuda:row_powsum_kernel<float, float>"))
    assert set(broken) == {"max_barriers_per_loop"} and "1 BAR per hot-loop iteration > 0" in broken["max_barriers_per_loop"]
    loopless = looped.replace("@P0 BRA 0x40", "NOP")
    report = report_of(loopless, "cuda:row_powsum_kernel<float, float>")
    assert report["loops"] == [] and gpu_static.broken_rules(report) == {}
    limit = gpu_static.rules_for("cuda:row_powsum_kernel<float, float>")["max_barriers_per_program"]
    report["whole"]["BAR"] = limit + 1
    assert set(gpu_static.broken_rules(report)) == {"max_barriers_per_program"}


def test_every_kernel_keeps_to_its_baseline():
    missing = gpu_static.missing_tools()
    if missing:
        pytest.skip(f"the static GPU check needs {', '.join(missing)}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
