"""What each call says it did: the default pruning scope (nn.Linear and convolutions), the record
every pruning step logs, sparsify_'s report of what it swapped and why it left layers alone, and
the CLI confirming what it touched and wrote."""
import logging

import pytest
import torch
from torch import nn

import lqkernels
from lqkernels import cli, prune


class Mixed(nn.Module):
    """An embedding, a norm, a convolution and two Linear layers, the last tied to the embedding."""

    def __init__(self, tie_head: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(16, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.hidden = nn.Linear(8, 8)
        self.head = nn.Linear(8, 16, bias=False)
        if tie_head:
            self.head.weight = self.embed.weight

    def forward(self, tokens):
        h = self.conv(self.embed(tokens).transpose(1, 2)).transpose(1, 2)
        return self.head(torch.relu(self.hidden(self.norm(h))))


PRUNE_CALLS = {
    "sap": lambda m: prune.sap(m),
    "lq_neuron": lambda m: prune.lq_neuron(m),
    "magnitude": lambda m: prune.magnitude(m, 0.5, scope="global"),
}


@pytest.mark.parametrize("method", PRUNE_CALLS)
def test_default_scope_is_linear_and_convolutions(method):
    model = Mixed()
    PRUNE_CALLS[method](model)
    assert all(hasattr(getattr(model, name), "weight_mask") for name in ("conv", "hidden", "head"))
    assert not hasattr(model.embed, "weight_mask") and not hasattr(model.norm, "weight_mask")
    assert [name for name, _, _ in prune.prunable_weights(model)] == ["conv.weight", "hidden.weight", "head.weight"]


def test_include_widens_or_narrows_the_scope():
    model = Mixed()
    prune.magnitude(model, 0.5, include=lambda m, fqn: prune.default_include(m, fqn) or isinstance(m, nn.Embedding))
    assert hasattr(model.embed, "weight_mask") and hasattr(model.hidden, "weight_mask")
    narrow = Mixed()
    prune.magnitude(narrow, 0.5, include=lambda m, fqn: fqn == "hidden")
    assert hasattr(narrow.hidden, "weight_mask") and not hasattr(narrow.conv, "weight_mask")


def test_a_head_tied_to_an_embedding_is_left_alone(caplog):
    model = Mixed(tie_head=True)
    with caplog.at_level(logging.INFO, logger="lqkernels.prune"):
        prune.sap(model)
    assert not hasattr(model.head, "weight_mask") and not hasattr(model.embed, "weight_mask")
    assert "left alone: head.weight (Linear): tied to embed.weight (Embedding)" in caplog.text
    prune.sap(model, include=lambda m, fqn: True)  # asked for: one mask in both holders
    assert torch.equal(model.head.weight_mask, model.embed.weight_mask)


@pytest.mark.parametrize("method", PRUNE_CALLS)
def test_every_pruning_call_logs_what_it_touched(method, caplog):
    model = Mixed()
    with caplog.at_level(logging.INFO, logger="lqkernels.prune"):
        PRUNE_CALLS[method](model)
    (record,) = [r for r in caplog.records if r.name == "lqkernels.prune"]
    text = record.getMessage()
    kept = {name: int(s.sum()) for name, _, s in prune.prunable_weights(model)}
    assert text.startswith(f"{method}: pruned {sum(w.numel() for _, w, _ in prune.prunable_weights(model)) - sum(kept.values())} weights in 3 tensors")
    for name, count in kept.items():
        line = next(line for line in text.splitlines() if line.startswith(name))
        assert f" {count} " in line
    assert "left alone: embed.weight (Embedding): Embedding is not pruned by default" in text
    assert "norm" not in text  # 1-d weights are never candidates


@pytest.mark.parametrize("method", ["lt", "os"])
def test_iterative_logs_every_round(method, caplog):
    model = Mixed()
    tokens = torch.randint(0, 16, (4, 5))
    with caplog.at_level(logging.INFO, logger="lqkernels.prune"):
        prune.iterative(model, lambda m: None, lambda m: m(tokens).detach().sum().item(), method=method, rounds=2,
                        progress=False)
    assert len([r for r in caplog.records if r.name == "lqkernels.prune"]) == 2


def test_compressibility_says_what_it_did_not_measure():
    report = prune.compressibility(Mixed())
    assert [row["layer"] for row in report.layers] == ["conv.weight", "hidden.weight", "head.weight"]
    assert report.left_alone[0]["name"] == "embed.weight"
    assert "not measured: embed.weight (Embedding)" in str(report)


def _pruned_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4), nn.Linear(4, 4))
    prune.magnitude(model, 0.5, include=lambda m, fqn: fqn in ("0", "2"))
    return model


def test_sparsify_reports_what_it_swapped_and_why_it_left_layers_alone(caplog):
    model = _pruned_mlp()
    with caplog.at_level(logging.INFO, logger="lqkernels.sparsify"):
        returned = lqkernels.sparsify_(model)
    assert returned is model  # in place, as before
    report = model.sparsify_report
    assert [(row["layer"], row["format"]) for row in report.swapped] == [("0", "dense"), ("2", "dense")]
    assert all("too small" in row["why"] for row in report.swapped)
    assert report.left_alone == [{"layer": "3", "module": "Linear", "why": "not pruned (no weight_mask and no zero weight)"}]
    assert str(report) in caplog.text and caplog.records[-1].levelno == logging.INFO
    again = lqkernels.sparsify_(model, format="bitmap")
    assert {row["why"] for row in again.sparsify_report.left_alone} == {"already a SparseLinear", "not pruned (no weight_mask and no zero weight)"}


def test_sparsify_on_an_unpruned_model_warns(caplog):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with caplog.at_level(logging.INFO, logger="lqkernels.sparsify"):
        lqkernels.sparsify_(model)
    assert caplog.records[-1].levelno == logging.WARNING and "sparsify_ changed nothing" in caplog.text
    assert not model.sparsify_report.swapped and len(model.sparsify_report.left_alone) == 2
    assert all(isinstance(m, nn.Linear) for m in (model[0], model[2]))


def test_sparsify_names_pruned_layers_it_cannot_swap():
    model = Mixed()
    prune.magnitude(model, 0.5)
    lqkernels.sparsify_(model)
    assert {"layer": "conv", "module": "Conv1d", "why": "pruned, but SparseLinear replaces nn.Linear only"} in \
        model.sparsify_report.left_alone


def test_cli_prints_what_it_touched_and_every_file_it_writes(tmp_path, capsys):
    model_file, out, table = tmp_path / "mixed.pt", tmp_path / "pruned.pt", tmp_path / "report.csv"
    torch.save(Mixed(), model_file)
    assert cli.main(["prune", str(model_file), "--method", "magnitude", "--amount", "0.5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "magnitude: pruned" in text and "hidden.weight" in text and f"wrote {out}" in text
    assert "left alone: embed.weight (Embedding)" in text
    assert cli.main(["report", str(out), "--csv", str(table)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {table} (4 rows)" in text and table.exists()
    assert "not measured: embed.weight (Embedding)" in text
    assert not logging.getLogger("lqkernels").handlers  # the CLI's printing handler is gone again
