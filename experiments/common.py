"""What every study in experiments/ shares: its command line, where it writes, and seeding.

A study is `experiments/study<N>_<name>.py` with a `main(argv=None)`; it writes
`docs/studies/study<N>_<name>.md` (opening with `## Study N: title`, then the paper's claim it
tests, the table, what we found and where we differ) and `docs/studies/study<N>_<name>.png`.
`--quick` shrinks every size so the test suite can run the whole script in seconds; the full run
(`make studies`) takes minutes on 2 CPU cores. `experiments/collect.py` gathers the Markdown into
docs/RESULTS.md.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "docs" / "studies"


def options(doc: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The study's command line: --quick (tiny sizes, for the smoke test) and --out (a folder)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs, proves nothing")
    parser.add_argument("--out", type=Path, default=STUDIES, help=f"output folder (default {STUDIES})")
    return parser.parse_args(argv)


def seed_everything(seed: int) -> torch.Generator:
    """Seeds Python, NumPy and torch; returns a torch generator on the same seed for explicit draws."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A Markdown table of `rows` (dicts); floats printed with 4 significant digits."""
    columns = columns or list(rows[0])

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_study(out: Path, name: str, markdown: str, figure=None) -> Path:
    """Writes `<out>/<name>.md` (and `<name>.png` from a matplotlib figure, linked at the end)."""
    out.mkdir(parents=True, exist_ok=True)
    if figure is not None:
        figure.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
        markdown = markdown.rstrip() + f"\n\n![{name}](studies/{name}.png)\n"
    path = out / f"{name}.md"
    path.write_text(markdown.rstrip() + "\n")
    print(markdown)
    return path
