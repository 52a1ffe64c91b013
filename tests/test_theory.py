"""lqkernels.theory: the guarantees of docs/method.md §2 hold on random inputs (property tests with
float64 oracles written with plain torch sorts), and bad arguments raise naming the value."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lqkernels import ops, prune, theory

PQ_PAIRS = [(0.5, 1.0), (1.0, 2.0), (0.3, 0.7), (0.9, 1.0), (0.1, 1.5)]
magnitudes = st.one_of(st.just(0.0), st.floats(1e-3, 1e3))
vectors = st.lists(st.tuples(magnitudes, st.booleans()), min_size=1, max_size=40)


# ---- PQI values and properties (method.md §1), through lqkernels.ops --------------------------
@pytest.mark.parametrize("w, expected", [([0, 1, 3, 5], 0.31438), ([0, 2, 3, 4], 0.26430), ([1, 3, 5], 0.08579),
                                         ([1.5, 3.5, 5.5], 0.06032), ([0, 1, 3, 5, 0, 1, 3, 5], 0.31438)])
def test_pqi_paper_values(w, expected):
    # method.md's values are good to ~1e-4 (e.g. [1,3,5] gives 0.085844; it says 0.08579)
    w = torch.tensor(w, dtype=torch.float64)
    assert ops.pq_index(w, 0.5, 1.0).item() == pytest.approx(expected, abs=2e-4)
    assert ops.pq_index(2 * w, 0.5, 1.0).item() == pytest.approx(expected, abs=2e-4)  # scaling
    assert ops.pq_index(-w, 0.5, 1.0).item() == pytest.approx(expected, abs=2e-4)     # sign


def test_pqi_extremes_and_survivors():
    d = 7
    assert ops.pq_index(torch.full((d,), 3.0, dtype=torch.float64)).item() == pytest.approx(0, abs=1e-12)
    one_hot = torch.zeros(d, dtype=torch.float64)
    one_hot[2] = 4
    assert ops.pq_index(one_hot).item() == pytest.approx(1 - d ** (1 - 2), rel=1e-12)
    # d counts survivors: masking the zeros of [0,1,3,5] gives PQI of [1,3,5]
    w = torch.tensor([0.0, 1, 3, 5], dtype=torch.float64)
    assert ops.pq_index(w, mask=w != 0).item() == pytest.approx(ops.pq_index(w[1:]).item(), rel=1e-12)


# ---- Theorem 2 ------------------------------------------------------------------------------
def true_min_keep(w: torch.Tensor, p: float, eta: float) -> int:
    """Smallest r with Σ_{tail}|w|^p <= η Σ_{top r}|w|^p (plain sort, float64, no slack)."""
    a = w.abs().double().sort(descending=True).values.pow(p)
    zero = torch.zeros(1, dtype=a.dtype)
    head = torch.cat([zero, a.cumsum(0)])                   # head[r] = Σ_{i<r}
    tail = torch.cat([a.flip(0).cumsum(0).flip(0), zero])   # tail[r] = Σ_{i>=r}, exactly 0 at r = d
    ok = tail <= eta * head
    return int(ok.nonzero()[0, 0])


@settings(max_examples=200, deadline=None)
@given(vectors, st.sampled_from(PQ_PAIRS), st.sampled_from([0.0, 1e-3, 0.01, 0.1, 0.5, 2.0]))
def test_theorem2_bound_never_above_true_min_keep(entries, pq, eta):
    p, q = pq
    w = torch.tensor([v for v, _ in entries], dtype=torch.float64)
    mask = torch.tensor([s for _, s in entries])
    for m in (None, mask):
        survivors = w if m is None else w[m]
        r_true = true_min_keep(survivors, p, eta)
        bound = theory.pqi_keep_bound(w, p, q, eta, mask=m).item()
        assert bound <= r_true * (1 + 1e-9) + 1e-9
        assert theory.pqi_keep_count(w, p, q, eta, mask=m).item() <= r_true


def test_theorem2_formula_and_float32_one_hot():
    w = torch.randn(5, 300, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for eta in (0.0, 0.1):
        bound = theory.pqi_keep_bound(w, 0.5, 1.0, eta, dim=1)
        expected = 300 * (1 + eta) ** -2 * (1 - ops.pq_index(w, 0.5, 1.0, dim=1))  # (0.5, 1): d(1+η)^-2(1-PQI)
        torch.testing.assert_close(bound, expected, rtol=1e-10, atol=0)
    # a one-hot float32 row: the bound is exactly 1 in exact arithmetic; the count must not round up
    x = torch.zeros(3, 1000)
    x[:, 7] = torch.tensor([1e-20, 3.7, 1e20])
    assert theory.pqi_keep_count(x, 0.9, 1.0, 0.0, dim=1).tolist() == [1, 1, 1]
    assert theory.pqi_keep_bound(torch.zeros(4), 0.5, 1.0).item() == 0  # all-zero: nothing to keep


# ---- best s-term approximation --------------------------------------------------------------
def tail_norm(w: torch.Tensor, s: int, r: float) -> float:
    a = w.abs().double().sort(descending=True).values[s:]
    return a.max().item() if (r == math.inf and len(a)) else (a.pow(r).sum().pow(1 / r).item() if len(a) else 0.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(magnitudes, min_size=1, max_size=50), st.floats(0.1, 0.95), st.sampled_from([1.0, 2.0, math.inf]),
       st.integers(0, 60))
def test_s_term_bound_never_violated(values, q, r, s):
    w = torch.tensor(values, dtype=torch.float64)
    s = min(s, len(values))
    assert tail_norm(w, s, r) <= theory.s_term_bound(w, s, q, r).item() * (1 + 1e-9) + 1e-12


def test_s_term_rate_per_row():
    w = torch.randn(6, 200, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    s = torch.arange(6) * 30
    bound = theory.s_term_bound(w, s, 0.5, 2.0, dim=1)
    torch.testing.assert_close(bound[1:], ops.lq_norm(w, 0.5, 1)[1:] * s[1:].double() ** (0.5 - 2.0))
    assert bound[0] == ops.lq_norm(w[0], 0.5)  # s = 0: the whole vector is the tail, ‖w‖_r <= ‖w‖_q


@pytest.mark.parametrize("input_norm, r", [("inf", 1.0), ("2", 2.0)])
@pytest.mark.parametrize("tolerance", [0.05, 0.5, 5.0])
def test_keep_count_for_tolerance_is_sufficient(input_norm, r, tolerance):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(16, 64, generator=g, dtype=torch.float64) * torch.rand(16, 64, generator=g, dtype=torch.float64) ** 4
    L, B = 1.5, 2.0
    s = theory.keep_count_for_tolerance(w, tolerance, 0.5, 1, lipschitz=L, input_bound=B, input_norm=input_norm)
    assert s.dtype == torch.int64 and ((0 <= s) & (s <= 64)).all()
    for row, k in zip(w, s.tolist()):  # reference: the actual tail with the k largest kept
        assert L * B * tail_norm(row, k, r) <= tolerance * (1 + 1e-9)
    looser = theory.keep_count_for_tolerance(w, tolerance * 10, 0.5, 1, lipschitz=L, input_bound=B, input_norm=input_norm)
    assert (looser <= s).all()


def test_allocate_two_layer():
    g = torch.Generator().manual_seed(4)
    w, a = torch.randn(10, 50, generator=g), torch.randn(3, 10, generator=g)
    counts = theory.allocate_two_layer(a, w, 120, q=0.5)
    assert counts.sum() == 120 and ((counts >= 0) & (counts <= 50)).all()
    c = (a.abs().sum(0).double() * ops.lq_norm(w, 0.5, 1).double()) ** (1 / (1 + (1 / 0.5 - 1)))
    ideal = c / c.sum() * 120
    assert (counts.double() - ideal).abs().max() < 1 + 1e-9  # no caps hit: largest-remainder rounding
    capped = theory.allocate_two_layer(a, w, 450)
    assert capped.sum() == 450 and (capped <= 50).all()
    assert theory.allocate_two_layer(a, w, 10 ** 6).tolist() == [50] * 10
    mask = torch.rand(10, 50, generator=g) < 0.3
    masked = theory.allocate_two_layer(a, w, 100, mask=mask)
    assert masked.sum() == min(100, int(mask.sum())) and (masked <= mask.sum(1)).all()
    assert theory.allocate_two_layer(torch.ones(4), torch.ones(4, 6), 8).tolist() == [2, 2, 2, 2]


@pytest.mark.parametrize("input_norm", ["inf", "2"])
def test_certify_bounds_actual_output_change(input_norm):
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 4))
    prune.magnitude(net, 0.6, scope="layer")
    cert = theory.certify(net, input_bound=2.0, input_norm=input_norm)
    assert 0 < cert.bound <= cert.sterm_bound
    x = torch.rand(2000, 8, generator=g) * 2 - 1
    x = 2.0 * (x.sign() if input_norm == "inf" else x / x.norm(dim=1, keepdim=True))  # on the ball's boundary
    dense = nn.Sequential(*[nn.Linear(m.in_features, m.out_features) if isinstance(m, nn.Linear) else m for m in net])
    with torch.no_grad():
        for d, m in zip(dense, net):
            if isinstance(m, nn.Linear):
                d.weight.copy_(m.weight_orig)
                d.bias.copy_(m.bias)
        change = (dense(x) - net(x)).abs().amax(1) if input_norm == "inf" else (dense(x) - net(x)).norm(dim=1)
    assert change.max().item() <= cert.bound
    assert [layer["name"] for layer in cert.layers] == ["0", "2", "4"]
    with pytest.warns(UserWarning, match="certify: nothing is pruned: the model has no pruning masks"):
        unpruned = theory.certify(dense, input_bound=2.0, input_norm=input_norm)
    assert unpruned.bound == 0 and unpruned.sterm_bound == 0 and unpruned.pruned == 0
    assert cert.pruned == sum(int((m.weight_mask == 0).sum()) for m in net if isinstance(m, nn.Linear))
    with pytest.warns(UserWarning, match="nothing is pruned: the masks given keep every weight"):
        theory.certify(dense, {"0": torch.ones(32, 8, dtype=torch.bool)}, 2.0, input_norm=input_norm)
    explicit = theory.certify(dense, {"0": net[0].weight_mask.bool(), "2.weight": net[2].weight_mask.bool(),
                                      "4": net[4].weight_mask.bool()}, 2.0, input_norm=input_norm)
    assert explicit.bound == pytest.approx(cert.bound, rel=1e-12)


def test_certify_rejects_what_it_cannot_bound():
    with pytest.raises(TypeError, match="Conv2d"):
        theory.certify(nn.Sequential(nn.Conv2d(1, 1, 3), nn.Flatten(), nn.Linear(4, 1)))
    with pytest.raises(ValueError, match="lipschitz=1 is below .* 1.13"):
        theory.certify(nn.Sequential(nn.Linear(3, 3), nn.GELU(), nn.Linear(3, 1)))
    with pytest.raises(ValueError, match="mask of '0'"):
        theory.certify(nn.Sequential(nn.Linear(3, 3)), {"0": torch.ones(2, 2, dtype=torch.bool)})


@pytest.mark.parametrize("call, message", [
    (lambda w: theory.pqi_keep_bound(w, 1.0, 1.0), "p < q, got p=1, q=1"),
    (lambda w: theory.pqi_keep_bound(w, 2.0, 1.0), "p < q, got p=2, q=1"),
    (lambda w: theory.pqi_keep_bound(w, 0.0, 1.0), "p must be finite and in \\(0, inf\\), got 0.0"),
    (lambda w: theory.pqi_keep_bound(w, 0.5, -1.0), "q must be finite and in \\(0, inf\\), got -1.0"),
    (lambda w: theory.pqi_keep_bound(w, 0.5, 1.0, eta=-0.1), "eta must be finite and in \\[0, inf\\), got -0.1"),
    (lambda w: theory.s_term_bound(w, 3, q=2.0, r=1.0), "q < r, got q=2, r=1"),
    (lambda w: theory.s_term_bound(w, -1), "s must be >= 0, got -1"),
    (lambda w: theory.keep_count_for_tolerance(w, 0.0), "tolerance must be finite and in \\(0, inf\\), got 0.0"),
    (lambda w: theory.keep_count_for_tolerance(w, 1.0, q=1.0), "q must be finite and in \\(0, 1\\), got 1.0"),
    (lambda w: theory.keep_count_for_tolerance(w, 1.0, input_norm="1"), "input_norm must be 'inf' or '2', got '1'"),
    (lambda w: theory.allocate_two_layer(torch.ones(3), w, 5), "a has shape \\(3,\\)"),
])
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call(torch.randn(4, 5))
    with pytest.raises(TypeError, match="p must be a number, got '0.5'"):
        theory.pqi_keep_bound(torch.ones(3), "0.5")
