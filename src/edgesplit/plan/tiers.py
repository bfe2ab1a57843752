"""The cheapest monotone placement of a DAG on a chain of K tiers: a layered minimum cut, a DP, and brute force.

A placement gives every node a tier ``0 ≤ t < K`` such that a node's tier is at least its inputs' tiers (tensors
flow only forward along the chain; the model's inputs are pinned to tier 0, its output to the last tier). It costs

    sum(node_cost[v][tier(v)]) + sum over values u, over links l with tier(u) ≤ l < max(tier(readers of u)):
                                     transfer_cost[u][l]

— a value crosses every link between its producer and its last reader once, and is forwarded through the tiers in
between. For K = 2 this is :mod:`edgesplit.plan.mincut`'s problem.

:func:`min_cost_tiers` solves it exactly with one s–t minimum cut on a layered graph (Ishikawa's construction,
PAMI 2003, with DADS's fan-out fix): node ``v`` has K − 1 copies ``v_0 … v_{K-2}``, and ``v_l`` lies on the source
side exactly when ``tier(v) ≤ l``. A chain ``source → v_{K-2} → … → v_0 → sink`` carries the node's cost on each
tier (exactly one of its edges is cut), infinite edges ``v_l → v_{l+1}`` keep the K − 1 cuts nested, and each
level ``l`` holds a copy of the two-tier graph's data edges with ``transfer_cost[·][l]``: level ``l`` *is* the
two-tier problem "tiers ≤ l against tiers > l", and the cut pays each link's transfers once.

:func:`best_contiguous` is the exact DP over placements that are contiguous in topological order (K − 1 nested
prefix cuts), for objectives that are not sums (a pipeline's slowest stage) and limits that are not
(a tier's peak memory). :func:`brute_force_tiers` tries every monotone assignment, to check both on small graphs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["TierProblem", "best_contiguous", "best_contiguous_sum", "brute_force_tiers", "min_cost_tiers"]

_FINITE_TOTAL = 5 * 10**8  # finite capacities are scaled to integers that add up to this (as in mincut.py)
_INFINITY = 2**30


@dataclass
class TierProblem:
    """Nodes in topological order (inputs first), each node's cost per tier, each value's cost per link."""

    nodes: Sequence[str]
    consumers: Mapping[str, Sequence[str]]
    node_cost: Mapping[str, Sequence[float]]  # K costs per node (math.inf: not allowed there); missing = 0
    transfer_cost: Mapping[str, Sequence[float]]  # K − 1 costs per value (math.inf: cannot cross that link)
    tiers: int
    on_first: frozenset[str] = field(default_factory=frozenset)  # pinned to tier 0 (the inputs)
    on_last: frozenset[str] = field(default_factory=frozenset)  # pinned to tier K − 1 (the output)

    def node_costs(self, name: str) -> Sequence[float]:
        return self.node_cost.get(name, (0.0,) * self.tiers)

    def cost(self, tier_of: Mapping[str, int]) -> float:
        """What ``tier_of`` costs (math.inf where it is not monotone or breaks a pin)."""
        if not self.is_valid(tier_of):
            return math.inf
        total = sum(self.node_costs(v)[tier_of[v]] for v in self.nodes)
        for value, readers in self.consumers.items():
            last = max((tier_of[r] for r in readers), default=tier_of[value])
            costs = self.transfer_cost.get(value)
            for link in range(tier_of[value], last):
                total += costs[link] if costs is not None else math.inf
        return total

    def is_valid(self, tier_of: Mapping[str, int]) -> bool:
        """Monotone (no reader on an earlier tier than what it reads), in range, and the pins respected."""
        if any(not 0 <= tier_of[v] < self.tiers for v in self.nodes):
            return False
        if any(tier_of[v] != 0 for v in self.on_first) or any(tier_of[v] != self.tiers - 1 for v in self.on_last):
            return False
        return all(tier_of[r] >= tier_of[value] for value, readers in self.consumers.items() for r in readers)


def min_cost_tiers(problem: TierProblem) -> tuple[float, dict[str, int]]:
    """The cheapest monotone placement and its cost, by one s–t minimum cut on the layered graph."""
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import breadth_first_order, maximum_flow

    names = list(problem.nodes)
    k = problem.tiers
    if k == 1:
        tier_of = dict.fromkeys(names, 0)
        return problem.cost(tier_of), tier_of
    levels = k - 1
    n = len(names)
    index = {name: i for i, name in enumerate(names)}
    source, sink = levels * n, levels * n + 1
    vertices = levels * n + 2

    def at(i: int, level: int) -> int:
        return level * n + i

    node_costs = np.array([list(problem.node_costs(name)) for name in names], dtype=float).reshape(n, k)
    nodes = np.arange(n)
    tails, heads, costs = [], [], []

    def edges(u: np.ndarray | int, v: np.ndarray | int, capacity: np.ndarray | float) -> None:
        u, v = np.broadcast_arrays(np.asarray(u, dtype=np.int64), np.asarray(v, dtype=np.int64))
        tails.append(u.ravel())
        heads.append(v.ravel())
        costs.append(np.broadcast_to(np.asarray(capacity, dtype=float), u.shape).ravel())

    edges(at(nodes, 0), sink, node_costs[:, 0])  # cut when tier(v) = 0
    for level in range(levels - 1):
        edges(at(nodes, level + 1), at(nodes, level), node_costs[:, level + 1])  # cut when tier(v) = level + 1
        edges(at(nodes, level), at(nodes, level + 1), math.inf)  # nested: tier(v) ≤ l implies tier(v) ≤ l + 1
    edges(source, at(nodes, levels - 1), node_costs[:, k - 1])  # cut when tier(v) = K − 1
    first = np.array([index[name] for name in problem.on_first], dtype=np.int64)
    last = np.array([index[name] for name in problem.on_last], dtype=np.int64)
    edges(source, at(first, 0), math.inf)
    edges(at(last, levels - 1), sink, math.inf)
    # the data edges of one level, as (value, reader) pairs; a value with several readers goes through an
    # auxiliary vertex per level (the value in flight over link l: paid once)
    value_of, reader_of, single_value, single_reader, single_cost = [], [], [], [], []
    multi_value, multi_cost, aux_reader, aux_index = [], [], [], []
    for value, readers in problem.consumers.items():
        readers = [index[r] for r in readers]
        if not readers:
            continue
        v = index[value]
        link_costs = list(problem.transfer_cost.get(value, (math.inf,) * levels))
        value_of += [v] * len(readers)
        reader_of += readers
        if len(readers) == 1:
            single_value.append(v)
            single_reader.append(readers[0])
            single_cost.append(link_costs)
        else:
            aux_index += [len(multi_value)] * len(readers)
            aux_reader += readers
            multi_value.append(v)
            multi_cost.append(link_costs)
    value_of, reader_of = np.array(value_of, dtype=np.int64), np.array(reader_of, dtype=np.int64)
    single_cost = np.array(single_cost, dtype=float).reshape(len(single_value), levels)
    multi_cost = np.array(multi_cost, dtype=float).reshape(len(multi_value), levels)
    aux_index, aux_reader = np.array(aux_index, dtype=np.int64), np.array(aux_reader, dtype=np.int64)
    for level in range(levels):
        edges(at(reader_of, level), at(value_of, level), math.inf)  # a reader on a tier ≤ l needs its inputs there
        edges(at(np.array(single_value, dtype=np.int64), level), at(np.array(single_reader, dtype=np.int64), level),
              single_cost[:, level])
        auxiliary = vertices + np.arange(len(multi_value))
        vertices += len(multi_value)
        edges(at(np.array(multi_value, dtype=np.int64), level), auxiliary, multi_cost[:, level])
        edges(auxiliary[aux_index], at(aux_reader, level), math.inf)
    tails, heads, costs = np.concatenate(tails), np.concatenate(heads), np.concatenate(costs)
    capacity = costs
    finite = np.isfinite(capacity)
    total = float(capacity[finite].sum())
    scale = _FINITE_TOTAL / total if total > 0 else 1.0
    scaled = np.where(finite, np.rint(np.where(finite, capacity, 0.0) * scale), _INFINITY).astype(np.int64)
    tail_array, head_array = tails, heads
    # every edge with its reverse (capacity 0 where absent), so the residual network is one subtraction
    all_tails = np.concatenate([tail_array, head_array])
    all_heads = np.concatenate([head_array, tail_array])
    all_caps = np.concatenate([scaled, np.zeros_like(scaled)])
    matrix = coo_array((all_caps, (all_tails, all_heads)), shape=(vertices, vertices)).tocsr()
    matrix.sum_duplicates()
    matrix.sort_indices()
    matrix.data = np.minimum(matrix.data, _INFINITY)
    data = matrix.data.astype(np.int32)
    graph = matrix.__class__((data, matrix.indices.astype(np.int32), matrix.indptr.astype(np.int32)),
                             shape=matrix.shape)
    flow = maximum_flow(graph, source, sink).flow
    residual = (graph.astype(np.int64) - flow.astype(np.int64)).tocsr()
    residual.data = (residual.data > 0).astype(np.int8)
    residual.eliminate_zeros()
    reached = np.zeros(vertices, dtype=bool)
    reached[breadth_first_order(residual, source, directed=True, return_predecessors=False)] = True
    on_source = reached[at(nodes[:, None], np.arange(levels)[None, :])]  # [v, l]: tier(v) ≤ l
    tiers = np.where(on_source.any(axis=1), np.argmax(on_source, axis=1), k - 1)
    tier_of = dict(zip(names, tiers.tolist()))
    return problem.cost(tier_of), tier_of


def brute_force_tiers(problem: TierProblem) -> tuple[float, dict[str, int]]:
    """The cheapest placement by trying every monotone assignment (for tests: K^n of them)."""
    names = list(problem.nodes)
    best: tuple[float, dict[str, int]] = (math.inf, {})
    for tiers in itertools.product(range(problem.tiers), repeat=len(names)):
        tier_of = dict(zip(names, tiers))
        cost = problem.cost(tier_of)
        if cost < best[0]:
            best = (cost, tier_of)
    return best


def best_contiguous(segment_cost: Sequence[np.ndarray], link_cost: Sequence[np.ndarray], *, bottleneck: bool = False,
                    ) -> tuple[float, list[int]]:
    """The best K − 1 nested cut positions ``p_1 ≤ … ≤ p_{K-1}`` among P candidate positions, by DP.

    ``segment_cost[t][a, b]`` is what tier t costs running the nodes between candidate positions a and b (P × P,
    math.inf where a > b or the segment breaks a limit; tier 0 starts at candidate 0, the last tier ends at
    candidate P − 1); ``link_cost[l][p]`` what link l costs carrying the values that cross position p. The total is
    their sum, or with ``bottleneck`` their maximum (a pipeline's slowest stage). Returns the total and the K − 1
    positions (indices into the candidates). O(K P²).
    """
    tiers = len(segment_cost)
    count = segment_cost[0].shape[0]
    combine = np.maximum if bottleneck else np.add
    # best[p] = the cost of tiers 0..t with tier t ending at candidate p
    best = segment_cost[0][0].astype(float).copy()
    choices: list[np.ndarray] = []
    for t in range(1, tiers):
        entering = combine(best, link_cost[t - 1])  # tiers 0..t-1 ended at a, and link t-1 carries position a
        totals = combine(entering[:, None], segment_cost[t])  # [a, b]: tier t runs a..b
        if t == tiers - 1:
            totals = totals[:, count - 1:count]
        choice = np.argmin(totals, axis=0)
        best = totals[choice, np.arange(totals.shape[1])]
        choices.append(choice)
    positions = [count - 1]
    for choice in reversed(choices):
        column = 0 if len(positions) == 1 else positions[-1]
        positions.append(int(choice[column]))
    positions = positions[1:][::-1]
    return float(best[0] if tiers > 1 else best[count - 1]), positions


def best_contiguous_sum(cumulative: Sequence[np.ndarray], link_cost: Sequence[np.ndarray]) -> tuple[float, list[int]]:
    """:func:`best_contiguous` for segment costs that are prefix differences, in O(K P): tier t running candidates
    a..b costs ``cumulative[t][b] − cumulative[t][a]`` (no limits), link l carrying position p ``link_cost[l][p]``.

    f_t(b) = min_{a ≤ b} (f_{t−1}(a) + link_{t−1}(a) − C_t(a)) + C_t(b): one running minimum per tier.
    """
    tiers = len(cumulative)
    count = len(cumulative[0])
    best = cumulative[0] - cumulative[0][0]
    choices: list[np.ndarray] = []
    order = np.arange(count)
    for t in range(1, tiers):
        entering = best + link_cost[t - 1] - cumulative[t]
        running = np.minimum.accumulate(entering)
        # the argmin of entering[: b + 1]: the last position where a new running minimum was set, at or before b
        choices.append(np.maximum.accumulate(np.where(entering <= running, order, 0)))
        best = running + cumulative[t]
    positions = [count - 1]
    for choice in reversed(choices):
        positions.append(int(choice[positions[-1]]))
    return float(best[count - 1]), positions[1:][::-1]
