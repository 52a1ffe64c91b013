"""lqkernels.prune: every rule's masks equal a plain per-row reference (torch sort per row), masks
live in torch.nn.utils.prune, rounds never resurrect weights, bad input leaves the model as it was,
and the prune–retrain loop records, saves and plots its history."""
import copy
import json
import math

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import lqkernels
from lqkernels import ops, prune


def make_mlp(seed=0, sizes=(12, 24, 16, 3)):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers = []
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            layers += [nn.Linear(a, b), nn.ReLU()] if i < len(sizes) - 2 else [nn.Linear(a, b)]
        return nn.Sequential(*layers)


def heavy_tailed_(model, seed=1):
    """Rows with different sparsity, so every rule gives rows different counts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                w = m.weight.reshape(m.weight.shape[0], -1)
                power = torch.linspace(0.5, 6, w.shape[0])[:, None]
                w.copy_(torch.randn(w.shape, generator=g) * torch.rand(w.shape, generator=g) ** power)
    return model


def weights_and_masks(model):
    """{name: (dense weight, survivors)} of the model's Linear / Conv layers, through the prune API."""
    return {name: (w.clone(), None if s is None else s.clone()) for name, w, s in prune.prunable_weights(model)}


# ---- straightforward references: plain torch sort per row -------------------------------------
def ref_rank_keep(w_row, s_row, keep):
    """Mask keeping the `keep` largest |w| among survivors; ties: lowest index first."""
    idx = s_row.nonzero().flatten()
    order = sorted(idx.tolist(), key=lambda i: (-abs(w_row[i].item()), i))
    out = torch.zeros_like(s_row)
    out[order[:keep]] = True
    return out


def ref_pq_keep(vals, p, q, eta, gamma, beta, min_keep=0):
    """[S]'s step for one slice of survivor values: r from Theorem 2, then c pruned."""
    d = len(vals)
    if d == 0:
        return 0
    a = vals.abs().double()
    if a.max() == 0:
        r = 0
    else:
        pqi = 1 - d ** (1 / q - 1 / p) * torch.linalg.vector_norm(a, p) / torch.linalg.vector_norm(a, q)
        r = math.ceil(d * (1 + eta) ** (-q / (q - p)) * (1 - pqi.item()) ** (p * q / (q - p)) - 1e-6)
    r = min(max(r, min(min_keep, d)), d)
    c = math.floor(d * min(max(gamma * (1 - r / d), 0), beta) + 1e-9)
    return d - c


def ref_rows(w, s, keep_fn):
    w2d = w.reshape(w.shape[0], -1)
    s2d = torch.ones_like(w2d, dtype=torch.bool) if s is None else s.reshape(w2d.shape)
    return torch.stack([ref_rank_keep(w2d[i], s2d[i], keep_fn(w2d[i][s2d[i]])) for i in range(w2d.shape[0])]).reshape(w.shape)


def current_masks(model):
    return {name: s.clone() for name, _, s in prune.prunable_weights(model)}


# ---- SAP / ℓq / magnitude masks equal the references --------------------------------------------
@pytest.mark.parametrize("p, q, eta, gamma, beta", [(0.5, 1.0, 0.0, 1.0, 0.9), (1.0, 2.0, 0.0, 1.0, 0.9),
                                                    (0.5, 1.0, 0.1, 1.2, 0.7), (0.3, 0.8, 0.05, 0.8, 1.0)])
