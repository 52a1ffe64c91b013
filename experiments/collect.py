"""Gathers docs/studies/study*.md, in study order, into docs/RESULTS.md (`make studies` runs it last)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, STUDIES  # noqa: E402

HEAD = """# Reproducing the papers' numerical studies

Written by `make studies` (one script per study in `experiments/`, fixed seeds, 2 CPU cores).
Each section states the claim of `docs/method.md` §4 it tests, what we measured, and where we
differ. Kernel speed claims live in `benchmarks/RESULTS.md`.
"""


def study_number(path: Path) -> int:
    return int(re.match(r"study(\d+)", path.stem).group(1))


def main() -> None:
    parts = sorted(STUDIES.glob("study*.md"), key=study_number)
    text = HEAD + "".join("\n" + p.read_text() for p in parts)
    (ROOT / "docs" / "RESULTS.md").write_text(text)
    print(f"docs/RESULTS.md: {len(parts)} studies")


if __name__ == "__main__":
    main()
