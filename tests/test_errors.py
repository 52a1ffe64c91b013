"""Errors in the user's terms: every error reachable through lqkernels.ops, lqkernels.nn, prune,
theory and the CLI names the public function that was called (and keeps its exception type),
never a kernel-level op the caller did not call (row_powsum, row_topk_mask, ...)."""
import pytest
import torch
from torch import nn

import lqkernels
from lqkernels import cli, ops, prune, theory
from lqkernels._backend import REFERENCES
from lqkernels._checks import in_user_terms
from lqkernels.nn import SparseLinear

KERNEL_OPS = tuple(REFERENCES)  # row_powsum, row_gini, row_topk_mask, global_topk_masks, *_linear
NAN = float("nan")


def _with_nan(shape=(3, 5), where=(1, 2)):
    x = torch.zeros(shape)
    x[where] = NAN
    return x


def _mlp(nan: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    if nan:
        with torch.no_grad():
            model[0].weight[3, 1] = NAN
    return model


def _pruned_linear(**kwargs) -> SparseLinear:
    linear = nn.Linear(8, 4)
    with torch.no_grad():
        linear.weight[:, ::2] = 0
    return SparseLinear.from_linear(linear, **kwargs)


x35, w46 = torch.zeros(3, 5), torch.randn(4, 6)
# (public name, expected type, call): the bad-input cases of the suite, through the public API
CASES = [
    ("topk_mask", ValueError, lambda: ops.topk_mask(x35, 17)),
    ("topk_mask", ValueError, lambda: ops.topk_mask(x35, torch.tensor([1, 9, 0]), backend="torch")),
    ("topk_mask", ValueError, lambda: ops.topk_mask(_with_nan(), 1)),
    ("topk_threshold", ValueError, lambda: ops.topk_threshold(x35, 6)),
    ("nm_mask", ValueError, lambda: ops.nm_mask(_with_nan((2, 8)), 2, 4)),
    ("global_topk_masks", ValueError, lambda: ops.global_topk_masks([x35], 16)),
    ("global_topk_masks", ValueError, lambda: ops.global_topk_masks([x35, _with_nan()], 1)),
    ("lq_norm", RuntimeError, lambda: ops.lq_norm(x35, 0.5, backend="cuda")),
    ("lq_norm", ValueError, lambda: ops.lq_norm(x35, 0.5, backend="gpu")),
    ("lq_powsum", RuntimeError, lambda: ops.lq_powsum(x35, [0.5], backend="cuda")),
    ("pq_index", RuntimeError, lambda: ops.pq_index(x35, backend="cuda")),
    ("sparsity_index", RuntimeError, lambda: ops.sparsity_index(x35, 0.5, backend="cuda")),
    ("hoyer", RuntimeError, lambda: ops.hoyer(x35, backend="cuda")),
    ("gini", RuntimeError, lambda: ops.gini(x35, backend="cuda")),
    ("topk_mask", RuntimeError, lambda: ops.topk_mask(x35, 1, backend="cuda")),
    ("global_topk_masks", RuntimeError, lambda: ops.global_topk_masks([x35], 1, backend="cuda")),
    ("SparseLinear", RuntimeError, lambda: _pruned_linear(format="bitmap", backend="cuda")(torch.randn(2, 8))),
    ("SparseLinear", RuntimeError, lambda: _pruned_linear(format="csr16", backend="cuda").resolved_backend()),
    ("SparseLinear", TypeError, lambda: _pruned_linear(format="bitmap")(torch.randn(2, 8).double())),
    ("SparseLinear.from_linear", TypeError, lambda: SparseLinear.from_linear(nn.Linear(3, 2), torch.ones(2, 3))),
    ("SparseLinear.from_linear", ValueError, lambda: SparseLinear.from_linear(nn.Linear(3, 2), format="coo")),
    ("SparseLinear.from_linear", TypeError, lambda: SparseLinear.from_linear(nn.Conv1d(3, 2, 1))),
    ("SparseLinear", ValueError, lambda: SparseLinear(3, 2, format="coo")),
    ("sparsify_", ValueError, lambda: lqkernels.sparsify_(prune.magnitude(_mlp(), 0.5), format="coo")),
    ("sap", ValueError, lambda: prune.sap(_mlp(nan=True))),
    ("magnitude", ValueError, lambda: prune.magnitude(_mlp(nan=True), 0.5, scope="global")),
    ("lq_neuron", ValueError, lambda: prune.lq_neuron(_mlp(), q=2.0)),
    ("compressibility", ValueError, lambda: prune.compressibility(_mlp(), q=1.5)),
    ("pqi_keep_bound", TypeError, lambda: theory.pqi_keep_bound([1.0, 2.0])),
    ("pqi_keep_count", ValueError, lambda: theory.pqi_keep_count(w46, mask=torch.ones(4, 5, dtype=torch.bool))),
    ("keep_count_for_tolerance", ValueError, lambda: theory.keep_count_for_tolerance(w46, 0.1, dim=4)),
    ("s_term_bound", TypeError, lambda: theory.s_term_bound(w46.long(), 2)),
    ("allocate_two_layer", TypeError, lambda: theory.allocate_two_layer(torch.ones(4), w46, 3, mask=w46)),
]
# The same through the LQK_BACKEND variable (CPU tensors: 'cuda' fails with or without a GPU):
# deeper layers resolve the backend, the public name shows. (public name, what to build before the variable is set, the call on it)
BACKEND_CASES = [
    ("sap", _mlp, prune.sap),
    ("magnitude", _mlp, lambda model: prune.magnitude(model, 0.5)),
    ("compressibility", _mlp, prune.compressibility),
    ("certify", lambda: prune.magnitude(_mlp(), 0.5), theory.certify),
    ("pqi_keep_bound", lambda: w46, lambda w: theory.pqi_keep_bound(w, dim=1)),
    ("SparseLinear", lambda: _pruned_linear(format="bitmap"), lambda layer: layer(torch.randn(2, 8))),
]


def _check_message(message: str, public: str) -> None:
    assert message.startswith(f"{public}: "), message
    assert not message.startswith(tuple(f"{op}" for op in KERNEL_OPS if op != public)), message


@pytest.mark.parametrize("public, kind, call", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_errors_name_the_public_function(public, kind, call):
    with pytest.raises(kind) as error:
        call()
    assert type(error.value) is kind
    _check_message(str(error.value), public)


@pytest.mark.parametrize("public, make, call", BACKEND_CASES, ids=[c[0] for c in BACKEND_CASES])
def test_errors_through_lqk_backend_name_the_public_function(public, make, call, monkeypatch):
    argument = make()
    with monkeypatch.context() as env:
        env.setenv("LQK_BACKEND", "cuda")
        with pytest.raises(RuntimeError) as error:
            call(argument)
    _check_message(str(error.value), public)
    assert "backend 'cuda'" in str(error.value)


def test_cli_errors_name_the_function_and_exit_2(capsys, monkeypatch):
    monkeypatch.setenv("LQK_BACKEND", "cuda")
    with pytest.raises(SystemExit) as e:
        cli.main(["report", "cli_models:tiny_mlp"])
    message = capsys.readouterr().err.split("error: ", 1)[1]
    assert e.value.code == 2 and message.startswith("compressibility: ")


def test_in_user_terms_keeps_type_detail_and_other_public_names():
    kernel = in_user_terms(ValueError("row_topk_mask: k = 17 for slice 0"), "topk_mask")
    assert type(kernel) is ValueError and str(kernel) == "topk_mask: k = 17 for slice 0"
    nested = in_user_terms(ValueError("topk_mask: scores contain NaN in slice 2"), "sap")
    assert str(nested) == "sap: topk_mask: scores contain NaN in slice 2"
    same = ValueError("sap: beta must be in (0, 1]")
    assert in_user_terms(same, "sap") is same
    assert str(in_user_terms(RuntimeError("shapes cannot be multiplied"), "SparseLinear")) == \
        "SparseLinear: shapes cannot be multiplied"
