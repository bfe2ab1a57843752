"""Trace a model into a graph, propagate shapes, enumerate candidate cuts, and cut it into ordered stages.

A *cut* at position ``p`` puts the first ``p`` compute nodes (in topological order) on the device. Its
*crossing set* is every head value that a tail node (or the model output) reads, in topological order:
one tensor at a block boundary, two or more inside a residual block (the skip and the branch). A
position is a candidate cut only if every value crossing it is a tensor (not a tuple or a Python int
from ``x.size(0)``), because only tensors go over the wire.

A *partition* generalises the cut the way ``torch.fx.passes.split_module`` does: every compute node is
assigned to one of K ordered stages, and each stage becomes a GraphModule that takes what the earlier
stages send it. A value made in stage i and read in stage j > i + 1 is forwarded: it is an input and an
output of every stage in between, so a chain of machines can pass it on. The two-way split (head, tail)
is the K = 2 case.

``get_attr`` nodes (parameters read directly by ``forward``) are not cut positions: they are copied into
whichever stage reads them, so a parameter never crosses the network.

Node names are the keys of cuts in profiles, plans and split records. torch.fx names a node after the module or
function it calls (``layer1_0_conv1``); a torch.export graph would name it after its ATen op (``add_10``), so
its compute nodes are renamed after the module that ran them (``node.meta["nn_module_stack"]``, dots as
underscores: ``vit_layers_3_output``), plus the op where several nodes share a module
(``vit_layers_3_attention_view_1``). A cut can be named with dots too (``vit.layers.3.output``).

torch.export is asked for a dynamic batch (dimension 0 of every input), so the halves run on any batch as fx
graphs do; a model that will not export so is exported at the example's batch alone. Such a graph computes the
batch as a symbolic int (``sym_size_int``, and expressions of it). Those *batch scalars* never cross a cut: a
stage that reads one it did not compute works it out again from the size of a tensor it receives, and a cut
whose tensors do not carry the batch is not a candidate.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import io
import keyword
import logging
import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.utils._pytree as pytree
from pydantic import BaseModel, ConfigDict, model_validator
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from edgesplit.errors import CutError, InputShapeError, UntraceableModelError

COMPUTE_OPS = ("call_module", "call_function", "call_method")
EXACT_TOLERANCE = 1e-5

__all__ = ["COMPUTE_OPS", "EXACT_TOLERANCE", "Assignment", "Cut", "Partition", "Split", "Stage", "TensorSpec",
           "TracedModel", "cut_for_head", "enumerate_cuts", "graph_fingerprint", "is_batch_scalar", "max_abs_diff",
           "node_kind", "partition_graph", "resolve_cut", "split_at", "tensor_spec", "trace"]


class TensorSpec(BaseModel):
    """A tensor that crosses a cut: the graph value's name, its shape, dtype and size in bytes (in memory).

    The one crossing-tensor type: cuts, partitions, profiles, plans, split records and compress results use it.
    ``nbytes`` may be left out when reading a file that does not store it (compress results): it is then
    worked out from the shape and dtype.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    shape: tuple[int, ...]
    dtype: str  # a torch dtype without its prefix: float32, int64, bool
    nbytes: int

    @model_validator(mode="before")
    @classmethod
    def _nbytes_from_shape(cls, data: Any) -> Any:
        if isinstance(data, dict) and "nbytes" not in data and "shape" in data and "dtype" in data:
            data = {**data, "nbytes": math.prod(int(s) for s in data["shape"]) * _itemsize(str(data["dtype"]))}
        return data

    def at_batch(self, batch: int) -> TensorSpec:
        """The same tensor with ``batch`` as its first dimension (e.g. one image of a traced batch)."""
        shape = (batch, *self.shape[1:])
        return TensorSpec(name=self.name, shape=shape, dtype=self.dtype,
                          nbytes=math.prod(shape) * _itemsize(self.dtype))


