"""The model as the planner sees it: per-node work, who reads what, and what any head would send and hold."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

import torch
from torch import fx

from edgesplit.model.graph import COMPUTE_OPS, Cut, TensorSpec, TracedModel, tensor_spec
from edgesplit.profile import count_macs

__all__ = ["OUTPUT", "NodeWork", "Workload", "prefix_cuts", "workload_of"]

OUTPUT = "output"  # the graph's output node: its values go back to the device from the server


@dataclass(frozen=True)
class NodeWork:
    """What one node computes and moves: MACs, bytes read and written, and the parameters it reads."""

    name: str
    macs: int
    input_bytes: int
    output_bytes: int
    params: dict[str, int]  # parameter or buffer name -> bytes (so shared weights count once per head)

    @property
    def bytes_moved(self) -> int:
        return self.input_bytes + self.output_bytes + sum(self.params.values())


@dataclass
class Workload:
    """Nodes in topological order, their work, the value graph, and the model's candidate prefix cuts."""

    name: str
    fingerprint: str
    nodes: list[NodeWork]
    inputs: list[str]
    consumers: dict[str, list[str]]  # value (placeholder or node) -> reading nodes, OUTPUT included
    tensors: dict[str, TensorSpec | None]  # value -> its tensor spec, None if it is not a tensor
    prefix_cuts: list[Cut]
    _position: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._position = {node.name: i for i, node in enumerate(self.nodes)}

    @property
    def node_names(self) -> list[str]:
        return [node.name for node in self.nodes]

    @cached_property
    def output_bytes(self) -> int:
        """Bytes of the model's result, which the server sends back to the device."""
        return sum(self.tensors[v].nbytes for v, readers in self.consumers.items()  # type: ignore[union-attr]
                   if OUTPUT in readers and self.tensors.get(v) is not None)

    @cached_property
    def input_bytes(self) -> int:
        return sum(self.tensors[v].nbytes for v in self.inputs)  # type: ignore[union-attr]

    @property
    def macs(self) -> int:
        return sum(node.macs for node in self.nodes)

    def prefix(self, position: int) -> frozenset[str]:
        """The head of a topological-prefix cut: the first ``position`` nodes."""
        return frozenset(node.name for node in self.nodes[:position])

    def position_of_prefix(self, head: frozenset[str]) -> int | None:
        """The position if ``head`` is the first ``len(head)`` nodes in topological order, else None."""
        return len(head) if all(self._position[name] < len(head) for name in head) else None

    @cached_property
    def cut_at(self) -> dict[int, Cut]:
        """The candidate prefix cuts by position."""
        return {cut.position: cut for cut in self.prefix_cuts}

    @cached_property
    def prefix_peak_bytes(self) -> np.ndarray:
        """``[p]``: peak live activation bytes of the head of the first ``p`` nodes (for every p, in one pass).

        While the first ``p`` nodes run, a value is freed after its last reader exactly as when all nodes run
        (a value read at or after ``p`` stays live to the end of the head either way), so each prefix's peak is
        the running maximum of the whole model's live-bytes curve.
        """
        end = len(self.nodes)
        position_of = {**self._position, OUTPUT: end}
        freed_after: dict[int, int] = {}
        for value, readers in self.consumers.items():
            if len(readers) == 1:
                last = position_of[readers[0]]
            else:
                last = max([position_of[r] for r in readers], default=-1)
            if last == -1 and value in self._position:
                last = self._position[value]  # read by nobody: freed right after it is made
            freed_after[last] = freed_after.get(last, 0) + self._bytes(value)
        live = sum(self._bytes(v) for v in self.inputs)
        peak = live
        peaks = [live]
        for position, node in enumerate(self.nodes):
            live += self._bytes(node.name)
            peak = max(peak, live)
            peaks.append(peak)
            live -= freed_after.get(position, 0)
        return np.array(peaks, dtype=np.int64)

    @cached_property
    def prefix_weight_bytes(self) -> np.ndarray:
        """``[p]``: bytes of the parameters the first ``p`` nodes read, each counted once."""
        seen: set[str] = set()
        total, sums = 0, [0]
        for node in self.nodes:
            for key, nbytes in node.params.items():
                if key not in seen:
                    seen.add(key)
                    total += nbytes
            sums.append(total)
        return np.array(sums, dtype=np.int64)

    def crossing(self, head: frozenset[str]) -> list[TensorSpec]:
        """Values the device holds that the server reads (the output counts as read by the server)."""
        held = list(self.inputs) + [node.name for node in self.nodes if node.name in head]
        return [self.tensors[v] for v in held  # type: ignore[misc]
                if any(reader not in head for reader in self.consumers.get(v, ()))]

    def head_weight_bytes(self, head: Iterable[str]) -> int:
        """Bytes of the parameters and buffers the head's nodes read, each counted once."""
        params: dict[str, int] = {}
        for node in self.nodes:
            if node.name in head:
                params.update(node.params)
        return sum(params.values())

    def head_activation_bytes(self, head: frozenset[str]) -> int:
        """Peak bytes of live tensors while the head runs in topological order (inputs included)."""
        last_reader: dict[str, int] = {}
        for value, readers in self.consumers.items():
            positions = [self._position[r] if r in head else len(self.nodes) for r in readers]
            last_reader[value] = max(positions, default=-1)
        live = {v: self._bytes(v) for v in self.inputs}
        peak = sum(live.values())
        for node in self.nodes:
            if node.name not in head:
                continue
            position = self._position[node.name]
            live[node.name] = self._bytes(node.name)
            peak = max(peak, sum(live.values()))
            for value in [v for v in live if last_reader.get(v, -1) <= position]:
                del live[value]
        return peak

    def _bytes(self, value: str) -> int:
        spec = self.tensors.get(value)
        return spec.nbytes if spec is not None else 0


