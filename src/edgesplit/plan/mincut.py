"""The cheapest predecessor-closed head of a DAG, as an s–t minimum cut (and by brute force, for checking).

A placement puts a set ``S`` of nodes on the device (the *head*, closed under predecessors: nothing runs
on the device after its input went to the server) and the rest on the server. It costs

    sum(device_cost[v] for v in S) + sum(server_cost[v] for v not in S)
    + sum(transfer_cost[u] for u in S if some consumer of u is not in S)

The flow network (after DADS, Hu et al. INFOCOM 2019, with its fan-out fix): source = device, sink = server;
``v → sink`` carries ``device_cost[v]`` (cut when v is on the device), ``source → v`` carries
``server_cost[v]``; a value read by several consumers goes through one auxiliary node, so it is paid once;
every data edge gets an infinite reverse edge, so a cut never puts a consumer on the device while its
producer is on the server.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

__all__ = ["METHODS", "FlowGraph", "PlacementProblem", "brute_force_head", "closed_heads", "min_cost_head"]


@dataclass
class PlacementProblem:
    """Nodes in topological order, what each costs on either side, what each output costs to send, who reads it."""

    nodes: Sequence[str]
    consumers: Mapping[str, Sequence[str]]
    device_cost: Mapping[str, float]
    server_cost: Mapping[str, float]
    transfer_cost: Mapping[str, float]  # math.inf where a value cannot cross (not a tensor)
    on_device: frozenset[str] = field(default_factory=frozenset)  # pinned to the device (the inputs)
    on_server: frozenset[str] = field(default_factory=frozenset)  # pinned to the server (the output)

    def cost(self, head: Iterable[str]) -> float:
        """The cost of putting ``head`` on the device and everything else on the server."""
        head = set(head)
        total = sum(self.device_cost.get(v, 0.0) for v in head)
        total += sum(self.server_cost.get(v, 0.0) for v in self.nodes if v not in head)
        for value in head:
            if any(c not in head for c in self.consumers.get(value, ())):
                total += self.transfer_cost.get(value, math.inf)
        return total

    def is_closed(self, head: Iterable[str]) -> bool:
        """Whether ``head`` holds every producer of each of its nodes and respects the pinned nodes."""
        head = set(head)
        if not self.on_device <= head or head & self.on_server:
            return False
        return all(producer in head for producer, readers in self.consumers.items()
                   for reader in readers if reader in head)


METHODS = ("scipy", "networkx")
_FINITE_TOTAL = 5 * 10**8  # finite capacities are scaled to integers that add up to this
_INFINITY = 2**30  # > 2 × _FINITE_TOTAL, and _INFINITY + _FINITE_TOTAL < 2**31


def min_cost_head(problem: PlacementProblem, method: str = "scipy") -> tuple[float, frozenset[str]]:
    """The cheapest closed head and its cost, by one s–t minimum cut."""
    return FlowGraph(problem).solve(method=method)


class FlowGraph:
    """The flow network of a placement problem, compiled once into edge arrays; only capacities change per solve.

    Vertices are the problem's nodes (0..n-1), the source (n), the sink (n+1) and one auxiliary vertex per value
    with several readers. Edges fall in four groups: device edges ``v → sink`` (capacity ``device_cost[v]``),
    server edges ``source → v`` (``server_cost[v]``), transfer edges ``value → reader or auxiliary``
    (``transfer_cost[value]``), and infinite edges (auxiliary → reader, reader → value, and the pinned nodes).
    """

    def __init__(self, problem: PlacementProblem) -> None:
        self.problem = problem
        self.names = list(problem.nodes)
        index = {name: i for i, name in enumerate(self.names)}
        n = len(self.names)
        self.source, self.sink = n, n + 1
        vertices = n + 2
        transfer_tail, transfer_head = [], []
        inf_tail, inf_head = [], []
        for value, readers in problem.consumers.items():
            readers = [index[r] for r in readers]
            if not readers:
                continue
            v = index[value]
            if len(readers) == 1:
                transfer_tail.append(v)
                transfer_head.append(readers[0])
            else:
                auxiliary, vertices = vertices, vertices + 1  # the value in flight: paid once for all readers
                transfer_tail.append(v)
                transfer_head.append(auxiliary)
                inf_tail += [auxiliary] * len(readers)
                inf_head += readers
            inf_tail += readers  # a reader on the device needs its producer there too
            inf_head += [v] * len(readers)
        for name in problem.on_device:
            inf_tail.append(self.source)
            inf_head.append(index[name])
        for name in problem.on_server:
            inf_tail.append(index[name])
            inf_head.append(self.sink)
        self.vertices = vertices
        self._auxiliary_of = {t: h for t, h in zip(transfer_tail, transfer_head) if h >= n + 2}
        self.transfer_values = [self.names[v] for v in transfer_tail]
        nodes = np.arange(n)
        self._tails = np.concatenate([nodes, np.full(n, self.source), transfer_tail, inf_tail]).astype(np.int64)
        self._heads = np.concatenate([np.full(n, self.sink), nodes, transfer_head, inf_head]).astype(np.int64)
        self._finite = 2 * n + len(transfer_tail)
        self.device_cost = np.array([problem.device_cost.get(v, 0.0) for v in self.names], dtype=float)
        self.server_cost = np.array([problem.server_cost.get(v, 0.0) for v in self.names], dtype=float)
        self.transfer_cost = np.array([problem.transfer_cost.get(v, math.inf) for v in self.transfer_values],
                                      dtype=float)

    def solve(self, transfer_cost: np.ndarray | None = None, method: str = "scipy") -> tuple[float, frozenset[str]]:
        """The cheapest closed head and its cost, with ``transfer_cost`` (one per transfer edge) if given.

        The head is the smallest optimal one (the source side of the residual network after a maximum flow), so
        it does not depend on the solver.
        """
        transfer = self.transfer_cost if transfer_cost is None else transfer_cost
        costs = np.concatenate([self.device_cost, self.server_cost, transfer])
        if method == "scipy":
            source_side = self._source_side_scipy(costs)
        elif method == "networkx":
            source_side = np.asarray(self._source_side_networkx(costs), dtype=np.int64)
        else:
            raise ValueError(f"unknown min-cut method {method!r}; use one of {', '.join(METHODS)}")
        on_device = np.zeros(self.vertices, dtype=bool)
        on_device[source_side] = True
        on_device[len(self.names):] = False  # the source, the sink and the auxiliary vertices: set by _cut_cost
        head = frozenset(itertools.compress(self.names, on_device[:len(self.names)].tolist()))
        return self._cut_cost(on_device, costs), head

    def cost(self, head: frozenset[str], costs: np.ndarray) -> float:
        """What ``head`` costs: the finite edges from its side to the other (infinite if it is not closed)."""
        on_device = np.zeros(self.vertices, dtype=bool)
        on_device[[i for i, name in enumerate(self.names) if name in head]] = True
        return self._cut_cost(on_device, costs)

    def _cut_cost(self, on_device: np.ndarray, costs: np.ndarray) -> float:
        """The cost of the head marked in ``on_device[:n]`` (the rest of ``on_device`` is overwritten)."""
        n = len(self.names)
        on_device[self.source], on_device[self.sink] = True, False
        # an auxiliary vertex sits on the device side exactly when none of its readers is on the server
        tails, heads = self._tails, self._heads
        from_auxiliary = tails >= n + 2
        on_device[n + 2:] = True
        np.logical_and.at(on_device, tails[from_auxiliary], on_device[heads[from_auxiliary]])
        crossing = on_device[tails] & ~on_device[heads]
        if crossing[self._finite:].any():
            return math.inf
        return float(costs[crossing[:self._finite]].sum())

    def _integer_capacities(self, costs: np.ndarray) -> tuple[np.ndarray, int]:
        """Costs scaled to integers whose sum is at most 1e9, and a capacity that stands for infinity."""
        finite = np.isfinite(costs)
        total = float(costs[finite].sum())
        scale = _FINITE_TOTAL / total if total > 0 else 1.0
        # More than all finite edges together, even less any flow, so never in a minimum cut; and small enough
        # that a residual capacity (capacity plus the flow the other way) still fits in scipy's int32.
        infinity = _INFINITY
        scaled = np.where(finite, np.rint(np.where(finite, costs, 0.0) * scale), infinity)
        return scaled.astype(np.int64), infinity

    def _forward_edges(self) -> tuple[list[int], list[list[int]], list[list[int]], list[list[int]], int]:
        """Vertices in topological order, each vertex's edges that lead forward in it (out, in, from the source),
        and how many of the first vertices in that order the source feeds without limit (the pinned inputs)."""
        if not hasattr(self, "_forward"):
            n = len(self.names)
            order = []
            for v in range(n):
                order.append(v)
                if v in self._auxiliary_of:
                    order.append(self._auxiliary_of[v])
            rank = np.empty(self.vertices, dtype=np.int64)
            rank[order] = np.arange(len(order))
            rank[self.source], rank[self.sink] = -1, len(order)
            tails, heads = self._tails, self._heads
            edges = np.arange(len(tails))
            supplied = tails == self.source
            forward = edges[~supplied & (rank[tails] < rank[heads])]
            # out: by tail, the sink first (flow that ends at a vertex travels no further), else in edge order
            out = forward[np.lexsort((forward, heads[forward] != self.sink, tails[forward]))]
            into = forward[np.argsort(heads[forward], kind="stable")]
            supply = edges[supplied]
            supply = supply[np.argsort(heads[supply], kind="stable")]
            out_edges = self._grouped(out, tails[out])
            in_edges = self._grouped(into, heads[into])
            supplies = self._grouped(supply, heads[supply])
            pinned = rank[heads[supply[supply >= self._finite]]].tolist()
            self._heads_list, self._tails_list = heads.tolist(), tails.tolist()
            self._forward = (order, out_edges, in_edges, supplies, max(pinned, default=-1) + 1)
        return self._forward

    def _grouped(self, edges: np.ndarray, keys: np.ndarray) -> list[list[int]]:
        """``edges`` (sorted by ``keys``, a vertex each) as one list per vertex."""
        bounds = np.searchsorted(keys, np.arange(self.vertices + 1)).tolist()
        listed = edges.tolist()
        return [listed[start:end] for start, end in itertools.pairwise(bounds)]

    def _greedy_flow(self, capacity: list[int]) -> dict[int, int]:
        """A feasible flow found in one pass down the topological order: a warm start for the max-flow solver.

        Each vertex passes on what reaches it (drawing on its source edge as needed): to the sink first, then
        down its other forward edges up to their capacity. What a vertex cannot pass on is sent back up its
        incoming edges in a second, reverse pass, so the flow is conserved. On deep networks this does most of
        the work that Dinic's algorithm would need one phase per path length for: the flow from the pinned
        inputs down a long chain of nodes that run on the device. The pass stops, once past the inputs, where no
        flow is on its way down any more (from there on the paths are short, and Dinic's algorithm is quicker
        than Python), so on a fast link it costs a few vertices, not the whole graph. Returns the flow of each
        edge that carries some.
        """
        order, out_edges, in_edges, supplies, pinned = self._forward_edges()
        heads, tails, sink = self._heads_list, self._tails_list, self.sink
        flow: dict[int, int] = {}
        inflow = [0] * self.vertices
        stuck: dict[int, int] = {}
        pending = 0  # flow sent down to vertices not yet visited
        visited = 0
        for v in order:
            arrived = inflow[v]
            if visited >= pinned and pending == 0:
                break
            visited += 1
            pending -= arrived
            supply = supplies[v]
            if not supply:
                available = arrived
            elif len(supply) == 1:
                available = arrived + capacity[supply[0]]
            else:
                available = arrived + sum([capacity[e] for e in supply])
            sent = 0
            for e in out_edges[v]:
                if available == sent:
                    break
                amount = capacity[e]
                if amount > available - sent:
                    amount = available - sent
                if amount > 0:
                    flow[e] = amount
                    sent += amount
                    head = heads[e]
                    inflow[head] += amount
                    if head != sink:
                        pending += amount
            drawn = sent - arrived
            if drawn > 0:
                for e in supply:
                    amount = min(capacity[e], drawn)
                    if amount > 0:
                        flow[e] = amount
                        drawn -= amount
            elif drawn < 0:
                stuck[v] = -drawn
        for v in reversed(order[:visited]):
            left = stuck.get(v, 0)
            if not left:
                continue
            for e in in_edges[v] + supplies[v]:  # flow back to producers, and to the source last
                back = min(flow.get(e, 0), left)
                if back:
                    flow[e] -= back
                    left -= back
                    stuck[tails[e]] = stuck.get(tails[e], 0) + back
                    if left == 0:
                        break
        return flow

    def _csr_pattern(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The flow graph's sparsity pattern with every reverse edge, built once: rows, columns, indptr, slots.

        With the reverse edges present (capacity 0 where absent), scipy's flow matrix has this same pattern, so
        residual capacities are one array subtraction. ``slots`` maps each edge (forward, then reverse) to its
        entry, adding up parallel edges.
        """
        if not hasattr(self, "_pattern"):
            size = self.vertices
            tails = np.concatenate([self._tails, self._heads])
            heads = np.concatenate([self._heads, self._tails])
            keys, slots = np.unique(tails * size + heads, return_inverse=True)
            rows, columns = keys // size, keys % size
            indptr = np.searchsorted(rows, np.arange(size + 1)).astype(np.int32)
            self._pattern = (rows, columns.astype(np.int32), indptr, slots)
        return self._pattern

    def _source_side_scipy(self, costs: np.ndarray) -> np.ndarray:
        """A greedy warm start, then (unless it is a maximum flow already) Dinic's algorithm in C (scipy), then
        what the source reaches in the residual network."""
        from scipy.sparse import csr_array
        from scipy.sparse.csgraph import maximum_flow

        rows, columns, indptr, slots = self._csr_pattern()
        scaled, infinity = self._integer_capacities(costs)
        capacity = np.concatenate([scaled, np.full(len(self._tails) - self._finite, infinity)])
        warm = self._greedy_flow(capacity.tolist())
        start = np.zeros(len(capacity), dtype=np.int64)
        start[np.fromiter(warm.keys(), dtype=np.int64, count=len(warm))] = np.fromiter(warm.values(), dtype=np.int64,
                                                                                        count=len(warm))
        # and every node's direct path, source → node → sink, filled as far as both its edges have room left
        n = len(self.names)
        direct = np.minimum(capacity[:n] - start[:n], capacity[n:2 * n] - start[n:2 * n])
        start[:n] += direct
        start[n:2 * n] += direct
        # the residual network of the warm start: forward edges keep what is left, reverse edges what was sent
        capacity = np.concatenate([capacity - start, start])
        summed = np.bincount(slots, weights=capacity, minlength=len(columns))  # float64: exact below 2**53
        data = np.minimum(summed, infinity).astype(np.int32)
        # Often the warm start is a maximum flow already: then the sink is out of the source's reach in its
        # residual network (max-flow min-cut), and what the source reaches is the answer without Dinic.
        reached = self._reached(data > 0)
        if self.sink in reached:
            shape = (self.vertices, self.vertices)
            flow = maximum_flow(csr_array((data, columns, indptr), shape=shape), self.source, self.sink).flow
            if not (np.array_equal(flow.indptr, indptr) and np.array_equal(flow.indices, columns)):
                flow = csr_array(flow)  # a scipy that orders its result differently: align it the slow way
                flow_data = np.asarray(flow[rows, columns]).ravel()
            else:
                flow_data = flow.data
            reached = self._reached(data.astype(np.int64) > flow_data)
        return reached

    def _reached(self, open_edges: np.ndarray) -> np.ndarray:
        """The vertices the source reaches over the pattern's entries marked open."""
        from scipy.sparse import csr_array
        from scipy.sparse.csgraph import breadth_first_order

        rows, columns, _, _ = self._csr_pattern()
        open_indptr = np.zeros(self.vertices + 1, dtype=np.int32)
        np.cumsum(np.bincount(rows[open_edges], minlength=self.vertices), out=open_indptr[1:])
        residual = csr_array((np.ones(int(open_indptr[-1]), dtype=np.int8), columns[open_edges], open_indptr),
                             shape=(self.vertices, self.vertices))
        return breadth_first_order(residual, self.source, directed=True, return_predecessors=False)

    def _source_side_networkx(self, costs: np.ndarray) -> list[int]:
        scaled, _ = self._integer_capacities(costs)
        graph = nx.DiGraph()
        graph.add_nodes_from(range(self.vertices))
        for i, (u, v) in enumerate(zip(self._tails.tolist(), self._heads.tolist())):
            if i >= self._finite or scaled[i] >= 2**30:
                graph.add_edge(u, v)
                graph[u][v].pop("capacity", None)  # no capacity attribute: infinite
            elif scaled[i] > 0:
                previous = graph.get_edge_data(u, v, {}).get("capacity", 0)
                graph.add_edge(u, v, capacity=previous + int(scaled[i]))
        _, (source_side, _) = nx.minimum_cut(graph, self.source, self.sink)
        return list(source_side)


def closed_heads(problem: PlacementProblem) -> Iterable[frozenset[str]]:
    """Every closed head (exponential: for checking on small graphs only)."""
    producers: dict[str, set[str]] = {v: set() for v in problem.nodes}
    for value, readers in problem.consumers.items():
        for reader in readers:
            producers[reader].add(value)
    free = [v for v in problem.nodes if v not in problem.on_device and v not in problem.on_server]
    for size in range(len(free) + 1):
        for chosen in itertools.combinations(free, size):
            head = frozenset(chosen) | problem.on_device
            if all(producers[v] <= head for v in head):
                yield head


def brute_force_head(problem: PlacementProblem) -> tuple[float, frozenset[str]]:
    """The cheapest closed head by trying them all (for tests on graphs of a dozen nodes)."""
    return min(((problem.cost(head), head) for head in closed_heads(problem)), key=lambda pair: pair[0])
