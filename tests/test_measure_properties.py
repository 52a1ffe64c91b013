"""The paper's properties of the PQ Index (method.md §1) as hypothesis property tests: the six
Hurley–Rickard sparsity properties (Robin Hood, scaling, rising tide, cloning, Bill Gates, babies),
its range and extremes, and Hoyer = √d/(√d − 1)·I_{1,2}. Run on the C++ kernel and the PyTorch
reference, in float64 (a few 1e-12 of slack for rounding)."""
from __future__ import annotations

import math

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")  # not on every machine (the GPU one, say)
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lqkernels import _backend, ops  # noqa: E402

INF = math.inf
PQ_PAIRS = ((0.5, 1.0), (1.0, 2.0), (0.3, INF))

NO_CPP = _backend.available("cpp", "cpu", "row_powsum")
PROPERTY_BACKENDS = [pytest.param("cpp", marks=pytest.mark.skipif(NO_CPP is not None, reason=str(NO_CPP))),
                     "torch"]
PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                             suppress_health_check=[HealthCheck.too_slow])
magnitudes = st.one_of(st.just(0.0), st.floats(0.01, 100.0))
signed = st.tuples(st.booleans(), magnitudes).map(lambda t: -t[1] if t[0] else t[1])
vectors = st.lists(signed, min_size=2, max_size=24).filter(lambda v: any(v))


def pqi(values, p, q, backend, mask=None) -> float:
    x = torch.tensor(values, dtype=torch.float64)
    return ops.pq_index(x, p, q, mask=mask, backend=backend).item()


def spread(values) -> bool:
    """Not all magnitudes equal, by a margin float64 resolves."""
    mags = [abs(v) for v in values]
    return max(mags) - min(mags) > 1e-2 * max(mags)


each_backend = pytest.mark.parametrize("backend", PROPERTY_BACKENDS)
each_pair = pytest.mark.parametrize("pq", PQ_PAIRS, ids=str)


@each_backend
@each_pair
@PROPERTY_SETTINGS
@given(v=vectors, i=st.integers(0, 23), j=st.integers(0, 23), share=st.floats(0.1, 1.0))
def test_property_robin_hood(backend, pq, v, i, j, share):
    # D1: moving wealth from a richer entry to a poorer one (without swapping them) lowers PQI.
    i, j = i % len(v), j % len(v)
    c = [abs(t) for t in v]
    assume(c[i] - c[j] > 1e-2 * max(c))
    alpha = share * (c[i] - c[j]) / 2
    poorer = list(c)
    poorer[i] -= alpha
    poorer[j] += alpha
    assert pqi(poorer, *pq, backend) < pqi(c, *pq, backend)


@each_backend
@each_pair
@PROPERTY_SETTINGS
@given(v=vectors, alpha=st.floats(1e-3, 1e3))
def test_property_scaling(backend, pq, v, alpha):
    # D2: PQI(α c) = PQI(c).
    assert pqi([alpha * t for t in v], *pq, backend) == pytest.approx(pqi(v, *pq, backend), abs=1e-12)


@each_backend
@each_pair
@PROPERTY_SETTINGS
@given(v=vectors, alpha=st.floats(1e-2, 1e2))
def test_property_rising_tide(backend, pq, v, alpha):
    # D3: adding the same α > 0 to every magnitude lowers PQI (unless all were equal).
    assume(spread(v))
    assert pqi([abs(t) + alpha for t in v], *pq, backend) < pqi(v, *pq, backend)


@each_backend
@each_pair
@PROPERTY_SETTINGS
@given(v=vectors, copies=st.integers(2, 4))
def test_property_cloning(backend, pq, v, copies):
    # D4: PQI(c ‖ c ‖ …) = PQI(c).
    assert pqi(v * copies, *pq, backend) == pytest.approx(pqi(v, *pq, backend), abs=1e-12)


@each_backend
@each_pair
@PROPERTY_SETTINGS
@given(v=vectors)
def test_property_bill_gates(backend, pq, v):
    # P1: one entry growing without bound makes the vector ever sparser, towards the maximum.
    c = [abs(t) for t in v]
    assume(sum(t > 0 for t in c) >= 2)
    i, total = c.index(max(c)), sum(c)
    sequence = []
    for beta in (1.0, 10.0, 100.0, 1000.0):
        richer = list(c)
        richer[i] += beta * total
        sequence.append(pqi(richer, *pq, backend))
    p, q = pq
    bound = 1 - len(c) ** (1 / q - 1 / p)
    assert all(a < b for a, b in zip(sequence, sequence[1:])), sequence
    assert sequence[-1] <= bound + 1e-12


@each_backend
@each_pair
@PROPERTY_SETTINGS
@given(v=vectors, babies=st.integers(1, 5))
def test_property_babies(backend, pq, v, babies):
    # P2: appending zeros makes the vector sparser, unless they are pruned (masked out).
    padded = v + [0.0] * babies
    assert pqi(padded, *pq, backend) > pqi(v, *pq, backend)
    mask = torch.tensor([True] * len(v) + [False] * babies)
    assert pqi(padded, *pq, backend, mask=mask) == pytest.approx(pqi(v, *pq, backend), abs=1e-12)


@each_backend
@each_pair
@PROPERTY_SETTINGS
@given(v=vectors)
def test_property_range_and_extremes(backend, pq, v):
    # 0 <= PQI <= 1 - d^{1/q-1/p}; the maximum exactly when one entry is non-zero; 0 iff all
    # magnitudes are equal.
    p, q = pq
    d = len(v)
    bound = 1 - d ** (1 / q - 1 / p)
    value = pqi(v, p, q, backend)
    assert 0 <= value <= bound + 1e-12
    one_hot = [0.0] * d
    one_hot[d // 2] = v[0] or 1.0
    assert pqi(one_hot, p, q, backend) == pytest.approx(bound, abs=1e-12)
    equal = [abs(v[0] or 1.0) * (-1) ** k for k in range(d)]
    assert pqi(equal, p, q, backend) == pytest.approx(0, abs=1e-12)
    if spread(v):
        assert value > 0


@pytest.mark.parametrize("backend", PROPERTY_BACKENDS)
@PROPERTY_SETTINGS
@given(v=vectors)
def test_property_hoyer_is_scaled_pq_index(backend, v):
    # Hoyer = √d / (√d − 1) · I_{1,2}.
    x = torch.tensor(v, dtype=torch.float64)
    root_d = math.sqrt(len(v))
    expected = root_d / (root_d - 1) * ops.pq_index(x, 1.0, 2.0, backend=backend).item()
    assert ops.hoyer(x, backend=backend).item() == pytest.approx(expected, abs=1e-12)
