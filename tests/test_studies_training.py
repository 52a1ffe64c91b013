"""Smoke tests of the prune–retrain studies (experiments/study4_teacher_student.py,
experiments/study5_real_data.py): each runs its --quick mode into tmp_path, checks the outputs, and
checks on the returned histories what every method promises (nothing grows back, LT / OS keep
0.8^t, SAP's first round keeps 1 − PQI, η > 0 prunes more) and that the numbers are sane."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import method_comparison as mc  # noqa: E402
import study4_teacher_student  # noqa: E402
import study5_real_data  # noqa: E402


def check_outputs(out: Path, name: str, title: str) -> str:
    markdown = (out / f"{name}.md").read_text()
    assert markdown.startswith(f"## Study {title}")
    assert f"![{name}](studies/{name}.png)" in markdown
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return markdown


def check_history(history, label: str) -> None:
    """What the method promises about the remaining fraction, and finite numbers throughout."""
    left = [r["remaining_total"] for r in history.rounds]
    assert left[0] == 1.0, label
    assert all(after <= before for before, after in zip(left, left[1:])), f"{label}: a pruned weight came back: {left}"
    for r in history.rounds:
        assert all(math.isfinite(v) for v in r["metrics"].values()), (label, r)
        assert all(0 <= v < 1 for v in r["pqi"].values()), (label, r)
    settings = history.settings
    if settings["method"] in ("lt", "os"):  # 20% of survivors per round / 0.8^t of the dense ranking
        for t, fraction in enumerate(left):
            assert fraction == pytest.approx(0.8 ** t, abs=0.02), (label, left)
    else:  # adaptive, but never more than β = 0.9 of the survivors in one round
        assert all(after >= (1 - settings["beta"]) * before - 1e-9 for before, after in zip(left, left[1:]))
    if settings["method"] == "sap" and settings["scope"] == "layer":
        # Theorem 2 at (0.5, 1), γ = 1: each layer keeps ceil(d·(1+η)^-2·(1 − PQI)) of its dense
        # weights, PQI measured after round 0 (ceil: at most one weight, under 1/32 here)
        dense, first = history.rounds[0], history.rounds[1]
        for layer, fraction in first["remaining"].items():
            expected = (1 + settings["eta"]) ** -2 * (1 - dense["pqi"][layer])
            assert expected - 1e-6 <= fraction <= expected + 1 / 32, (label, layer, fraction, expected)


def check_eta_prunes_more(runs: dict) -> None:
    """η = 0.1 keeps (1.1)^-2 of what η = 0 keeps in the first round (same dense model)."""
    for plain in ("lq neuron", "SAP layer"):
        first = [runs[label].rounds[1]["remaining_total"] for label in (plain, f"{plain} η=0.1")]
        assert first[1] < first[0], (plain, first)


def test_study4_quick(tmp_path):
    histories = study4_teacher_student.main(["--quick", "--out", str(tmp_path)])
    markdown = check_outputs(tmp_path, study4_teacher_student.NAME, "4: teacher–student")
    assert set(histories) == set(mc.METHODS)
    for label, history in histories.items():
        assert len(history.rounds) == 4  # dense + 3 rounds in --quick
        check_history(history, label)
        assert f"| {label} |" in markdown
    check_eta_prunes_more(histories)
    # every method starts from the same initialisation, so round 0 is one model
    dense = {str(h.rounds[0]["metrics"]) for h in histories.values()}
    assert len(dense) == 1


def test_study5_quick(tmp_path):
    results = study5_real_data.main(["--quick", "--out", str(tmp_path)])
    check_outputs(tmp_path, study5_real_data.NAME, "5: real data")
    assert set(results) == {"digits", "diabetes"}
    for dataset in study5_real_data.DATASETS:
        for label, histories in results[dataset.name].items():
            assert len(histories) == 2  # seeds in --quick
            for history in histories:
                check_history(history, f"{dataset.name} {label}")
                chosen, best = mc.sparsest_within(history, dataset.tolerance), mc.best_on_validation(history)
                floor = history.rounds[0]["metrics"]["val_score"] - dataset.tolerance
                assert chosen["metrics"]["val_score"] >= floor
                assert chosen["remaining_total"] <= best["remaining_total"]  # best val is within tolerance too
        for seed_runs in zip(*results[dataset.name].values()):
            check_eta_prunes_more(dict(zip(results[dataset.name], seed_runs)))
    # even 2 quick epochs on 240 digits put the dense MLP far above chance (10%)
    assert all(h.rounds[0]["metrics"]["test_score"] > 0.5 for h in results["digits"]["LT (20%/round)"])
