"""Count parameters and weight bytes: of a whole module (a model, a head, a tail), of one graph node, and of the
head and tail of every cut of a graph at once (without building the halves)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import fx

__all__ = ["cut_params_and_bytes", "node_params", "params_and_bytes"]


def params_and_bytes(module: torch.nn.Module) -> tuple[int, int]:
    """Parameter count, and bytes of the distinct tensors in the state dict (shared weights counted once)."""
    params = sum(p.numel() for p in module.parameters())
    seen: set[int] = set()
    weight_bytes = 0
    for tensor in module.state_dict(keep_vars=True).values():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            weight_bytes += tensor.numel() * tensor.element_size()
    return params, weight_bytes


def cut_params_and_bytes(graph_module: fx.GraphModule, compute_nodes: Sequence[fx.Node], positions: Sequence[int],
                         ) -> list[tuple[int, int, int, int]]:
    """``params_and_bytes`` of the head and of the tail of the cut at each position (head, tail: the first
    ``p`` compute nodes, the rest), as ``(head_params, head_bytes, tail_params, tail_bytes)``: the same counts
    as those of the split halves, from the tensors each node reads, in time linear in the graph per cut."""
    used = [_node_tensors(graph_module, node) for node in compute_nodes]

    def running(order: Sequence[int]) -> list[tuple[int, int]]:
        """Counts of the distinct tensors read by the first k nodes of ``order``, for k = 0..len(order)."""
        parameters: set[int] = set()
        storages: set[int] = set()
        params = weight_bytes = 0
        totals = [(0, 0)]
        for index in order:
            for tensor, is_parameter in used[index]:
                if is_parameter and id(tensor) not in parameters:
                    parameters.add(id(tensor))
                    params += tensor.numel()
                if tensor.data_ptr() not in storages:
                    storages.add(tensor.data_ptr())
                    weight_bytes += tensor.numel() * tensor.element_size()
            totals.append((params, weight_bytes))
        return totals

    count = len(compute_nodes)
    heads = running(range(count))
    tails = running(range(count - 1, -1, -1))
    return [(*heads[p], *tails[count - p]) for p in positions]


def _node_tensors(graph_module: fx.GraphModule, node: fx.Node) -> list[tuple[torch.Tensor, bool]]:
    """The state a node reads, as (tensor, is a parameter): its submodule's state dict, or the attributes it reads."""
    if node.op == "call_module":
        module = graph_module.get_submodule(node.target)
        return [(t, isinstance(t, torch.nn.Parameter)) for t in module.state_dict(keep_vars=True).values()]
    tensors = [_fetch_attr(graph_module, arg.target) for arg in node.all_input_nodes if arg.op == "get_attr"]
    return [(t, isinstance(t, torch.nn.Parameter)) for t in tensors if isinstance(t, torch.Tensor)]


def node_params(graph_module: fx.GraphModule, node: fx.Node) -> int:
    """Parameters a node uses: its submodule's, or those of the attributes it reads."""
    if node.op == "call_module":
        return sum(p.numel() for p in graph_module.get_submodule(node.target).parameters())
    return sum(_fetch_attr(graph_module, arg.target).numel()
               for arg in node.all_input_nodes if arg.op == "get_attr")


def _fetch_attr(module: torch.nn.Module, target: str) -> torch.Tensor:
    for part in target.split("."):
        module = getattr(module, part)
    return module  # type: ignore[return-value]
