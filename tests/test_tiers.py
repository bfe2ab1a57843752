"""The K-tier placement: the layered min-cut and the contiguous DP against brute force on random DAGs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgesplit.plan.tiers import TierProblem, best_contiguous, best_contiguous_sum, brute_force_tiers, min_cost_tiers


@st.composite
def tier_problems(draw, max_nodes: int = 9, max_tiers: int = 3) -> TierProblem:  # noqa: ANN001
    """A random DAG: an input, up to ``max_nodes`` compute nodes reading earlier values, an output node."""
    n = draw(st.integers(1, max_nodes))
    k = draw(st.integers(2, max_tiers))
    names = ["x", *[f"v{i}" for i in range(n)], "out"]
    consumers: dict[str, list[str]] = {name: [] for name in names}
    for i in range(1, n + 1):
        reads = draw(st.sets(st.integers(0, i - 1), min_size=1, max_size=3))
        for j in reads:
            consumers[names[j]].append(names[i])
    consumers[names[n]].append("out")
    for j in range(1, n):  # some other values are also read by the output (fan-out to the end)
        if draw(st.booleans()) and not consumers[names[j]]:
            consumers[names[j]].append("out")
    cost = st.floats(0, 50, allow_nan=False, allow_infinity=False)
    maybe_inf = st.one_of(cost, cost, cost, st.just(math.inf))
    node_cost = {name: [draw(maybe_inf) for _ in range(k)] for name in names[1:-1]}
    transfer_cost = {name: [draw(maybe_inf) for _ in range(k - 1)] for name in names[:-1]}
    return TierProblem(nodes=names, consumers=consumers, node_cost=node_cost, transfer_cost=transfer_cost, tiers=k,
                       on_first=frozenset({"x"}), on_last=frozenset({"out"}))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tier_problems())
def test_layered_min_cut_equals_brute_force(problem: TierProblem) -> None:
    best, _ = brute_force_tiers(problem)
    cost, tier_of = min_cost_tiers(problem)
    if math.isinf(best):
        assert math.isinf(cost)
        return
    assert problem.is_valid(tier_of)
    assert cost == pytest.approx(best, rel=1e-6, abs=1e-6)
    assert problem.cost(tier_of) == pytest.approx(cost)


def test_layered_min_cut_forwards_a_skip_across_a_middle_tier() -> None:
    """x → a → b → out with a skip a → out: b is cheap only on tier 1, a cheap only on tier 0, out on tier 2; the
    skip crosses links 0 and 1 and is paid on both (forwarded through tier 1)."""
    problem = TierProblem(
        nodes=["x", "a", "b", "out"], consumers={"x": ["a"], "a": ["b", "out"], "b": ["out"], "out": []},
        node_cost={"a": [1, 9, 9], "b": [9, 1, 9], "out": [0, 0, 0]},
        transfer_cost={"x": [100, 100], "a": [2, 3], "b": [5, 7]}, tiers=3,
        on_first=frozenset({"x"}), on_last=frozenset({"out"}))
    cost, tier_of = min_cost_tiers(problem)
    assert tier_of == {"x": 0, "a": 0, "b": 1, "out": 2}
    assert cost == pytest.approx(1 + 1 + 2 + 3 + 7)
    assert cost == brute_force_tiers(problem)[0]


def test_a_tier_that_is_not_allowed_is_never_used() -> None:
    problem = TierProblem(nodes=["x", "a", "out"], consumers={"x": ["a"], "a": ["out"], "out": []},
                          node_cost={"a": [5, 0, math.inf]}, transfer_cost={"x": [1, 1], "a": [1, 1]}, tiers=3,
                          on_first=frozenset({"x"}), on_last=frozenset({"out"}))
    cost, tier_of = min_cost_tiers(problem)
    assert tier_of["a"] == 1 and cost == pytest.approx(0 + 1 + 1)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 4), st.integers(2, 7), st.booleans(), st.randoms(use_true_random=False))
def test_contiguous_dp_equals_brute_force_over_nested_positions(tiers: int, count: int, bottleneck: bool,
                                                                 rng) -> None:  # noqa: ANN001
    values = np.array([[rng.uniform(0, 10) for _ in range(count)] for _ in range(count)])
    segments = []
    for _ in range(tiers):
        matrix = values + rng.uniform(0, 5)
        matrix = np.where(np.arange(count)[:, None] <= np.arange(count)[None, :], matrix, math.inf)
        if rng.random() < 0.3:
            matrix[rng.randrange(count), rng.randrange(count)] = math.inf  # a segment over a memory limit
        segments.append(matrix)
    links = [np.array([rng.uniform(0, 10) for _ in range(count)]) for _ in range(tiers - 1)]
    combine = max if bottleneck else (lambda a, b: a + b)
    best = math.inf
    for positions in itertools_nested(count, tiers - 1):
        bounds = [0, *positions, count - 1]
        total = segments[0][bounds[0], bounds[1]]
        for t in range(1, tiers):
            total = combine(total, links[t - 1][bounds[t]])
            total = combine(total, segments[t][bounds[t], bounds[t + 1]])
        best = min(best, total)
    cost, positions = best_contiguous(segments, links, bottleneck=bottleneck)
    assert cost == pytest.approx(best) if math.isfinite(best) else math.isinf(cost)
    if math.isfinite(best):
        assert list(positions) == sorted(positions) and len(positions) == tiers - 1


def itertools_nested(count: int, cuts: int):  # noqa: ANN201
    import itertools

    return itertools.combinations_with_replacement(range(count), cuts)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 4), st.integers(2, 9), st.randoms(use_true_random=False))
def test_the_linear_dp_equals_the_quadratic_one_on_prefix_sums(tiers: int, count: int, rng) -> None:  # noqa: ANN001
    """Segment costs that are differences of cumulative sums (no memory limits): the O(K·P) DP finds the same
    optimum as the O(K·P²) one, and its cuts cost what it says."""
    cumulative = [np.cumsum([0.0, *[rng.uniform(0, 10) for _ in range(count - 1)]]) for _ in range(tiers)]
    links = [np.array([rng.choice([rng.uniform(0, 10), math.inf]) for _ in range(count)]) for _ in range(tiers - 1)]
    upper = np.arange(count)[:, None] <= np.arange(count)[None, :]
    segments = [np.where(upper, c[None, :] - c[:, None], math.inf) for c in cumulative]
    expected, _ = best_contiguous(segments, links)
    cost, positions = best_contiguous_sum(cumulative, links)
    if math.isinf(expected):
        assert math.isinf(cost)
        return
    assert cost == pytest.approx(expected)
    bounds = [0, *positions, count - 1]
    total = sum(cumulative[t][bounds[t + 1]] - cumulative[t][bounds[t]] for t in range(tiers))
    total += sum(links[t - 1][bounds[t]] for t in range(1, tiers))
    assert total == pytest.approx(cost) and positions == sorted(positions)