def test_sap_neuron_matches_reference(p, q, eta, gamma, beta):
    model = heavy_tailed_(make_mlp())
    before = weights_and_masks(model)
    prune.sap(model, p=p, q=q, eta=eta, gamma=gamma, beta=beta, scope="neuron")
    after = current_masks(model)
    counts = set()
    for name, (w, s) in before.items():
        expected = ref_rows(w, s, lambda v: ref_pq_keep(v, p, q, eta, gamma, beta))
        assert torch.equal(after[name], expected), name
        counts |= set(after[name].sum(1).tolist())
    assert len(counts) > 3  # neuron scope: rows get their own counts
    # a second round ranks survivors only and matches the reference on them
    before = weights_and_masks(model)
    prune.sap(model, p=p, q=q, eta=eta, gamma=gamma, beta=beta, scope="neuron")
    for name, (w, s) in before.items():
        assert torch.equal(current_masks(model)[name], ref_rows(w, s, lambda v: ref_pq_keep(v, p, q, eta, gamma, beta)))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_sap_layer_and_global_match_reference(scope):
    model = heavy_tailed_(make_mlp())
    prune.magnitude(model, 0.3, scope="neuron")  # start from uneven survivors
    before = weights_and_masks(model)
    prune.sap(model, p=0.5, q=1.0, scope=scope)
    after = current_masks(model)
    if scope == "layer":
        for name, (w, s) in before.items():
            keep = ref_pq_keep(w[s], 0.5, 1.0, 0.0, 1.0, 0.9)
            assert torch.equal(after[name], ref_rank_keep(w.flatten(), s.flatten(), keep).reshape(w.shape))
    else:
        flat_w = torch.cat([w.flatten() for w, _ in before.values()])
        flat_s = torch.cat([s.flatten() for _, s in before.values()])
        keep = ref_pq_keep(flat_w[flat_s], 0.5, 1.0, 0.0, 1.0, 0.9)
        assert torch.equal(torch.cat([m.flatten() for m in after.values()]), ref_rank_keep(flat_w, flat_s, keep))


@pytest.mark.parametrize("eta", [0.0, 0.1])
def test_sap_keep_ratio_is_one_minus_pqi(eta):
    """(p, q) = (0.5, 1): a round keeps d·(1+η)^-2·(1 − PQI) (β = 1 so nothing caps it)."""
    model = heavy_tailed_(make_mlp(sizes=(400, 50, 10)))
    dense = weights_and_masks(model)
    prune.sap(model, p=0.5, q=1.0, eta=eta, beta=1.0, scope="layer")
    for name, (w, _) in dense.items():
        kept = current_masks(model)[name].sum().item()
        expected = w.numel() * (1 + eta) ** -2 * (1 - ops.pq_index(w, 0.5, 1.0).item())
        assert expected <= kept <= expected + 1 + 1e-3 * w.numel() * 1e-3


def test_lq_neuron_matches_reference_and_equals_sap_with_q1():
    model = heavy_tailed_(make_mlp())
    before = weights_and_masks(model)
    twin = copy.deepcopy(model)
    prune.lq_neuron(model, q=0.5, eta=0.05, gamma=1.1, beta=0.8)

    def keep(v):  # [T]'s rule: k = max(1, ceil((1+η)^{-1/(1-q)} (‖w‖_q/‖w‖_1)^{q/(1-q)}))
        a = v.abs().double()
        k = math.ceil((1.05) ** (-1 / 0.5) * (torch.linalg.vector_norm(a, 0.5) / a.sum()).item() ** (0.5 / 0.5) - 1e-6)
        k = min(max(k, 1), len(v))
        return len(v) - math.floor(len(v) * min(max(1.1 * (1 - k / len(v)), 0), 0.8) + 1e-9)

    for name, (w, s) in before.items():
        assert torch.equal(current_masks(model)[name], ref_rows(w, s, keep))
    prune.sap(twin, p=0.5, q=1.0, eta=0.05, gamma=1.1, beta=0.8)
    assert all(torch.equal(a, b) for a, b in zip(current_masks(model).values(), current_masks(twin).values()))


def test_lq_neuron_tolerance_guarantee():
    model = heavy_tailed_(make_mlp())
    before = weights_and_masks(model)
    prune.lq_neuron(model, q=0.5, tolerance=0.5, input_bound=1.0, beta=1.0)
    for name, (w, _) in before.items():
        mask = current_masks(model)[name]
        tail = (w * ~mask).abs().sum(1)  # ‖w − ŵ‖_1 per neuron: |Δ pre-activation| for ‖x‖_∞ ≤ 1
        assert (tail <= 0.5 + 1e-6).all()
    with pytest.raises(ValueError, match="either eta or tolerance"):
        prune.lq_neuron(model, eta=0.1, tolerance=1.0)


