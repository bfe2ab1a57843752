"""Count parameters and weight bytes: of a whole module (a model, a head, a tail) and of one graph node."""

from __future__ import annotations

import torch
from torch import fx

__all__ = ["node_params", "params_and_bytes"]


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