def prefix_cuts(nodes: list[str], inputs: list[str], consumers: dict[str, list[str]],
                tensors: dict[str, TensorSpec | None]) -> list[Cut]:
    """Every topological-prefix cut whose crossing values are all tensors, by one sweep over the nodes.

    A value crosses prefix ``p`` when it is produced before ``p`` (inputs at -1) and read at or after ``p``;
    the sweep adds each value where it is produced and drops it after its last reader, O(nodes + edges).
    """
    position = {name: i for i, name in enumerate(nodes)}
    end = len(nodes)
    drop_at: dict[int, list[str]] = {}
    for value, readers in consumers.items():
        if readers:
            last = max(end if r == OUTPUT else position[r] for r in readers)
            drop_at.setdefault(last, []).append(value)
    live: dict[str, None] = dict.fromkeys(v for v in inputs if consumers.get(v))
    cuts: list[Cut] = []
    for p in range(end + 1):
        if p > 0:
            for value in drop_at.get(p - 1, ()):
                live.pop(value, None)
            if consumers.get(nodes[p - 1]):
                live[nodes[p - 1]] = None
        specs = [tensors.get(v) for v in live]
        if all(spec is not None for spec in specs):
            cuts.append(Cut(len(cuts), p, "input" if p == 0 else nodes[p - 1], tuple(specs)))  # type: ignore[arg-type]
    return cuts


def workload_of(traced: TracedModel, name: str = "model") -> Workload:
    """The planner's view of a traced model: MACs counted, bytes and readers taken from the shaped graph."""
    graph_module = traced.graph_module
    macs, _ = count_macs(graph_module, *traced.example_inputs)
    tensors: dict[str, TensorSpec | None] = {}
    consumers: dict[str, list[str]] = {}
    inputs: list[str] = []
    nodes: list[NodeWork] = []
    for node in graph_module.graph.nodes:
        if node.op == "placeholder":
            inputs.append(node.name)
        if node.op not in ("placeholder", *COMPUTE_OPS):
            continue
        tensors[node.name] = tensor_spec(node)
        consumers[node.name] = [OUTPUT if user.op == "output" else user.name for user in node.users]
        if node.op in COMPUTE_OPS:
            data_inputs = [n for n in node.all_input_nodes if n.op != "get_attr"]
            nodes.append(NodeWork(
                name=node.name, macs=macs.get(node.name, 0),
                input_bytes=sum(_nbytes(n) for n in data_inputs), output_bytes=_nbytes(node),
                params=_node_params(graph_module, node)))
    return Workload(name=name, fingerprint=traced.fingerprint, nodes=nodes, inputs=inputs, consumers=consumers,
                    tensors=tensors, prefix_cuts=list(traced.cuts))


def _nbytes(node: fx.Node) -> int:
    spec = tensor_spec(node)
    return spec.nbytes if spec is not None else 0


def _node_params(graph_module: fx.GraphModule, node: fx.Node) -> dict[str, int]:
    tensors: dict[str, torch.Tensor] = {}
    if node.op == "call_module":
        module = graph_module.get_submodule(node.target)
        tensors = {f"{node.target}.{k}": v for k, v in module.state_dict(keep_vars=True).items()}
    for arg in node.all_input_nodes:
        if arg.op == "get_attr":
            value = graph_module
            for part in arg.target.split("."):
                value = getattr(value, part)
            if isinstance(value, torch.Tensor):
                tensors[arg.target] = value
    return {key: t.numel() * t.element_size() for key, t in tensors.items()}