@pytest.mark.parametrize("amount", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_magnitude_equals_torch_prune(amount):
    ours, theirs = make_mlp(), make_mlp()
    for _ in range(2):  # the second round prunes `amount` of the survivors, in both
        prune.magnitude(ours, amount, scope="layer")
        for m in theirs:
            if isinstance(m, nn.Linear):
                torch_prune.l1_unstructured(m, "weight", amount)
        for a, b in zip(ours, theirs):
            if isinstance(a, nn.Linear):
                assert torch.equal(a.weight_mask, b.weight_mask)
    ours, theirs = make_mlp(), make_mlp()
    prune.magnitude(ours, amount, scope="global")
    torch_prune.global_unstructured([(m, "weight") for m in theirs if isinstance(m, nn.Linear)],
                                    torch_prune.L1Unstructured, amount=amount)
    for a, b in zip(ours, theirs):
        if isinstance(a, nn.Linear):
            assert torch.equal(a.weight_mask, b.weight_mask)


def test_magnitude_neuron_scope_per_row():
    model = make_mlp()
    before = weights_and_masks(model)
    prune.magnitude(model, 0.3, scope="neuron")
    for name, (w, s) in before.items():
        assert torch.equal(current_masks(model)[name], ref_rows(w, s, lambda v: len(v) - round(0.3 * len(v))))


# ---- β, resurrection, model kinds ---------------------------------------------------------------
def test_beta_caps_a_round():
    model = heavy_tailed_(make_mlp())
    prune.sap(model, gamma=50.0, beta=0.3, scope="neuron")
    for name, w, s in prune.prunable_weights(model):
        d = w.shape[1]
        assert (s.sum(1) == d - math.floor(0.3 * d)).all(), name
    model = heavy_tailed_(make_mlp())
    prune.sap(model, gamma=50.0, beta=0.3, scope="global")
    total = sum(w.numel() for _, w, _ in prune.prunable_weights(model))
    assert sum(int(s.sum()) for _, _, s in prune.prunable_weights(model)) == total - math.floor(0.3 * total)


@pytest.mark.parametrize("step", [lambda m: prune.sap(m, scope="neuron"), lambda m: prune.sap(m, scope="layer"),
                                  lambda m: prune.sap(m, scope="global"), lambda m: prune.lq_neuron(m),
                                  lambda m: prune.magnitude(m, 0.5, scope="global")])
def test_a_round_never_resurrects(step):
    model = heavy_tailed_(make_mlp())
    prune.magnitude(model, 0.5, scope="neuron")
    old = current_masks(model)
    with torch.no_grad():  # make pruned originals the largest values: they still must not come back
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight_orig[~m.weight_mask.bool()] = 1e6
    step(model)
    for name, mask in current_masks(model).items():
        assert not (mask & ~old[name]).any()
        assert mask.sum() <= old[name].sum()
    assert sum(int(m.sum()) for m in current_masks(model).values()) < sum(int(m.sum()) for m in old.values())


def test_conv_filters_are_rows():
    torch.manual_seed(0)
    model = heavy_tailed_(nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 4)))
    before = weights_and_masks(model)
    prune.sap(model, scope="neuron")
    for name, (w, s) in before.items():
        assert torch.equal(current_masks(model)[name], ref_rows(w, s, lambda v: ref_pq_keep(v, 0.5, 1.0, 0.0, 1.0, 0.9)))
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4)
    assert torch.equal(model[0].weight, model[0].weight_orig * model[0].weight_mask)


def test_tied_weights_share_one_mask():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10, bias=False), nn.ReLU(), nn.Linear(10, 10, bias=False))
    model[2].weight = model[0].weight
    assert [name for name, _, _ in prune.prunable_weights(model)] == ["0.weight"]  # measured once
    prune.sap(model, scope="neuron")
    assert model[0].weight_orig is model[2].weight_orig
    assert torch.equal(model[0].weight_mask, model[2].weight_mask) and model[0].weight_mask.sum() < 100
    prune.magnitude(model, 0.5)  # second round: still one mask, a subset
    assert torch.equal(model[0].weight_mask, model[2].weight_mask)
    torch_prune.remove(model[0], "weight")
    torch_prune.remove(model[2], "weight")
    assert model[0].weight is model[2].weight and (model[0].weight == 0).sum() > 50


def test_frozen_parameters_stay_frozen_and_gradients_are_masked():
    model = make_mlp()
    model[0].requires_grad_(False)
    prune.sap(model, scope="layer")
    assert not model[0].weight_orig.requires_grad and model[2].weight_orig.requires_grad
    model(torch.randn(5, 12)).square().sum().backward()
    assert model[0].weight_orig.grad is None
    pruned = ~model[2].weight_mask.bool()
    assert pruned.any() and (model[2].weight_orig.grad[pruned] == 0).all()
    assert (model[2].weight_orig.grad[~pruned] != 0).any()