def _itemsize(dtype: str) -> int:
    found = getattr(torch, dtype, None)
    if not isinstance(found, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; expected a torch dtype such as float32")
    return found.itemsize


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

    def assignment(self, compute_nodes: Sequence[fx.Node]) -> dict[str, int]:
        """This cut as a two-stage assignment: each compute node's name to 0 (head, device) or 1 (tail, server)."""
        if self.head is None:
            return {node.name: int(i >= self.position) for i, node in enumerate(compute_nodes)}
        on_device = set(self.head)
        return {node.name: int(node.name not in on_device) for node in compute_nodes}


@dataclass
class Split:
    """The two halves of a model at one cut: ``tail(*head(*inputs))`` computes ``model(*inputs)``.

    The two-stage :class:`Partition` of :meth:`Cut.assignment`; the tail takes the crossing tensors in the
    cut's order.
    """

    cut: Cut
    head: fx.GraphModule
    tail: fx.GraphModule

    def __call__(self, *inputs: torch.Tensor) -> Any:
        return self.tail(*self.head(*inputs))


Assignment = Mapping[str, int] | Callable[[fx.Node], int]


@dataclass(frozen=True)
class Stage:
    """One segment of a partition: ``module`` runs ``nodes`` on ``inputs`` and returns ``outputs`` as a tuple.

    Stage 0 receives the model's inputs, a later stage what the stage before it sent. ``outputs`` are what it
    sends on, in topological order, forwarded tensors included; the last stage sends nothing on (``outputs`` is
    empty) and returns the model's result in the model's output structure.
    """

    index: int
    module: fx.GraphModule
    nodes: tuple[str, ...]  # the compute nodes it runs, in topological order
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def forwarded(self) -> tuple[TensorSpec, ...]:
        """The tensors it passes on unchanged: made by an earlier stage and read by a later one."""
        received = {t.name for t in self.inputs}
        return tuple(t for t in self.outputs if t.name in received)

    def __call__(self, *values: torch.Tensor) -> Any:
        return self.module(*values)


@dataclass(frozen=True)
class Partition:
    """A model cut into K ordered stages: running them in order computes ``model(*inputs)``."""

    stages: tuple[Stage, ...]
    assignment: dict[str, int]  # every compute node's name to its stage

    @property
    def boundaries(self) -> tuple[tuple[TensorSpec, ...], ...]:
        """What crosses from stage i to stage i + 1, for i < K − 1 (forwarded tensors included)."""
        return tuple(stage.outputs for stage in self.stages[:-1])

    def run(self, *inputs: torch.Tensor) -> list[Any]:
        """Run every stage in order: the tuple each stage sent on, then the model's result last."""
        returned: list[Any] = []
        values: Any = inputs
        for stage in self.stages:
            values = stage.module(*values)
            returned.append(values)
        return returned

    def __call__(self, *inputs: torch.Tensor) -> Any:
        values: Any = inputs
        for stage in self.stages[:-1]:
            values = stage.module(*values)
        return self.stages[-1].module(*values)


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

    def partition(self, assign: Assignment | Cut, stages: int | None = None) -> Partition:
        """Cut into ordered stages; see :func:`partition_graph`. A :class:`Cut` is its two-stage assignment."""
        if isinstance(assign, Cut):
            assign, stages = assign.assignment(self.compute_nodes), 2
        return partition_graph(self.graph_module, self.compute_nodes, assign, stages)

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
        ) from error


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
            exported = _export(model, inputs)
        graph_module = exported.module(check_guards=False)
        _name_by_module(graph_module, getattr(model, "edgesplit_name_prefix", ""))
        _check_same(graph_module(*inputs), expected, "torch.export")
    except Exception as error:  # noqa: BLE001
        raise UntraceableModelError(
            f"cannot trace {type(model).__name__}: torch.fx failed ({fx_reason}) and torch.export failed "
            f"({_first_line(error)}); remove data-dependent Python control flow from forward "
            "(e.g. `if x.sum() > 0`), using torch.where or torch.cond instead"
        ) from error
    logging.getLogger("edgesplit").warning(
        "torch.fx could not trace %s (%s); traced with torch.export instead (ATen-level graph)",
        type(model).__name__, fx_reason)
    return graph_module, "export", fx_reason


