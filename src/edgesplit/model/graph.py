"""Trace a model into a graph, propagate shapes, enumerate candidate cuts, and split it into head and tail.

A *cut* at position ``p`` puts the first ``p`` compute nodes (in topological order) on the device. Its
*crossing set* is every head value that a tail node (or the model output) reads, in topological order:
one tensor at a block boundary, two or more inside a residual block (the skip and the branch). A
position is a candidate cut only if every value crossing it is a tensor (not a tuple or a Python int
from ``x.size(0)``), because only tensors go over the wire.

``get_attr`` nodes (parameters read directly by ``forward``) are not cut positions: they are copied into
whichever half reads them, so a parameter never crosses the network.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.utils._pytree as pytree
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from edgesplit.errors import CutError, InputShapeError, UntraceableModelError

COMPUTE_OPS = ("call_module", "call_function", "call_method")
EXACT_TOLERANCE = 1e-5


@dataclass(frozen=True)
class TensorSpec:
    """A tensor that crosses a cut: the graph value's name, its shape, dtype and size in bytes."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int


@dataclass(frozen=True)
class Cut:
    """A cut: the device runs the first ``position`` compute nodes, ``crossing`` goes over the network.

    A cut from the list of candidates is a topological prefix. A cut the planner's min-cut found may put any
    predecessor-closed set of nodes on the device: then ``head`` names them and ``index`` is -1.
    """

    index: int
    position: int
    after: str
    crossing: tuple[TensorSpec, ...]
    head: tuple[str, ...] | None = None

    @property
    def crossing_bytes(self) -> int:
        return sum(t.nbytes for t in self.crossing)


@dataclass
class Split:
    """The two halves of a model at one cut: ``tail(*head(*inputs))`` computes ``model(*inputs)``."""

    cut: Cut
    head: fx.GraphModule
    tail: fx.GraphModule

    def __call__(self, *inputs: torch.Tensor) -> Any:
        return self.tail(*self.head(*inputs))


@dataclass
class TracedModel:
    """A model as a shape-annotated graph, with its candidate cuts in topological order."""

    graph_module: fx.GraphModule
    example_inputs: tuple[torch.Tensor, ...]
    tracer: Literal["fx", "export"]
    fallback_reason: str | None
    compute_nodes: list[fx.Node]
    cuts: list[Cut]

    @property
    def fingerprint(self) -> str:
        """A hash of the graph's structure; a saved split is only reloaded onto the same graph."""
        return graph_fingerprint(self.graph_module)

    def cut(self, key: int | str) -> Cut:
        """The candidate cut with this index, or the one right after the node with this name."""
        return resolve_cut(self.cuts, key)

    def split(self, key: int | str | Cut) -> Split:
        """Split at a candidate cut into head and tail modules that each run alone."""
        cut = key if isinstance(key, Cut) else self.cut(key)
        return split_at(self.graph_module, self.compute_nodes, cut)

    def head_cut(self, head_nodes: Iterable[str]) -> Cut:
        """The cut that puts exactly ``head_nodes`` (predecessor-closed) on the device; see :func:`cut_for_head`."""
        return cut_for_head(self.graph_module, self.compute_nodes, self.cuts, head_nodes)


