"""Shared by the GPU benchmark scripts: timing (median of triton.testing.do_bench), the machine's
measured copy bandwidth, relative error against float64, and a table that survives failures."""
import argparse
import contextlib
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


class Table:
    """Markdown lines written to `out` after every added row: device time is scarce, so a crash or a
    timeout half-way must keep every number measured before it."""

    def __init__(self, out: str, lines: list[str]):
        self.out, self.lines = Path(out), []
        self.out.parent.mkdir(parents=True, exist_ok=True)
        for line in lines:
            self.add(line)

    def add(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)
        self.out.write_text("\n".join(self.lines) + "\n")

    @contextlib.contextmanager
    def guard(self, label: str):
        """Run one case; if it raises, record the error as its row and go on with the next case."""
        try:
            yield
        except Exception as err:  # noqa: BLE001  (any failure is a finding to report, not a reason to stop)
            message = (str(err).strip().splitlines() or [""])[0][:160]
            self.add(f"| {label} | FAILED: {type(err).__name__}: {message} |")
            with contextlib.suppress(Exception):  # a kernel error surfaces here, not in the next case
                torch.cuda.synchronize()


def start(doc: str, default_out: str, columns: str, notes: str = ""):
    """Every GPU script's opening: (a Table headed by the device, the copy bandwidth measured now,
    `notes` and the Markdown `columns` row; the copy bandwidth in bytes/s; a seeded CUDA generator)."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--out", default=default_out)
    out = parser.parse_args().out
    bandwidth = copy_bandwidth()
    names = columns.strip("|").split("|")
    table = Table(out, [header(), f"copy bandwidth (read + write): {bandwidth / 1e12:.2f} TB/s{notes}", "",
                        columns, "|" + "---|" * len(names)])
    return table, bandwidth, torch.Generator(device="cuda").manual_seed(0)
