"""The demo: trains quickly and deterministically, and its whole story runs (report, SAP rounds with
their certificate, accuracy, sparse layers equal to the masked model, timings, plot), on small sizes."""
import pytest
import torch

pytest.importorskip("sklearn")  # the demo's data set ships with scikit-learn
pytest.importorskip("matplotlib")  # its plot

from lqkernels import prune  # noqa: E402
from lqkernels.nn import FORMATS, SparseLinear  # noqa: E402
from lqkernels.demo import main, make_mlp, train_digits_mlp  # noqa: E402

EPOCHS = 5  # ~0.1-0.5 s of training at these widths; reaches ~94% validation accuracy with seed 0
# The story on a small MLP: still ~90% pruned by SAP (gamma 8), so the sparse kernels run.
SMALL = ["--hidden", "256", "256", "--epochs", str(EPOCHS), "--finetune-epochs", "2"]


@pytest.fixture(scope="module")
def trained():
    return train_digits_mlp(seed=0, epochs=EPOCHS)  # the small default MLP, 64-128-64-10


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    plot = tmp_path_factory.mktemp("demo") / "demo.png"
    return main([*SMALL, "--rounds", "2", "--batches", "1", "5", "--repeats", "3", "--plot", str(plot)])


def test_training_reaches_sane_accuracy(trained):
    _, accuracy = trained
    assert accuracy > 0.85  # 10 classes: chance is 0.1; 5 epochs of Adam gives ~0.94


def test_training_is_deterministic_and_keeps_caller_rng(trained):
    state = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    model, accuracy = train_digits_mlp(seed=0, epochs=EPOCHS)
    assert torch.equal(torch.random.get_rng_state(), state) and torch.get_num_threads() == threads
    assert accuracy == trained[1]
    for a, b in zip(model.parameters(), trained[0].parameters()):
        assert torch.equal(a, b)


def test_make_mlp_widths():
    def widths(model):
        return [(m.in_features, m.out_features) for m in model if isinstance(m, torch.nn.Linear)]

    assert widths(make_mlp()) == [(64, 128), (128, 64), (64, 10)]  # what experiments/ build on
    assert widths(make_mlp((32, 16, 8))) == [(64, 32), (32, 16), (16, 8), (8, 10)]


def test_story_report(story):
    report = story["report"]
    assert [r["layer"] for r in report.layers] == ["0.weight", "2.weight", "4.weight"]
    assert report.total["layer"] == "all weights" and report.total["params"] == 64 * 256 + 256 * 256 + 256 * 10
    assert len(report.neurons) == 256 + 256 + 10
    assert all(0 < r["pqi"] < 1 for r in report.layers)


def test_story_prunes_with_a_certificate(story):
    rounds = story["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[0]["remaining"] < 0.5  # gamma 8: most of every neuron goes in the first round
    assert rounds[1]["remaining"] <= rounds[0]["remaining"]  # a pruned weight never comes back
    for r in rounds:  # the bound holds for every input in the ball, the measured ones included
        assert r["change"] <= r["bound"] * (1 + 1e-6) and r["bound"] <= r["sterm_bound"] * (1 + 1e-6)


def test_story_accuracy_survives_pruning(story):
    dense, last = story["dense_accuracy"], story["rounds"][-1]
    assert dense > 0.85
    assert last["acc_tuned"] >= dense - 0.05  # fine-tuning recovers what the first step cost


def test_story_sparse_layers_match_the_masked_model(story):
    pruned, sparse = story["model"], story["sparse"]
    layers = [m for m in sparse.modules() if isinstance(m, SparseLinear)]
    assert len(layers) == 3 and all(m.format in FORMATS for m in layers)
    # ~90% sparse, but auto stores a sparse format only where it measured one faster than dense on
    # this machine (a 256x256 layer may not pay for a sparse call's fixed cost): else "dense", and
    # the report says why.
    for row in sparse.sparsify_report.swapped:
        assert row["format"] != "dense" or ("measured" in row["why"] or "too small" in row["why"]), row
    x = torch.randn(7, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), pruned(x), rtol=1e-5, atol=1e-5)  # float32 sum order
    stored_sparse = any(m.format in ("bitmap", "csr16") for m in layers)
    assert story["bytes"]["sparse"] < (0.5 if stored_sparse else 1.05) * story["bytes"]["dense"]
    assert [row["layer"] for row in story["layers"]] == ["0", "2", "4"]
    # one meaning of "kept": the demo's rounds, prune's survivors and the sparse layers agree
    survivors = [int(s.sum()) for _, _, s in prune.prunable_weights(pruned)]
    assert [m.nnz for m in layers] == survivors
    assert story["rounds"][-1]["remaining"] == sum(survivors) / sum(m.weight.numel() for m in layers)


def test_story_speed_table_and_plot(story):
    speed = story["speed"]
    assert [r["batch"] for r in speed] == [1, 5]
    for r in speed:
        assert r["dense_ms"] > 0 and r["sparse_ms"] > 0 and r["threads"] == 1
        assert r["max_diff"] < 1e-4 and len(r["paths"].split(",")) == 3
    assert story["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_story_output_in_order(tmp_path, capsys):
    main([*SMALL, "--rounds", "1", "--batches", "2", "--repeats", "1", "--plot", str(tmp_path / "p.png")])
    out = capsys.readouterr().out
    assert "validation accuracy" in out.splitlines()[0]
    positions = [out.index(f"\n{i}. ") for i in range(1, 7)]
    assert positions == sorted(positions)
    for text in ("PQI(0.5,1)", "keep (Thm 2)", "Per neuron", "measured change", "bound", "acc. fine-tuned",
                 "bytes as nn.Linear", "speed-up", "Summary"):
        assert text in out


def test_user_model_without_data(tmp_path, capsys):
    result = main(["--model", "cli_models:tiny_mlp", "--rounds", "1", "--batches", "3", "--repeats", "1",
                   "--plot", str(tmp_path / "u.png")])
    out = capsys.readouterr().out
    assert "no accuracy" in out and "Accuracy: skipped" in out
    assert result["dense_accuracy"] is None and "acc_pruned" not in result["rounds"][0]
    assert result["rounds"][0]["remaining"] < 1 and (tmp_path / "u.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--q", "1.5"], "--q must be in (0, 1)"),
    (["--rounds", "0"], "--rounds, --repeats and --threads must be >= 1"),
    (["--model", "cli_models:not_a_module"], "returned a int, not an nn.Module"),
])
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_story_prints_the_machine_its_timings_depend_on(story, capsys):
    machine = story["machine"]
    assert f"torch {torch.__version__}" in machine and torch.backends.cpu.get_cpu_capability() in machine
    assert "CPUs timed" in machine and "GPU:" in machine


def test_story_plot_panels_and_legends_off_the_data(story):
    from lqkernels.demo import story_figure

    fig = story_figure(story["rounds"], story["speed"], story["dense_accuracy"], story["layers"], story["machine"])
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    axes = fig.axes
    assert [ax.get_title().split(".")[0] for ax in axes] == ["1", "2", "3", "4"]
    assert axes[1].get_yscale() == "log" and {"certified bound (theory.certify)", "measured: max ||output change||_2"} \
        <= {t.get_text() for t in axes[1].get_legend().get_texts()}
    assert any(line.get_ydata()[0] == 1.0 for line in axes[3].get_lines())  # the 1x line
    for ax in axes:  # every legend lies outside every panel's data area
        legend = ax.get_legend().get_window_extent(renderer)
        assert not any(legend.overlaps(other.get_window_extent(renderer)) for other in axes), ax.get_title()