def trace(model: torch.nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> TracedModel:
    """Put ``model`` in eval mode, trace it (torch.fx, else torch.export), propagate shapes, list its cuts."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    model.eval()
    with torch.no_grad():
        expected = _run_eager(model, inputs)
        graph_module, tracer, fallback_reason = _trace_graph(model, inputs, expected)
        ShapeProp(graph_module).propagate(*inputs)
    compute_nodes = [n for n in graph_module.graph.nodes if n.op in COMPUTE_OPS]
    return TracedModel(graph_module, inputs, tracer, fallback_reason, compute_nodes,
                       enumerate_cuts(graph_module, compute_nodes))


def _run_eager(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    try:
        return model(*inputs)
    except Exception as error:  # noqa: BLE001 - any failure here means the input does not fit the model
        shapes = ", ".join("×".join(map(str, t.shape)) for t in inputs)
        raise InputShapeError(
            f"{type(model).__name__} failed on an input of shape {shapes}: {_first_line(error)}; "
            "pass the shape the model expects (CLI: --input-shape N,C,H,W)"
        ) from None


def _trace_graph(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], expected: Any,
                 ) -> tuple[fx.GraphModule, Literal["fx", "export"], str | None]:
    try:
        graph_module = torch.fx.symbolic_trace(model)
        _check_same(graph_module(*inputs), expected, "torch.fx")
        return graph_module, "fx", None
    except Exception as error:  # noqa: BLE001 - fx fails in many ways; export is the fallback for all
        fx_reason = _first_line(error)
    try:
        with _quiet_export_logs():
            exported = torch.export.export(model, inputs)
        graph_module = exported.module(check_guards=False)
        _check_same(graph_module(*inputs), expected, "torch.export")
    except Exception as error:  # noqa: BLE001
        raise UntraceableModelError(
            f"cannot trace {type(model).__name__}: torch.fx failed ({fx_reason}) and torch.export failed "
            f"({_first_line(error)}); remove data-dependent Python control flow from forward "
            "(e.g. `if x.sum() > 0`), using torch.where or torch.cond instead"
        ) from None
    logging.getLogger("edgesplit").warning(
        "torch.fx could not trace %s (%s); traced with torch.export instead (ATen-level graph)",
        type(model).__name__, fx_reason)
    return graph_module, "export", fx_reason


def _check_same(actual: Any, expected: Any, tracer: str) -> None:
    difference = max_abs_diff(actual, expected)
    if difference > EXACT_TOLERANCE:
        raise ValueError(f"the {tracer} graph computes something else than the model (max abs diff {difference:.3g})")


def max_abs_diff(actual: Any, expected: Any) -> float:
    """The largest absolute difference between two (nested) tensor outputs; inf if their structure differs."""
    actual_leaves, actual_spec = pytree.tree_flatten(actual)
    expected_leaves, expected_spec = pytree.tree_flatten(expected)
    if actual_spec != expected_spec:
        return float("inf")
    difference = 0.0
    for a, b in zip(actual_leaves, expected_leaves):
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            if a.shape != b.shape:
                return float("inf")
            if a.numel():
                difference = max(difference, (a.double() - b.double()).abs().max().item())
        elif a != b:
            return float("inf")
    return difference


@contextlib.contextmanager
def _quiet_export_logs():
    # On failure torch.export logs a warning and prints the partial graph before raising; the error says it all.
    loggers = [logging.getLogger(name) for name in ("torch.fx.experimental.symbolic_shapes", "torch._dynamo")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


# --- cuts -------------------------------------------------------------------------------------


def enumerate_cuts(graph_module: fx.GraphModule, compute_nodes: list[fx.Node]) -> list[Cut]:
    """Every candidate cut in topological order, from position 0 (send the input) to N (send the output)."""
    position_of = {node: i for i, node in enumerate(compute_nodes)}
    output_node = next(n for n in graph_module.graph.nodes if n.op == "output")
    end = len(compute_nodes)
    # A value crosses cut p iff it is produced before p (placeholders at -1) and read at or after p.
    produced_and_last_read: list[tuple[fx.Node, int, int]] = []
    for node in graph_module.graph.nodes:
        if node.op not in ("placeholder", *COMPUTE_OPS) or not node.users:
            continue
        produced = position_of.get(node, -1)
        last_read = max(end if user is output_node else position_of.get(user, -1) for user in node.users)
        produced_and_last_read.append((node, produced, last_read))

    cuts: list[Cut] = []
    for position in range(end + 1):
        crossing_nodes = [n for n, produced, last in produced_and_last_read if produced < position <= last]
        specs = [_tensor_spec(n) for n in crossing_nodes]
        if any(spec is None for spec in specs):
            continue
        after = "input" if position == 0 else compute_nodes[position - 1].name
        cuts.append(Cut(len(cuts), position, after, tuple(specs)))  # type: ignore[arg-type]
    return cuts


def _tensor_spec(node: fx.Node) -> TensorSpec | None:
    meta = node.meta.get("tensor_meta")
    if not isinstance(meta, TensorMetadata):
        return None
    itemsize = torch.empty((), dtype=meta.dtype).element_size()
    numel = 1
    for size in meta.shape:
        numel *= int(size)
    return TensorSpec(node.name, tuple(int(s) for s in meta.shape), str(meta.dtype).removeprefix("torch."),
                      numel * itemsize)


def cut_for_head(graph_module: fx.GraphModule, compute_nodes: list[fx.Node], cuts: list[Cut],
                 head_nodes: Iterable[str]) -> Cut:
    """The cut that runs ``head_nodes`` on the device: the candidate cut where they are a prefix, else a new one.

    Raises CutError when a name is unknown, when the set is not closed under predecessors (a node on the device
    would need a value computed on the server), or when a value that would cross is not a tensor.
    """
    wanted = set(head_nodes)
    by_name = {n.name: n for n in compute_nodes}
    if unknown := sorted(wanted - by_name.keys()):
        raise CutError(f"no compute node named {', '.join(unknown[:3])}; head nodes must be names from the graph")
    head = [n for n in compute_nodes if n.name in wanted]
    for node in head:
        for producer in node.all_input_nodes:
            if producer.op in COMPUTE_OPS and producer.name not in wanted:
                raise CutError(f"head is not closed: {node.name} reads {producer.name}, which would run on the "
                               "server; add it to the head")
    if compute_nodes[:len(head)] == head:
        candidate = next((c for c in cuts if c.position == len(head)), None)
        if candidate is not None:
            return candidate
    return _closed_cut(graph_module, head)


def _closed_cut(graph_module: fx.GraphModule, head: list[fx.Node]) -> Cut:
    on_device = set(head) | {n for n in graph_module.graph.nodes if n.op == "placeholder"}
    crossing = [n for n in graph_module.graph.nodes
                if n in on_device and any(user not in on_device and user.op != "get_attr" for user in n.users)]
    specs = [_tensor_spec(n) for n in crossing]
    if any(spec is None for spec in specs):
        bad = next(n.name for n, spec in zip(crossing, specs) if spec is None)
        raise CutError(f"this head would send {bad}, which is not a tensor; choose a head that sends tensors only")
    after = head[-1].name if head else "input"
    return Cut(-1, len(head), after, tuple(specs), tuple(n.name for n in head))  # type: ignore[arg-type]


def resolve_cut(cuts: list[Cut], key: int | str) -> Cut:
    """Look up a cut by index (an int or a numeric string) or by the name of its last head node."""
    if isinstance(key, str) and key.lstrip("-").isdigit():
        key = int(key)
    if isinstance(key, int):
        if not 0 <= key < len(cuts):
            raise CutError(f"cut index {key} is out of range; this model has cuts 0..{len(cuts) - 1} "
                           "(run `edgesplit profile` to list them)")
        return cuts[key]
    for cut in cuts:
        if cut.after == key:
            return cut
    names = ", ".join(c.after for c in cuts[:6])
    raise CutError(f"no candidate cut after a node named '{key}'; give a cut index or one of the names "
                   f"`edgesplit profile` lists (e.g. {names}, ...)")


# --- split ------------------------------------------------------------------------------------


def split_at(graph_module: fx.GraphModule, compute_nodes: list[fx.Node], cut: Cut) -> Split:
    """Build head and tail GraphModules for ``cut``; the head returns the crossing tensors as a tuple."""
    nodes_by_name = {n.name: n for n in graph_module.graph.nodes}
    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    crossing = [nodes_by_name[t.name] for t in cut.crossing]
    output_node = next(n for n in graph_module.graph.nodes if n.op == "output")

    if cut.head is None:
        head_nodes, tail_nodes = compute_nodes[:cut.position], compute_nodes[cut.position:]
    else:
        on_device = set(cut.head)
        head_nodes = [n for n in compute_nodes if n.name in on_device]
        tail_nodes = [n for n in compute_nodes if n.name not in on_device]
    head = _subgraph_module(graph_module, placeholders, head_nodes, tuple(crossing))
    tail = _subgraph_module(graph_module, crossing, tail_nodes, _output_structure(graph_module, output_node))
    return Split(cut, head, tail)


def _output_structure(graph_module: fx.GraphModule, output_node: fx.Node) -> Any:
    # torch.export graphs return a flat tuple that their pytree codegen unflattens; rebuild that structure.
    result = output_node.args[0]
    codegen = graph_module.graph._codegen
    if isinstance(codegen, fx.graph._PyTreeCodeGen) and codegen.pytree_info.out_spec is not None:
        return pytree.tree_unflatten(list(result), codegen.pytree_info.out_spec)
    return result


def _subgraph_module(graph_module: fx.GraphModule, inputs: list[fx.Node], nodes: list[fx.Node],
                     outputs: Any) -> fx.GraphModule:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in inputs:
        env[node] = graph.placeholder(node.name)
        env[node].meta = dict(node.meta)

    def lookup(node: fx.Node) -> fx.Node:
        if node not in env and node.op == "get_attr":  # parameters are copied to each half that reads them
            env[node] = graph.get_attr(node.target)
            env[node].meta = dict(node.meta)
        return env[node]

    for node in nodes:
        env[node] = graph.node_copy(node, lookup)
    graph.output(fx.node.map_arg(outputs, lookup))
    graph.lint()
    return fx.GraphModule(graph_module, graph)


def graph_fingerprint(graph_module: fx.GraphModule) -> str:
    """A short hash of the graph's ops, targets and edges (not of its weights)."""
    lines = [f"{n.op} {n.name} {_target_name(n)} {n.args} {n.kwargs}" for n in graph_module.graph.nodes]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _target_name(node: fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def node_kind(node: fx.Node) -> str:
    """A short human label for what a node computes, e.g. ``Conv2d``, ``add`` or ``flatten``."""
    if node.op == "call_module":
        return type(node.graph.owning_module.get_submodule(node.target)).__name__
    return _target_name(node).split(".")[-1]
