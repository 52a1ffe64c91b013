"""Every document the project cites is in the repository: each `docs/...` path named by a .py or .md
file or by the command-line help exists, each `method.md §N` names a section of docs/method.md, and
nothing cites the research notes outside the project."""
import contextlib
import io
import re
import subprocess
from pathlib import Path

import pytest

from lqkernels import cli

ROOT = Path(__file__).resolve().parent.parent
# A path under docs/; a following '<', '{' or '*' makes it a template or a glob, not a citation.
DOCS_PATH = re.compile(r"(?<![\w/.])docs/[\w./-]*[\w/]")
SECTION = re.compile(r"method\.md\s*§\s*(\d+)(?:\s*-\s*(\d+))?")


def _project_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py", "*.md"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in listed if (ROOT / name).exists()]


def _help_texts() -> dict[str, str]:
    texts = {}
    for argv in (["--help"], ["report", "--help"], ["prune", "--help"], ["demo", "--help"]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            cli.main(argv)
        texts["lqkernels " + " ".join(argv)] = out.getvalue()
    return texts


def _sources() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in _project_files()} | _help_texts()


def cited_doc_paths(text: str) -> list[str]:
    return [m.group(0).rstrip("./") for m in DOCS_PATH.finditer(text)
            if text[m.end():m.end() + 1] not in ("<", "{", "*")]


def test_the_checker_sees_a_missing_file():
    missing = "docs" + "/nowhere.md"  # split so that this file cites nothing missing
    assert cited_doc_paths(f"see {missing} §3, docs/studies/study<N>_x.md and docs/RESULTS.md.") == [
        missing, "docs/RESULTS.md"]


def test_every_cited_docs_path_exists():
    missing = sorted({(where, path) for where, text in _sources().items() for path in cited_doc_paths(text)
                      if not (ROOT / path).exists()})
    assert not missing, f"cited but not in the repository: {missing}"


def test_cli_help_cites_the_method_page():
    assert "docs/method.md" in _help_texts()["lqkernels --help"]


# The developers' notes outside the repository, by the names a citation would use (spelled in
# pieces, so that this file does not cite them itself).
OUTSIDE_NOTES = re.compile("|".join(re.escape(name) for name in
                                    ("shared" + "/docs", ".." + "/shared", "paper" + ".md")))


def test_nothing_cites_notes_outside_the_project():
    outside = sorted(where for where, text in _sources().items() if OUTSIDE_NOTES.search(text))
    assert not outside, f"cite files outside the repository: {outside}"


def test_cited_sections_of_the_method_page_exist():
    sections = {int(n) for n in re.findall(r"^## (\d+)\.", (ROOT / "docs/method.md").read_text(), re.M)}
    bad = sorted({(where, int(n)) for where, text in _sources().items() for m in SECTION.finditer(text)
                  for n in m.groups() if n is not None and int(n) not in sections})
    assert not bad, f"cite sections docs/method.md does not have: {bad}"