def test_prune_remove_and_sparsify_work_afterwards():
    model = make_mlp()
    prune.sap(model)
    x = torch.randn(7, 12)
    y = model(x)
    twin = make_mlp()  # (a pruned module cannot be deep-copied: its weight is a computed tensor)
    prune.sap(twin)
    sparse = lqkernels.sparsify_(twin)
    torch.testing.assert_close(sparse(x), y, rtol=1e-5, atol=1e-5)
    for m in model:
        if isinstance(m, nn.Linear):
            torch_prune.remove(m, "weight")
            assert not m._forward_pre_hooks and "weight" in m._parameters
    torch.testing.assert_close(model(x), y)
    state = model.state_dict()
    assert set(state) == set(make_mlp().state_dict())


def test_include_narrows_the_set():
    model = make_mlp()
    prune.sap(model, include=lambda module, fqn: fqn == "2")
    assert hasattr(model[2], "weight_mask") and not hasattr(model[0], "weight_mask")


# ---- bad input leaves the model as it was ---------------------------------------------------------
def structure(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(list(m._parameters), list(m._buffers), len(m._forward_pre_hooks)) for m in model.modules()])


def assert_same(model, snap):
    state, layout = structure(model)
    assert layout == snap[1]
    assert state.keys() == snap[0].keys() and all(torch.equal(state[k], snap[0][k]) for k in state)


@pytest.mark.parametrize("call, error, message", [
    (lambda m: prune.sap(m, p=1.0, q=1.0), ValueError, "p < q, got p=1, q=1"),
    (lambda m: prune.sap(m, p=2.0, q=1.0), ValueError, "p < q, got p=2, q=1"),
    (lambda m: prune.sap(m, q=0.0), ValueError, "q must be finite and in \\(0, inf\\), got 0.0"),
    (lambda m: prune.sap(m, eta=-1.0), ValueError, "eta must be finite and in \\[0, inf\\), got -1.0"),
    (lambda m: prune.sap(m, beta=0.0), ValueError, "beta must be finite and in \\(0, 1\\], got 0.0"),
    (lambda m: prune.sap(m, beta=1.5), ValueError, "beta must be finite and in \\(0, 1\\], got 1.5"),
    (lambda m: prune.sap(m, scope="row"), ValueError, "scope must be one of .* got 'row'"),
    (lambda m: prune.lq_neuron(m, q=1.0), ValueError, "q must be finite and in \\(0, 1\\), got 1.0"),
    (lambda m: prune.magnitude(m, 1.5), ValueError, "amount must be finite and in \\[0, 1\\], got 1.5"),
    (lambda m: prune.magnitude(m, -0.1), ValueError, "amount must be finite and in \\[0, 1\\], got -0.1"),
    (lambda m: prune.magnitude(m, "half"), TypeError, "amount must be a number, got 'half'"),
    (lambda m: prune.sap(m, include=lambda mod, fqn: False), ValueError, "no prunable weight chosen by include"),
    (lambda m: prune.compressibility(m, q=1.5), ValueError, "q must be finite and in \\(0, 1\\), got 1.5"),
])
def test_bad_input_raises_and_leaves_model(call, error, message):
    model = make_mlp()
    prune.magnitude(model, 0.2)
    snap = structure(model)
    with pytest.raises(error, match=message):
        call(model)
    assert_same(model, snap)


def test_no_prunable_weight():
    with pytest.raises(ValueError, match="no prunable weight"):
        prune.sap(nn.Sequential(nn.ReLU(), nn.LayerNorm(4)))
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        prune.sap("model")


