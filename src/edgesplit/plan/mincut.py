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

SOURCE, SINK = "__device__", "__server__"
# networkx's flow algorithms are exact on integers; costs are scaled to integer units of 1e-9 of their unit.
_SCALE = 1e9


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


def min_cost_head(problem: PlacementProblem) -> tuple[float, frozenset[str]]:
    """The cheapest closed head and its cost, by one s–t minimum cut."""
    graph = flow_network(problem)
    _, (source_side, _) = nx.minimum_cut(graph, SOURCE, SINK)
    nodes = set(problem.nodes)
    head = frozenset(v for v in source_side if v in nodes)
    return problem.cost(head), head


def flow_network(problem: PlacementProblem) -> nx.DiGraph:
    """The flow network whose minimum s–t cut is the cheapest closed head (edges without capacity are infinite)."""
    graph = nx.DiGraph()
    graph.add_nodes_from((SOURCE, SINK, *problem.nodes))

    def finite(u: str, v: str, cost: float) -> None:
        if math.isinf(cost):
            graph.add_edge(u, v)
        elif cost > 0:
            graph.add_edge(u, v, capacity=round(cost * _SCALE))

    for node in problem.nodes:
        if node in problem.on_device:
            graph.add_edge(SOURCE, node)
        elif node in problem.on_server:
            graph.add_edge(node, SINK)
        finite(node, SINK, problem.device_cost.get(node, 0.0))
        finite(SOURCE, node, problem.server_cost.get(node, 0.0))
    for value, readers in problem.consumers.items():
        if not readers:
            continue
        transfer = problem.transfer_cost.get(value, math.inf)
        if len(readers) == 1:
            finite(value, readers[0], transfer)
        else:
            auxiliary = f"{value}→"  # the value in flight: paid once however many readers are on the server
            finite(value, auxiliary, transfer)
            for reader in readers:
                graph.add_edge(auxiliary, reader)
        for reader in readers:
            graph.add_edge(reader, value)  # infinite: a reader on the device needs its producer there too
    return graph


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
