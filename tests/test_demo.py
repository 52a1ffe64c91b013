"""The digits demo: trains quickly, and its report is consistent with lqkernels.ops."""
import math

import pytest
import torch
from torch import nn

pytest.importorskip("sklearn")  # the demo's data set ships with scikit-learn

from lqkernels import ops  # noqa: E402
from lqkernels.demo import compressibility_table, format_table, main, train_digits_mlp  # noqa: E402

EPOCHS = 5  # ~0.1-0.5 s of training; reaches ~94% validation accuracy with seed 0


@pytest.fixture(scope="module")
def trained():
    return train_digits_mlp(seed=0, epochs=EPOCHS)


def test_training_reaches_sane_accuracy(trained):
    _, accuracy = trained
    assert accuracy > 0.85  # 10 classes: chance is 0.1; 5 epochs of Adam gives ~0.94


def test_training_is_deterministic_and_keeps_caller_rng(trained):
    state = torch.random.get_rng_state()
    model, accuracy = train_digits_mlp(seed=0, epochs=EPOCHS)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert accuracy == trained[1]
    for a, b in zip(model.parameters(), trained[0].parameters()):
        assert torch.equal(a, b)


def test_table_rows_and_ranges(trained):
    model, _ = trained
    rows = compressibility_table(model, q=0.5)
    linears = [(f"{i}.weight", m.weight) for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    assert [r["layer"] for r in rows] == [name for name, _ in linears] + ["all weights"]
    assert rows[-1]["params"] == sum(r["params"] for r in rows[:-1])
    for r in rows:
        assert 0 <= r["pqi"] < 1
        assert r["si"] >= 1 - 1e-6
        assert 0 < r["keep_ratio"] <= 1
        assert math.isclose(r["keep_ratio"], 1 - r["pqi"], rel_tol=1e-12)  # q = 0.5: 1 - PQI
        assert 0 <= r["hoyer"] <= 1 and 0 <= r["gini"] < 1
        assert r["lq_norm"] > 0


def test_table_matches_ops(trained):
    model, _ = trained
    rows = {r["layer"]: r for r in compressibility_table(model, q=0.5)}
    weights = [m.weight.detach() for m in model if isinstance(m, nn.Linear)]
    for i, w in zip((0, 2, 4), weights):
        assert rows[f"{i}.weight"]["pqi"] == ops.pq_index(w).item()  # default (p, q) = (0.5, 1)
        assert rows[f"{i}.weight"]["lq_norm"] == ops.lq_norm(w, 0.5).item()
    flat = torch.cat([w.flatten() for w in weights])
    assert rows["all weights"]["pqi"] == ops.pq_index(flat).item()


def test_other_q_labels_and_keep_ratio(trained):
    rows = compressibility_table(trained[0], q=0.25)
    for r in rows:
        assert math.isclose(r["keep_ratio"], (1 - r["pqi"]) ** (1 / 3), rel_tol=1e-12)
    header = format_table(rows).splitlines()[0]
    assert "l_0.25 norm" in header and "SI_0.25" in header and "PQI(0.25,1)" in header
    with pytest.raises(ValueError):
        compressibility_table(trained[0], q=1.0)


def test_main_prints_report(capsys):
    rows = main(["--epochs", str(EPOCHS)])
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert "validation accuracy" in first and "trained in" in first
    header = next(line for line in out.splitlines() if line.startswith("layer"))
    for column in ("shape", "params", "l_0.5 norm", "SI_0.5", "PQI(0.5,1)", "Hoyer", "Gini",
                   "keep ratio (1-PQI)"):
        assert column in header
    assert len(rows) == 4 and "all weights" in out
    assert "Per-neuron PQI" in out and "report computed in" in out


def test_main_quiet_prints_only_table(capsys):
    main(["--epochs", "1", "--quiet", "--seed", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("layer") and lines[-1].startswith("all weights")