def test_failure_midway_restores(monkeypatch):
    model = make_mlp()
    snap = structure(model)
    calls = []
    real = torch_prune.custom_from_mask

    def flaky(module, name, mask):
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(module, name, mask)

    monkeypatch.setattr(torch_prune, "custom_from_mask", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        prune.sap(model)
    assert_same(model, snap)
    assert not hasattr(model[0], "weight_mask") and isinstance(model[0].weight, nn.Parameter)


# ---- a step writes into the old mask and weight only when nothing else sees them ---------------------
def linears(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def pointers(model):
    return [(m.weight_mask.data_ptr(), m.weight.data_ptr()) for m in linears(model)]


def test_step_reuses_the_memory_nothing_else_sees():
    model = heavy_tailed_(make_mlp())
    torch_prune.custom_from_mask(model[0], "weight", torch.rand(24, 12) < 0.7)  # torch's own install:
    prune.sap(model)  # its `weight` carries a graph that saved the mask, dropped before the write
    twin = copy.deepcopy(model)
    before = pointers(model)
    for _ in range(2):
        prune.sap(model, scope="neuron")
        held = [(m.weight_mask, m.weight) for m in linears(twin)]  # twin's step must allocate
        held_at = pointers(twin)
        prune.sap(twin, scope="neuron")
        assert pointers(model) == before
        assert all(a != b and c != d for (a, c), (b, d) in zip(pointers(twin), held_at))
        assert all(not torch.equal(m.weight_mask, mask) for m, (mask, _) in zip(linears(twin), held))
        assert_same(model, structure(twin))
        for m in linears(model):
            assert torch.equal(m.weight, m.weight_orig * m.weight_mask) and m.weight.grad_fn is None


@pytest.mark.parametrize("hold", [
    lambda m: m.weight_mask,
    lambda m: m.weight,
    lambda m: m.weight_mask.view(-1),
    lambda m: m.weight.data,
    lambda m: m.weight_mask.detach(),
    lambda m: m.weight_mask.numpy(),
    lambda m: m.weight[1:],
    lambda m: m.state_dict(),
], ids=["mask", "weight", "mask view", "weight .data", "mask detach", "mask numpy", "weight slice", "state_dict"])
def test_step_never_writes_into_what_the_user_holds(hold):
    model = heavy_tailed_(make_mlp())
    prune.sap(model)
    twin = copy.deepcopy(model)
    held = hold(model[2])
    value = copy.deepcopy(held)
    before = pointers(model)
    prune.sap(model, scope="neuron")
    prune.sap(twin, scope="neuron")
    assert_same(model, structure(twin))
    if isinstance(held, dict):
        assert all(torch.equal(held[k], value[k]) for k in value)
    else:
        assert (held == value).all()
    after = pointers(model)
    assert after[0] == before[0] and after[2] == before[2]  # the other layers' memory is reused
    assert after[1][0] != before[1][0] and after[1][1] != before[1][1]


def test_step_allocates_for_shared_memory():
    # Other processes see a shared tensor (share_memory(), every CUDA tensor): never written.
    model = heavy_tailed_(make_mlp())
    prune.sap(model)
    model.share_memory()
    before = pointers(model)
    prune.sap(model)
    assert all(a[0] != b[0] and a[1] != b[1] for a, b in zip(pointers(model), before))


def test_step_keeps_a_live_graph_valid():
    # A loss computed before the step saved the old weight: its backward still works, with the
    # gradients of the old mask.
    model = heavy_tailed_(make_mlp())
    prune.sap(model)
    twin = copy.deepcopy(model)
    x = torch.randn(5, 12)
    loss = model(x).square().sum()
    twin(x).square().sum().backward()
    prune.sap(model, scope="neuron")
    loss.backward()
    for m, t in zip(linears(model), linears(twin)):
        torch.testing.assert_close(m.weight_orig.grad, t.weight_orig.grad)
    assert not torch.equal(model[2].weight_mask, twin[2].weight_mask)


def test_failure_midway_leaves_reusable_memory_unwritten(monkeypatch):
    # Layer 0 (pruned, memory reusable) comes before layer 2 (first pruning, fails) in the model,
    # but its in-place write comes after every step that can fail: the restore is exact.
    model = heavy_tailed_(make_mlp())
    prune.sap(model, include=lambda module, fqn: fqn == "0")
    snap = structure(model)

    def fail(module, name, mask):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch_prune, "custom_from_mask", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        prune.sap(model)
    assert_same(model, snap)


def test_step_without_torch_counters_allocates(monkeypatch):
    model = heavy_tailed_(make_mlp())
    prune.sap(model)
    twin = copy.deepcopy(model)
    before = pointers(model)
    monkeypatch.setattr(prune, "_SOLE_OWNER", None)
    prune.sap(model)
    prune.sap(twin)
    assert_same(model, structure(twin))
    assert all(a != b for a, b in zip(pointers(model), before))


# ---- compressibility report -------------------------------------------------------------------------
def test_compressibility_report(tmp_path):
    model = heavy_tailed_(make_mlp())
    prune.magnitude(model, 0.4, scope="neuron")
    report = prune.compressibility(model, scope="neuron", tolerance=0.5)
    targets = prune.prunable_weights(model)
    assert [r["layer"] for r in report.layers] == [name for name, _, _ in targets]
    for row, (name, w, s) in zip(report.layers, targets):
        assert row["survivors"] == int(s.sum()) and row["params"] == w.numel()
        assert row["pqi"] == ops.pq_index(w, 0.5, 1.0, mask=s).item()
        assert row["lq_norm"] == ops.lq_norm(w, 0.5, mask=s).item()
        assert row["gini"] == ops.gini(w, mask=s).item()
        assert row["keep_ratio"] == pytest.approx(1 - row["pqi"], rel=1e-12)
        assert row["keep_pqi"] == math.ceil(row["survivors"] * (1 - row["pqi"]) - 1e-6)
        assert row["keep_eps"] <= row["survivors"]
    assert len(report.neurons) == sum(w.shape[0] for _, w, _ in targets)
    n0 = report.neurons[0]
    w0, s0 = targets[0][1], targets[0][2]
    assert n0["pqi"] == ops.pq_index(w0[0], mask=s0[0]).item() and n0["survivors"] == int(s0[0].sum())
    assert report.total["layer"] == "all weights" and report.total["survivors"] == sum(r["survivors"] for r in report.layers)
    text = str(report)
    assert "0.weight" in text and "all weights" in text and "Per neuron" in text
    report.to_csv(tmp_path / "r.csv")
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("scope,layer,neuron") and len(lines) == 1 + len(report.rows())


# ---- prune–retrain loop ------------------------------------------------------------------------
@pytest.fixture
def regression():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(128, 12, generator=g)
    teacher = torch.randn(12, 3, generator=g) * (torch.rand(12, 1, generator=g) < 0.5)
    return x, x @ teacher


def trainer(data, steps=15, log=None):
    x, y = data

    def train_fn(model):
        if log is not None:
            log.append({n: t.detach().clone() for n, t in model.named_parameters()})
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()

    def eval_fn(model):
        with torch.no_grad():
            return {"mse": nn.functional.mse_loss(model(x), y).item(), "one": 1}
    return train_fn, eval_fn


@pytest.mark.parametrize("method, scope", [("sap", "neuron"), ("sap", "global"), ("lq_neuron", "neuron"),
                                           ("lt", "layer"), ("os", "global")])
def test_iterative_history(method, scope, regression, tmp_path):
    model = make_mlp()
    train_fn, eval_fn = trainer(regression)
    history = prune.iterative(model, train_fn, eval_fn, method=method, rounds=3, scope=scope, progress=False)
    assert [r["round"] for r in history.rounds] == [0, 1, 2, 3]
    left = [r["remaining_total"] for r in history.rounds]
    assert left[0] == 1 and all(b < a for a, b in zip(left, left[1:]))
    assert set(history.rounds[1]["remaining"]) == set(history.rounds[1]["pqi"]) == {"0.weight", "2.weight", "4.weight"}
    assert history.rounds[-1]["metrics"]["one"] == 1.0 and "mse" in history.rounds[-1]["metrics"]
    final = {name: s for name, _, s in prune.prunable_weights(model)}
    for name, frac in history.rounds[-1]["remaining"].items():
        assert frac == int(final[name].sum()) / final[name].numel()
    if method in ("lt", "os"):  # fixed 20% per round of survivors / 0.8^t of the dense ranking
        total = sum(s.numel() for s in final.values())
        assert abs(left[-1] - 0.8 ** 3) < (len(final) + 1) / total * 3
    history.save(tmp_path / "h.json")
    assert prune.History.load(tmp_path / "h.json").rounds == json.loads(json.dumps(history.rounds))
    history.plot(tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_iterative_rounds_reuse_the_mask_memory(regression):
    # Nothing in the loop keeps a mask: from round 2 on, each step writes into the last one's.
    model = make_mlp()
    train_fn, eval_fn = trainer(regression)
    seen = []

    def train_and_look(m):
        train_fn(m)
        seen.append([layer.weight_mask.data_ptr() for layer in linears(m)] if hasattr(m[0], "weight_mask") else None)

    prune.iterative(model, train_and_look, eval_fn, method="sap", rounds=3, progress=False)
    assert seen[0] is None and seen[1] == seen[2] == seen[3]


@pytest.mark.parametrize("rewind", ["init", "none", "state_dict"])
def test_iterative_rewind(rewind, regression):
    model = make_mlp()
    init = {n: t.detach().clone() for n, t in model.named_parameters()}
    given = {n: torch.full_like(t, 0.01) for n, t in make_mlp().state_dict().items()}
    log = []
    train_fn, eval_fn = trainer(regression, log=log)
    prune.iterative(model, train_fn, eval_fn, method="lt", rounds=2, scope="layer", progress=False,
                    rewind=given if rewind == "state_dict" else rewind)
    before_round1 = log[1]
    if rewind == "init":
        assert torch.equal(before_round1["0.weight_orig"], init["0.weight"])
        assert torch.equal(before_round1["0.bias"], init["0.bias"])
    elif rewind == "state_dict":
        assert (before_round1["0.weight_orig"] == 0.01).all()
    else:
        assert not torch.equal(before_round1["0.weight_orig"], init["0.weight"])


def test_iterative_masks_gradients_and_progress(regression, capsys):
    model = make_mlp()
    train_fn, eval_fn = trainer(regression)
    prune.iterative(model, train_fn, eval_fn, method="sap", rounds=1, rewind="none", progress=True)
    assert "sap (neuron)" in capsys.readouterr().err
    for m in model:
        if isinstance(m, nn.Linear):
            assert (m.weight[~m.weight_mask.bool()] == 0).all()
    frozen = {n: t.detach().clone() for n, t in model.named_parameters()}
    train_fn(model)  # SGD: pruned originals get zero gradient, so they do not move
    for m, name in ((model[0], "0"), (model[2], "2")):
        pruned = ~m.weight_mask.bool()
        assert torch.equal(m.weight_orig[pruned], frozen[f"{name}.weight_orig"][pruned])
    prune.iterative(make_mlp(), train_fn, eval_fn, rounds=1, progress=False)
    assert capsys.readouterr().err == ""


def test_iterative_failure_restores_model(regression):
    model = make_mlp()
    prune.magnitude(model, 0.1)
    snap = structure(model)
    train_fn, eval_fn = trainer(regression)
    calls = []

    def failing(m):
        calls.append(1)
        train_fn(m)
        if len(calls) == 2:
            raise KeyError("data loader died")

    with pytest.raises(RuntimeError, match="train_fn raised KeyError in round 1"):
        prune.iterative(model, failing, eval_fn, rounds=3, progress=False)
    assert_same(model, snap)
    with pytest.raises(TypeError, match="train_fn and eval_fn must be callables"):
        prune.iterative(model, None, eval_fn)
    with pytest.raises(ValueError, match="method must be one of .* got 'prune'"):
        prune.iterative(model, train_fn, eval_fn, method="prune")
    with pytest.raises(ValueError, match="rewind state_dict has no entry for '0.bias'"):
        prune.iterative(model, train_fn, eval_fn, rewind={"0.weight": torch.zeros(24, 12)}, progress=False)
    assert_same(model, snap)


def test_pruned_model_deep_copies_and_still_trains():
    # Masks are installed under no_grad: deepcopy works right after each step (torch's own prune
    # leaves a non-leaf `weight` there), and forward still sends gradients to weight_orig only
    # where the mask keeps weights.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    for _ in range(2):
        prune.sap(model)
        twin = copy.deepcopy(model)
        x = torch.randn(4, 8)
        assert torch.equal(twin(x), model(x))
    model(torch.randn(4, 8)).square().sum().backward()
    grad, mask = model[0].weight_orig.grad, model[0].weight_mask
    assert grad is not None and grad[mask == 1].abs().sum() > 0
    assert torch.equal(grad[mask == 0], torch.zeros(int((mask == 0).sum())))


def test_remaining_fraction_counts_kept_weights():
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    assert prune.remaining_fraction(model) == 1.0
    prune.magnitude(model, 0.5, scope="layer")
    kept = sum(int(m.weight_mask.sum()) for m in (model[0], model[2]))
    assert prune.remaining_fraction(model) == kept / (32 + 8)