def _export(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    """torch.export with a dynamic batch (traced at a batch of at least 2, as a batch of 1 would be fixed), else at
    the example's batch."""
    if inputs and all(x.dim() >= 1 and x.shape[0] == inputs[0].shape[0] for x in inputs):
        batch = max(2, inputs[0].shape[0])
        wide = tuple(x.expand(batch, *x.shape[1:]).contiguous() for x in inputs)
        dims = tuple({0: torch.export.Dim("batch", min=1, max=2**20)} for _ in inputs)
        try:
            return torch.export.export(model, wide, dynamic_shapes=dims)
        except Exception:  # noqa: BLE001 - a model that fixes its batch exports as it is, below
            pass
    return torch.export.export(model, inputs)


def _name_by_module(graph_module: fx.GraphModule, prefix: str = "") -> None:
    """Rename an export graph's compute nodes after the module each ran in (see the module docstring).

    ``prefix`` is a module path left out of every name (a wrapper's attribute holding the real model). Nodes
    outside any module keep their op names. Deterministic: names follow the graph's order alone."""
    def path(node: fx.Node) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        innermost = list(stack.values())[-1] if stack else None
        where = str(innermost[0]) if isinstance(innermost, tuple) and innermost else ""
        if where.startswith("_empty_nn_module_stack"):  # export's mark for a node outside every module
            return ""
        if prefix and (where == prefix or where.startswith(prefix + ".")):
            where = where[len(prefix):].lstrip(".")
        return re.sub(r"\W", "_", where.replace(".", "_")).strip("_")

    nodes = [n for n in graph_module.graph.nodes if n.op in COMPUTE_OPS]
    paths = {node: path(node) for node in nodes}
    renamed = [node for node in nodes if paths[node]]
    if not renamed:
        return
    shared: dict[str, int] = {}
    for node in renamed:
        shared[paths[node]] = shared.get(paths[node], 0) + 1
    taken = {n.name for n in graph_module.graph.nodes if n not in set(renamed)}
    wanted: dict[fx.Node, str] = {}
    for node in renamed:
        op = re.sub(r"_\d+$", "", node.name)
        alone = shared[paths[node]] == 1 or paths[node].endswith(f"_{op}") or paths[node] == op  # dropout's dropout
        base = paths[node] if alone else f"{paths[node]}_{op}"
        if base[0].isdigit() or base in _RESERVED:
            base = f"_{base}"
        name, count = base, 0
        while name in taken:
            count += 1
            name = f"{base}_{count}"
        taken.add(name)
        wanted[node] = name
    for index, node in enumerate(renamed):  # first out of the way, so no new name meets an old one
        node._rename(f"_edgesplit_renaming_{index}")
    for node in renamed:
        node._rename(wanted[node])
    graph_module.recompile()


# Names a node may not take: fx's generated code uses them (Python keywords, builtins, its own imports).
_RESERVED = frozenset(keyword.kwlist) | frozenset(dir(builtins)) | {"torch", "fx_pytree", "pytree", "device"}


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

    spec_of = {node: tensor_spec(node) for node, _, _ in produced_and_last_read}
    cuts: list[Cut] = []
    for position in range(end + 1):
        crossing = [n for n, produced, last in produced_and_last_read if produced < position <= last]
        scalars = [n for n in crossing if is_batch_scalar(n)]
        tensors = [n for n in crossing if not is_batch_scalar(n)]
        specs = [spec_of[n] for n in tensors]
        if any(spec is None for spec in specs) or not all(_derivable(n, tensors) for n in scalars):
            continue
        after = "input" if position == 0 else compute_nodes[position - 1].name
        cuts.append(Cut(len(cuts), position, after, tuple(specs)))  # type: ignore[arg-type]
    return cuts


def is_batch_scalar(node: fx.Node) -> bool:
    """Whether ``node`` computes a symbolic int of a dynamic-batch export graph (the batch, or an expression of it):
    such a value never crosses a cut, it is worked out again where it is needed (see the module docstring)."""
    return isinstance(node.meta.get("val"), torch.SymInt)


def _size_source(node: fx.Node, tensors: Iterable[fx.Node]) -> tuple[fx.Node, int] | None:
    """A tensor among ``tensors`` and a dimension of it whose size is exactly ``node``'s symbolic value."""
    wanted = str(node.meta["val"])
    for tensor in tensors:
        value = tensor.meta.get("val")
        if isinstance(value, torch.Tensor):
            for dim, size in enumerate(value.shape):
                if isinstance(size, torch.SymInt) and str(size) == wanted:
                    return tensor, dim
    return None


def _derivable(node: fx.Node, tensors: list[fx.Node], depth: int = 0) -> bool:
    """Whether a batch scalar can be worked out from the sizes of ``tensors`` (directly, or as an expression of
    batch scalars that can)."""
    if _size_source(node, tensors) is not None:
        return True
    if depth > 8 or node.op != "call_function":
        return False
    return all(_derivable(arg, tensors, depth + 1) if is_batch_scalar(arg) else arg.op == "get_attr"
               for arg in node.all_input_nodes)


def tensor_spec(node: fx.Node) -> TensorSpec | None:
    """The TensorSpec of a traced node's value (shape propagation's metadata), or None where it is not a tensor."""
    meta = node.meta.get("tensor_meta")
    if not isinstance(meta, TensorMetadata):
        return None
    itemsize = torch.empty((), dtype=meta.dtype).element_size()
    numel = 1
    for size in meta.shape:
        numel *= int(size)
    return TensorSpec(name=node.name, shape=tuple(int(s) for s in meta.shape),
                      dtype=str(meta.dtype).removeprefix("torch."), nbytes=numel * itemsize)


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
    return _closed_cut(graph_module, compute_nodes, head)


def _closed_cut(graph_module: fx.GraphModule, compute_nodes: list[fx.Node], head: list[fx.Node]) -> Cut:
    on_device = set(head)
    (crossing,) = _boundaries(graph_module, {n: int(n not in on_device) for n in compute_nodes}, 2)
    specs = [tensor_spec(n) for n in crossing]
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
    for name in (key, key.replace(".", "_")):  # vit.layers.3.output names the node vit_layers_3_output
        for cut in cuts:
            if cut.after == name:
                return cut
    names = ", ".join(c.after for c in cuts[:6])
    raise CutError(f"no candidate cut after a node named '{key}'; give a cut index or one of the names "
                   f"`edgesplit profile` lists (e.g. {names}, ...)")


# --- partition and split ------------------------------------------------------------------------


def partition_graph(graph_module: fx.GraphModule, compute_nodes: list[fx.Node], assign: Assignment,
                    stages: int | None = None) -> Partition:
    """Cut the graph into ``stages`` ordered stages (default: the highest stage assigned, plus one).

    ``assign`` gives every compute node its stage: a mapping from node names, or a callback on the node (as in
    ``torch.fx.passes.split_module``). A stage may be empty: it passes on what it receives. Raises CutError
    when a node is missing or unknown, a stage is out of range, the assignment is not monotone (a node would
    read a value from a later stage), or a value that would cross between stages is not a tensor.
    """
    stage_of, count = _stage_numbers(compute_nodes, assign, stages)
    for node in compute_nodes:
        for producer in node.all_input_nodes:
            if stage_of.get(producer, 0) > stage_of[node]:
                raise CutError(f"the assignment is not monotone: {node.name} runs in stage {stage_of[node]} but reads "
                               f"{producer.name} from the later stage {stage_of[producer]}; a node's stage must be at "
                               "least the stages of its inputs")
    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    boundaries = _boundaries(graph_module, stage_of, count)
    received = [placeholders, *boundaries]  # stage i receives received[i]
    found = {node: tensor_spec(node) for nodes in received for node in nodes}
    if bad := next((node for node in placeholders if found[node] is None), None):
        raise CutError(f"model input {bad.name} is not a tensor; a partition takes tensor inputs only")
    for index, nodes in enumerate(boundaries):
        if bad := next((node for node in nodes if found[node] is None), None):
            raise CutError(f"stage {index} would send {bad.name}, which is not a tensor; only tensors cross between "
                           f"stages: put the nodes that read {bad.name} in the stage that makes it")
    specs = {node: spec for node, spec in found.items() if spec is not None}
    members: list[list[fx.Node]] = [[] for _ in range(count)]
    for node in compute_nodes:
        members[stage_of[node]].append(node)
    output_node = next(n for n in graph_module.graph.nodes if n.op == "output")
    result = _output_structure(graph_module, output_node)
    built = []
    for index in range(count):
        sends = boundaries[index] if index < count - 1 else []
        module = _subgraph_module(graph_module, received[index], members[index],
                                  tuple(sends) if index < count - 1 else result)
        built.append(Stage(index, module, tuple(n.name for n in members[index]),
                           tuple(specs[n] for n in received[index]), tuple(specs[n] for n in sends)))
    return Partition(tuple(built), {node.name: stage_of[node] for node in compute_nodes})


def _stage_numbers(compute_nodes: list[fx.Node], assign: Assignment, stages: int | None,
                   ) -> tuple[dict[fx.Node, int], int]:
    if isinstance(assign, Mapping):
        if unknown := sorted(map(str, set(assign) - {n.name for n in compute_nodes})):
            raise CutError(f"no compute node named {', '.join(unknown[:3])}; an assignment maps the names of "
                           "compute nodes to stages")
        if missing := [n.name for n in compute_nodes if n.name not in assign]:
            raise CutError(f"the assignment gives no stage to {len(missing)} compute nodes (e.g. "
                           f"{', '.join(missing[:3])}); give every compute node a stage")
        chosen = {node: assign[node.name] for node in compute_nodes}
    else:
        chosen = {node: assign(node) for node in compute_nodes}
    for node, stage in chosen.items():
        if isinstance(stage, bool) or not isinstance(stage, numbers.Integral):
            raise CutError(f"{node.name} is assigned {stage!r}; a stage is an integer index")
    stage_of = {node: int(stage) for node, stage in chosen.items()}
    count = stages if stages is not None else max(stage_of.values(), default=0) + 1
    if count < 1:
        raise CutError(f"a partition has at least one stage, not {count}")
    if bad := next((node for node, stage in stage_of.items() if not 0 <= stage < count), None):
        raise CutError(f"{bad.name} is assigned stage {stage_of[bad]}; the stages are 0..{count - 1}")
    return stage_of, count


def _boundaries(graph_module: fx.GraphModule, stage_of: Mapping[fx.Node, int], count: int) -> list[list[fx.Node]]:
    """What crosses from stage i to i + 1, for i < count − 1, in topological order.

    A value (a model input, made in stage 0, or a compute node's result) crosses every boundary between the
    stage that makes it and the last stage that reads it; the model's output is read by the last stage.
    """
    boundaries: list[list[fx.Node]] = [[] for _ in range(count - 1)]
    for value in graph_module.graph.nodes:
        if (value.op != "placeholder" and value not in stage_of) or is_batch_scalar(value):
            continue  # a batch scalar is worked out again by each stage that reads it
        made = stage_of.get(value, 0)
        read = max((count - 1 if user.op == "output" else stage_of.get(user, made) for user in value.users),
                   default=made)
        for boundary in range(made, read):
            boundaries[boundary].append(value)
    return boundaries


def split_at(graph_module: fx.GraphModule, compute_nodes: list[fx.Node], cut: Cut) -> Split:
    """Build head and tail GraphModules for ``cut`` (its two-stage partition); the head returns a tuple."""
    head, tail = partition_graph(graph_module, compute_nodes, cut.assignment(compute_nodes), stages=2).stages
    if [t.name for t in head.outputs] != [t.name for t in cut.crossing]:
        sends, would = (", ".join(t.name for t in tensors[:3]) or "nothing" for tensors in (cut.crossing, head.outputs))
        raise CutError(f"cut {cut.index} after {cut.after} does not fit this graph (it sends {sends}, the graph would "
                       f"send {would}); take cuts from this model's trace")
    return Split(cut, head.module, tail.module)


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
        if node not in env and is_batch_scalar(node):  # the batch, from the size of a tensor this stage receives
            source = _size_source(node, inputs)
            if source is not None:
                env[node] = graph.call_function(torch.ops.aten.sym_size.int, (env[source[0]], source[1]))
            elif node.op == "call_function" and _derivable(node, inputs):
                env[node] = graph.node_copy(node, lookup)
            else:
                raise CutError(f"a stage that receives {', '.join(n.name for n in inputs[:3]) or 'nothing'} cannot "
                               f"work out the batch size {node.name} it needs; cut where a tensor with the batch "
                               "crosses")
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
