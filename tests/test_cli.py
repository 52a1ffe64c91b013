"""The `lqkernels` command: help, report, prune and demo on a factory (tests/cli_models.py) or a checkpoint."""
import csv
import subprocess
import sys

import pytest
import torch
import torch.nn.utils.prune as torch_prune

import lqkernels
from lqkernels import cli, prune
from lqkernels.nn import SparseLinear


def test_help_in_a_fresh_process():
    out = subprocess.run([sys.executable, "-m", "lqkernels", "--help"], capture_output=True, text=True, check=True)
    assert "report" in out.stdout and "prune" in out.stdout and "package.module:factory" in out.stdout
    assert "demo" in out.stdout


def test_subcommand_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["prune", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--method" in text and "--out" in text and "--amount" in text


def test_demo_subcommand(tmp_path, capsys):
    assert cli.main(["demo", "--model", "cli_models:tiny_mlp", "--rounds", "1", "--batches", "2",
                     "--repeats", "1", "--plot", str(tmp_path / "demo.png")]) == 0
    out = capsys.readouterr().out
    assert "Compressibility" in out and "SAP" in out and "sparsify_" in out and "Summary" in out
    assert (tmp_path / "demo.png").exists()


def test_demo_subcommand_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: lqkernels demo") and "--model" in text and "--plot" in text


def test_report_from_factory(capsys, tmp_path):
    assert cli.main(["report", "cli_models:tiny_mlp", "--scope", "neuron", "--tolerance", "0.5",
                     "--csv", str(tmp_path / "r.csv")]) == 0
    text = capsys.readouterr().out
    assert "0.weight" in text and "2.weight" in text and "all weights" in text and "Per neuron" in text
    assert (tmp_path / "r.csv").read_text().count("\n") == 2 + 1 + 16 + 3 + 1  # header, layers, total, neurons


@pytest.mark.parametrize("method, extra", [("sap", ["--scope", "layer"]), ("lq_neuron", []),
                                           ("magnitude", ["--amount", "0.5", "--scope", "global"])])
def test_prune_then_report_checkpoint(method, extra, tmp_path, capsys):
    out = tmp_path / "pruned.pt"
    assert cli.main(["prune", "cli_models:tiny_mlp", "--method", method, *extra, "--out", str(out)]) == 0
    out_text = capsys.readouterr().out
    assert f"wrote {out}" in out_text and "left alone" not in out_text
    assert "0.weight" in out_text and "kept before" in out_text and "all weights" in out_text
    model = torch.load(out, weights_only=False)
    assert hasattr(model[0], "weight_mask") and model[0].weight_mask.sum() < model[0].weight_mask.numel()
    torch_prune.remove(model[0], "weight")  # still ordinary torch.nn.utils.prune state
    assert cli.main(["report", str(out)]) == 0
    # a second round from the checkpoint only removes more
    again = tmp_path / "again.pt"
    assert cli.main(["prune", str(tmp_path / "pruned.pt"), "--method", "magnitude", "--amount", "0.5",
                     "--out", str(again), "--remove"]) == 0
    final = torch.load(again, weights_only=False)
    assert not hasattr(final[2], "weight_mask")
    first = torch.load(out, weights_only=False)
    assert not (final[2].weight != 0)[first[2].weight_mask == 0].any()


def test_weights_file(tmp_path, capsys):
    from cli_models import tiny_mlp
    model = tiny_mlp()
    with torch.no_grad():
        model[0].weight.zero_()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    assert cli.main(["report", "cli_models:tiny_mlp", "--weights", str(tmp_path / "w.pt")]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("0.weight"))
    assert " 0  " in line or line.split()[3] == "0"  # the l_q norm of the zeroed layer


@pytest.mark.parametrize("argv, message", [
    (["report", "no_such_module:f"], "cannot load factory 'no_such_module:f'"),
    (["report", "cli_models:not_a_module"], "returned a int, not an nn.Module"),
    (["report", "missing.pt"], "neither an existing checkpoint file nor package.module:factory"),
    (["report", "cli_models:tiny_mlp", "--bogus"], "unrecognized arguments: --bogus"),
    (["prune", "cli_models:tiny_mlp", "--method", "sap", "--p", "1.0", "--out", "x.pt"], "p < q, got p=1, q=1"),
    (["prune", "cli_models:tiny_mlp", "--method", "magnitude", "--out", "x.pt"], "needs --amount"),
    (["prune", "cli_models:tiny_mlp", "--method", "magnitude", "--amount", "2", "--out", "x.pt"], "got 2.0"),
])
def test_errors_exit_2_with_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def _report_rows(path, tmp_path, capsys) -> dict:
    csv_file = tmp_path / (path.stem + ".csv")
    assert cli.main(["report", str(path), "--csv", str(csv_file)]) == 0
    capsys.readouterr()
    with open(csv_file, newline="") as f:
        return {row["layer"]: row for row in csv.DictReader(f)}


def test_one_meaning_of_survivor_across_save_load_and_remove(tmp_path, capsys):
    """Kept = mask set, or nonzero without a mask: `report`, compressibility, remaining_fraction and
    sparsify_ count the same survivors in the masked checkpoint and in the one saved with --remove."""
    masked, removed = tmp_path / "masked.pt", tmp_path / "removed.pt"
    for out, extra in ((masked, []), (removed, ["--remove"])):
        assert cli.main(["prune", "cli_models:tiny_mlp", "--method", "magnitude", "--amount", "0.55",
                         "--out", str(out), *extra]) == 0
    with_masks, without = torch.load(masked, weights_only=False), torch.load(removed, weights_only=False)
    assert hasattr(with_masks[0], "weight_mask") and not hasattr(without[0], "weight_mask")
    a, b = _report_rows(masked, tmp_path, capsys), _report_rows(removed, tmp_path, capsys)
    assert a.keys() == b.keys() == {"0.weight", "2.weight", "all weights"}
    for layer in a:
        assert a[layer]["survivors"] == b[layer]["survivors"] and a[layer]["pqi"] == b[layer]["pqi"]
    assert int(a["0.weight"]["survivors"]) == 12 * 16 - round(0.55 * 12 * 16)
    assert prune.remaining_fraction(with_masks) == prune.remaining_fraction(without) < 0.5
    kept = {name: int(s.sum()) for name, _, s in prune.prunable_weights(without)}
    assert kept == {layer: int(row["survivors"]) for layer, row in a.items() if layer != "all weights"}
    for model in (with_masks, without):
        sparse = lqkernels.sparsify_(model)
        assert [m.nnz for m in sparse.modules() if isinstance(m, SparseLinear)] == list(kept.values())
