"""Studies 1–3 (experiments/): each --quick run writes its Markdown and figure, and its numbers
still show what the study is about (a quick run is too small to prove the paper's claims, but
large enough to catch a broken measure, bound or fit)."""
import importlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))


def run_quick(module: str, tmp_path: Path, heading: str) -> dict:
    """Runs `module`.main in quick mode into tmp_path; checks the .md (its heading) and the .png."""
    results = importlib.import_module(module).main(["--quick", "--out", str(tmp_path)])
    markdown = (tmp_path / f"{module}.md").read_text()
    assert markdown.startswith(heading)
    assert (tmp_path / f"{module}.png").stat().st_size > 0
    return results


def test_study1_pqi_satisfies_all_six_properties(tmp_path):
    results = run_quick("study1_indices", tmp_path, "## Study 1:")
    total = results["cases"]
    for pqi in ("PQI(0.5,1)", "PQI(1,2)"):
        assert results["passed"][pqi] == {prop: total for prop in results["passed"][pqi]}
    # Hoyer's √d factor breaks cloning (Hurley & Rickard): the check can tell the indices apart
    assert results["passed"]["Hoyer"]["cloning"] < total
    assert results["max_rel_diff"] < 1e-12  # lqkernels vs the float64 NumPy reference
    # what the definition gives (method.md quotes 0.26430, 0.08579, 0.06032)
    assert results["pqi"]["[0,2,3,4] (Robin Hood)"] == pytest.approx(0.264332, abs=1e-6)
    assert results["pqi"]["[1,3,5]"] == pytest.approx(0.085844, abs=1e-6)
    assert results["pqi"]["[1.5,3.5,5.5] (rising tide)"] == pytest.approx(0.060251, abs=1e-6)


def test_study2_bound_never_exceeds_true_count(tmp_path):
    records = run_quick("study2_theorem2", tmp_path, "## Study 2:")["records"]
    assert records
    for r in records:
        assert r["bound"] <= r["true"], r
        assert r["count"] <= r["true"], r  # pqi_keep_count, the ceiling SAP keeps
        assert r["bound"] > 0.01 * r["true"], r  # a lower bound, but not a vacuous one here


def test_study3_power_law_slope_and_bound(tmp_path):
    results = run_quick("study3_sterm_rate", tmp_path, "## Study 3:")
    for row in results["power_rows"]:
        if row["vector"] == "k^(-1/q)":  # exact power law: the slope is 1/2 − 1/q up to finite-d bending
            assert row["fitted slope"] == pytest.approx(row["theory 1/2−1/q"], abs=0.05), row
        assert row["min bound/error"] >= 1, row  # ‖w − w_s‖_2 ≤ s^{1/2−1/q}‖w‖_q at every s
    for row in results["layer_rows"]:
        assert row["min bound/error (all s, q)"] >= 1, row
