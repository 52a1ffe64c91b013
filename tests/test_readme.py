"""The README's Python example prints what the README says it prints (the parts marked ⟨ ⟩ vary
from machine to machine and match anything)."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _blocks_after(text: str, marker: str) -> str:
    """The first fenced block after `marker`."""
    rest = text[text.index(marker):]
    return re.search(r"```\w*\n(.*?)```", rest, re.S).group(1)


def _line_pattern(line: str) -> str:
    parts = re.split(r"⟨[^⟩]*⟩", line)
    return ".+?".join(re.escape(p) for p in parts)


def test_readme_example_prints_what_the_readme_shows():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    code = _blocks_after(readme, "## Python: measure")
    shown = _blocks_after(readme, "It prints (stdout").rstrip("\n").splitlines()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         timeout=600).stdout.rstrip("\n").splitlines()
    assert len(out) == len(shown), "\n".join(out)
    for printed, expected in zip(out, shown):
        assert re.fullmatch(_line_pattern(expected), printed), f"README shows {expected!r}, example printed {printed!r}"
