"""Shared by the GPU benchmark scripts: timing (median of triton.testing.do_bench), the machine's
measured copy bandwidth, and relative error against float64."""
import argparse
import sys
from pathlib import Path

import torch
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the peers live with the tests


def median_ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median")


def copy_bandwidth() -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    return 2 * src.numel() / (median_ms(lambda: dst.copy_(src)) * 1e-3)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref).norm() / ref.norm()).item()


def header() -> str:
    return f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}"


def write(lines: list[str], out: str) -> None:
    text = "\n".join(lines)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text + "\n")
    print(text)


def start(doc: str, default_out: str):
    """Every GPU script's opening: (output path from --out, measured copy bandwidth, a seeded CUDA
    generator)."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--out", default=default_out)
    out = parser.parse_args().out
    return out, copy_bandwidth(), torch.Generator(device="cuda").manual_seed(0)
