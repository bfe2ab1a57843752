"""Measure a traced model per node and per cut: MACs, parameters, crossing bytes, latency, peak memory.

Node latency is timed *in context*: an fx pass inserts a timestamp before every node and the whole graph
runs ``runs`` times, so each op pays the cold caches and branch predictors it meets in a real forward.
Timing each op alone in a loop (``latency_isolated_ms``, with ``torch.utils.benchmark``) flatters it:
on a 2-core x86 machine summed isolated timings came out 20-40% below the measured head latency.
Head and tail latencies per cut are measured by running the head and the tail themselves.

*Profile once per machine, decide anywhere*: ``profile_model`` returns a versioned ``ProfileReport``;
``DeviceProfile`` is its machine-specific part (latencies and machine info), the file a user makes on
their Raspberry Pi or Jetson for the planner to read on any machine.

MACs: ``torch.utils.flop_counter.FlopCounterMode`` counts convolutions, matrix products and attention
(as FLOPs = 2 × MACs). We add formulas for everything else a vision model runs, in MAC-equivalents:
elementwise ops and reductions 1 per element, batch norm (inference) 1 per element, layer/group norm
2 per element, softmax 3 per element, pooling 1 per window element, and CPU attention kernels that
stock FlopCounterMode counts as 0. Ops with no formula that are not pure data movement are reported in
``uncounted_ops`` instead of silently counting 0.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, computed_field
from torch import fx
from torch.fx.passes.shape_prop import TensorMetadata
from torch.profiler import ProfilerActivity
from torch.profiler import profile as torch_profile
from torch.utils import benchmark
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_flop_count

from edgesplit.model.graph import COMPUTE_OPS, Split, TensorSpec, TracedModel, node_kind
from edgesplit.progress import progress_bar
from edgesplit.versioned import read_versioned

aten = torch.ops.aten
PROFILE_VERSION = 1
MIN_SAMPLE_SECONDS = 2e-4  # repeat fast calls within a sample so timer resolution does not dominate


# --- MAC counting -----------------------------------------------------------------------------


def _numel(shape: Any) -> int:
    return math.prod(shape) if isinstance(shape, (torch.Size, tuple, list)) else 1


def _per_output_element(macs_per_element: int) -> Callable[..., int]:
    def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return 2 * macs_per_element * _first_numel(out_shape)
    return formula


def _per_input_element(macs_per_element: int) -> Callable[..., int]:
    def formula(input_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return 2 * macs_per_element * _numel(input_shape)
    return formula


def _first_numel(shape: Any) -> int:
    # Ops such as max_pool2d_with_indices and native_layer_norm return a tuple; the first item is the result.
    while isinstance(shape, (tuple, list)) and shape and isinstance(shape[0], (torch.Size, tuple, list)):
        shape = shape[0]
    return _numel(shape)


def _pool_formula(input_shape: Any, kernel_size: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    kernel = kernel_size if isinstance(kernel_size, (tuple, list)) else (kernel_size, kernel_size)
    if len(kernel) == 1:
        kernel = (kernel[0], kernel[0])
    return 2 * _first_numel(out_shape) * math.prod(kernel)


def _sdpa_cpu_formula(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                      **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _packets(*names: str) -> list[Any]:
    return [getattr(aten, name) for name in names if hasattr(aten, name)]


ELEMENTWISE = _packets(
    "add", "sub", "rsub", "mul", "div", "relu", "relu_", "hardtanh", "hardtanh_", "clamp", "clamp_min", "clamp_max",
    "sigmoid", "tanh", "gelu", "silu", "hardswish", "hardsigmoid", "leaky_relu", "elu", "prelu", "exp", "log", "neg",
    "abs", "pow", "sqrt", "rsqrt", "reciprocal", "erf", "where", "maximum", "minimum", "masked_fill", "sin", "cos",
    "add_", "mul_", "div_", "sub_", "addcmul", "lerp", "round", "floor", "ceil", "sign", "eq", "ne", "gt", "lt",
    "ge", "le", "logical_and", "logical_or", "logical_not", "bitwise_and", "square", "log1p", "expm1", "mish",
)
REDUCTIONS = _packets("sum", "mean", "amax", "amin", "max", "min", "argmax", "argmin", "prod", "cumsum", "norm",
                      "linalg_vector_norm", "logsumexp", "any", "all")
ZERO_COST = set(_packets(
    "view", "_unsafe_view", "reshape", "_reshape_alias", "permute", "transpose", "t", "expand", "expand_as",
    "squeeze", "unsqueeze", "flatten", "unflatten", "select", "slice", "unbind", "split", "split_with_sizes",
    "chunk", "narrow", "as_strided", "alias", "detach", "lift_fresh", "view_as", "contiguous", "clone", "copy_",
    "_to_copy", "to", "cat", "stack", "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones",
    "ones_like", "full", "full_like", "fill_", "zero_", "arange", "new_zeros", "new_ones", "new_empty",
    "new_full", "embedding", "index", "index_select", "gather", "pad", "constant_pad_nd", "repeat", "roll",
    "flip", "tile", "movedim", "dropout", "native_dropout", "feature_dropout", "sym_size", "sym_stride",
    "sym_numel", "_assert_tensor_metadata", "scalar_tensor", "item", "_local_scalar_dense", "lift_fresh_copy",
    "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
))

MAC_FORMULAS: dict[Any, Callable[..., int]] = {
    **{op: _per_output_element(1) for op in ELEMENTWISE},
    **{op: _per_input_element(1) for op in REDUCTIONS},
    **{op: _per_input_element(2) for op in _packets("var", "std", "var_mean", "std_mean")},
    **{op: _per_input_element(3) for op in _packets("softmax", "_softmax", "log_softmax", "_log_softmax")},
    **{op: _per_output_element(1) for op in _packets(
        "native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training", "batch_norm")},
    **{op: _per_output_element(2) for op in _packets("native_layer_norm", "native_group_norm", "rms_norm",
                                                    "_fused_rms_norm")},
    **{op: _pool_formula for op in _packets("max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "max_pool1d",
                                           "avg_pool1d")},
    **{op: _per_input_element(1) for op in _packets("_adaptive_avg_pool2d", "adaptive_avg_pool2d",
                                                   "adaptive_max_pool2d", "adaptive_avg_pool1d")},
    **{op: _per_output_element(1) for op in _packets("upsample_nearest2d", "_upsample_nearest_exact2d")},
    **{op: _per_output_element(4) for op in _packets("upsample_bilinear2d", "_upsample_bilinear2d_aa")},
    **{op: _sdpa_cpu_formula for op in _packets("_scaled_dot_product_flash_attention_for_cpu",
                                               "_scaled_dot_product_attention_math")},
}


class _OpRecorder(TorchDispatchMode):
    """Records every ATen op that runs, so ops without a MAC formula can be reported."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[Any] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        self.ops.add(func._overloadpacket)
        return func(*args, **(kwargs or {}))


def is_counted(op: Any) -> bool:
    """Whether an ATen op has a MAC formula (ours or torch's) or is known to do no arithmetic."""
    return op in flop_registry or op in MAC_FORMULAS or op in ZERO_COST


class _CountingInterpreter(fx.Interpreter):
    def __init__(self, graph_module: fx.GraphModule, counter: FlopCounterMode, recorder: _OpRecorder) -> None:
        super().__init__(graph_module)
        self.counter, self.recorder = counter, recorder
        self.macs: dict[str, int] = {}
        self.uncounted: dict[str, set[str]] = {}

    def run_node(self, node: fx.Node) -> Any:
        before, self.recorder.ops = self.counter.get_total_flops(), set()
        result = super().run_node(node)
        self.macs[node.name] = (self.counter.get_total_flops() - before) // 2
        missing = {str(op) for op in self.recorder.ops if not is_counted(op)}
        if missing:
            self.uncounted[node.name] = missing
        return result


def count_macs(graph_module: fx.GraphModule, *inputs: torch.Tensor) -> tuple[dict[str, int], dict[str, set[str]]]:
    """MACs of every node, and the ATen ops per node that ran without a MAC formula."""
    counter = FlopCounterMode(display=False, custom_mapping=MAC_FORMULAS)
    recorder = _OpRecorder()
    interpreter = _CountingInterpreter(graph_module, counter, recorder)
    with torch.no_grad(), counter, recorder:
        interpreter.run(*inputs)
    return interpreter.macs, interpreter.uncounted


# --- timing and memory ------------------------------------------------------------------------


class Sampler:
    """Times one call with ``torch.utils.benchmark``: warms up, then each ``sample()`` is one timed sample.

    Calls faster than ``MIN_SAMPLE_SECONDS`` are repeated within a sample so timer resolution does not dominate.
    Each sample first makes one untimed call, so it measures the steady state (as for a stream of frames)
    even when other work ran just before.
    """

    def __init__(self, function: Callable[..., Any], args: tuple[Any, ...], warmup: int = 3) -> None:
        self.function, self.args = function, args
        with torch.no_grad():
            for _ in range(warmup):
                function(*args)
            self.timer = benchmark.Timer(stmt="function(*args)", globals={"function": function, "args": args},
                                         num_threads=torch.get_num_threads())
            once = max(self.timer.timeit(1).median, 1e-7)
        self.repeats = max(1, min(100, int(MIN_SAMPLE_SECONDS / once)))
        self.samples_ms: list[float] = []

    def sample(self) -> None:
        with torch.no_grad():
            self.function(*self.args)
            self.samples_ms.append(self.timer.timeit(self.repeats).median * 1e3)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)


def median_ms(function: Callable[..., Any], args: tuple[Any, ...], runs: int, warmup: int = 3) -> float:
    """Median wall time of ``function(*args)`` in milliseconds over ``runs`` samples, after ``warmup`` calls."""
    sampler = Sampler(function, args, warmup)
    for _ in range(runs):
        sampler.sample()
    return sampler.median_ms


def instrument_with_timestamps(graph_module: fx.GraphModule, stamps: list[int]) -> fx.GraphModule:
    """A copy of the graph that appends ``perf_counter_ns()`` to ``stamps`` before each compute node and at the end."""
    def stamp() -> None:  # a closure: fx would copy a list passed as a node argument
        stamps.append(time.perf_counter_ns())

    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph_module.graph.nodes:
        if node.op in COMPUTE_OPS or node.op == "output":
            graph.call_function(stamp, ())
        env[node] = graph.node_copy(node, lambda arg: env[arg])
    return fx.GraphModule(graph_module, graph)


class InContextSampler:
    """Times every compute node in context: each ``sample()`` runs the instrumented graph twice, timing the second."""

    def __init__(self, graph_module: fx.GraphModule, inputs: tuple[torch.Tensor, ...], warmup: int = 3) -> None:
        self.stamps: list[int] = []
        self.timed = instrument_with_timestamps(graph_module, self.stamps)
        self.inputs = inputs
        self.samples_ms: list[list[float]] = []
        with torch.no_grad():
            for _ in range(warmup):
                self.timed(*inputs)

    def sample(self) -> None:
        with torch.no_grad():
            self.timed(*self.inputs)
            self.stamps.clear()
            self.timed(*self.inputs)
        self.samples_ms.append([(end - start) / 1e6 for start, end in zip(self.stamps, self.stamps[1:])])

    @property
    def median_ms(self) -> list[float]:
        return [statistics.median(column) for column in zip(*self.samples_ms)]


def in_context_node_ms(graph_module: fx.GraphModule, inputs: tuple[torch.Tensor, ...], runs: int,
                       warmup: int = 3) -> list[float]:
    """Median latency in ms of each compute node, timed between timestamps during whole-graph runs."""
    sampler = InContextSampler(graph_module, inputs, warmup)
    for _ in range(runs):
        sampler.sample()
    return sampler.median_ms


@contextlib.contextmanager
def _silence_stderr_fd() -> Iterator[None]:
    # The profiler's C++ side writes start/stop banners straight to file descriptor 2.
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_bytes(function: Callable[..., Any], args: tuple[Any, ...]) -> int:
    """Peak bytes the CPU allocator holds for one call beyond what existed before (outputs and workspace)."""
    with torch.no_grad():
        function(*args)  # first-call allocations (lazy init, caches) are not part of the steady state
        with _silence_stderr_fd(), torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            function(*args)
        with tempfile.TemporaryDirectory() as folder:
            trace_path = Path(folder) / "trace.json"
            prof.export_chrome_trace(str(trace_path))
            events = json.loads(trace_path.read_text())["traceEvents"]
    deltas = [e for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0]
    live = peak = 0
    for event in sorted(deltas, key=lambda e: e["ts"]):
        live += int(event["args"]["Bytes"])
        peak = max(peak, live)
    return peak


# --- schemas ----------------------------------------------------------------------------------


class MachineInfo(BaseModel):
    """The machine a profile was measured on."""

    hostname: str
    cpu_model: str
    cores: int
    threads: int
    platform: str
    python_version: str
    torch_version: str
    memory_gb_s: float | None = None  # streaming copy bandwidth; the planner scales codec costs by it


class ModelInfo(BaseModel):
    """What was profiled: enough to check that a profile and a split describe the same graph."""

    name: str
    input_shapes: list[list[int]]
    tracer: Literal["fx", "export"]
    fallback_reason: str | None = None
    fingerprint: str
    nodes: int
    cuts: int
    macs: int
    params: int
    weight_bytes: int


class NodeProfile(BaseModel):
    index: int
    name: str
    kind: str
    target: str
    output_shape: list[int] | None
    output_bytes: int
    macs: int
    params: int
    latency_ms: float
    latency_isolated_ms: float


class CutProfile(BaseModel):
    index: int
    position: int
    after: str
    crossing: list[TensorSpec]
    crossing_bytes: int
    head_macs: int
    tail_macs: int
    head_params: int
    head_weight_bytes: int
    tail_params: int
    tail_weight_bytes: int
    head_ms: float
    head_ms_summed: float
    tail_ms: float
    tail_ms_summed: float
    head_peak_bytes: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def head_ms_error(self) -> float:
        """Relative error of the summed-node estimate against the measured head latency."""
        return (self.head_ms_summed - self.head_ms) / self.head_ms if self.head_ms > 0 else 0.0


class ProfileReport(BaseModel):
    """Everything ``edgesplit profile`` measured; versioned JSON."""

    version: int = PROFILE_VERSION
    kind: Literal["edgesplit.profile"] = "edgesplit.profile"
    model: ModelInfo
    machine: MachineInfo
    runs: int
    model_ms: float
    uncounted_ops: dict[str, list[str]]
    nodes: list[NodeProfile]
    cuts: list[CutProfile]


class CutLatency(BaseModel):
    index: int
    position: int
    after: str
    head_ms: float
    tail_ms: float
    head_peak_bytes: int


class NodeLatency(BaseModel):
    name: str
    latency_ms: float


class DeviceProfile(BaseModel):
    """Latencies of one model measured on one machine: what the planner needs to know about a device."""

    version: int = PROFILE_VERSION
    kind: Literal["edgesplit.device-profile"] = "edgesplit.device-profile"
    name: str
    machine: MachineInfo
    model: ModelInfo
    model_ms: float
    nodes: list[NodeLatency]
    cuts: list[CutLatency]


def device_profile(report: ProfileReport, name: str) -> DeviceProfile:
    """The machine-specific part of a profile, named after the device it was measured on."""
    return DeviceProfile(
        name=name, machine=report.machine, model=report.model, model_ms=report.model_ms,
        nodes=[NodeLatency(name=n.name, latency_ms=n.latency_ms) for n in report.nodes],
        cuts=[CutLatency(index=c.index, position=c.position, after=c.after, head_ms=c.head_ms, tail_ms=c.tail_ms,
                         head_peak_bytes=c.head_peak_bytes) for c in report.cuts],
    )


def load_device_profile(path: str | Path) -> DeviceProfile:
    """Read a device profile JSON, refusing other kinds and versions with a clear message."""
    return read_versioned(path, DeviceProfile, kind="edgesplit.device-profile", version=PROFILE_VERSION,
                          what="device profile", again="measure it again",
                          make="`edgesplit profile MODEL --save-device NAME.json` on that device")


def machine_info() -> MachineInfo:
    """Describe this machine: CPU model, cores, torch threads, versions."""
    return MachineInfo(
        hostname=socket.gethostname(), cpu_model=_cpu_model(), cores=os.cpu_count() or 1,
        threads=torch.get_num_threads(), platform=platform.platform(),
        python_version=platform.python_version(), torch_version=torch.__version__,
        memory_gb_s=round(memory_bandwidth_gb_s(), 2),
    )


def memory_bandwidth_gb_s(megabytes: int = 32, repeats: int = 5) -> float:
    """This machine's streaming copy bandwidth (bytes read + written per second), best of ``repeats``."""
    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() * 4 / best / 1e9


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            # x86 says "model name"; Raspberry Pi and Jetson kernels say "Model" or "Hardware".
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --- profiling --------------------------------------------------------------------------------


def _params_and_bytes(module: torch.nn.Module) -> tuple[int, int]:
    params = sum(p.numel() for p in module.parameters())
    seen: set[int] = set()
    weight_bytes = 0
    for tensor in module.state_dict(keep_vars=True).values():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            weight_bytes += tensor.numel() * tensor.element_size()
    return params, weight_bytes


def _node_params(graph_module: fx.GraphModule, node: fx.Node) -> int:
    if node.op == "call_module":
        return sum(p.numel() for p in graph_module.get_submodule(node.target).parameters())
    return sum(_fetch_attr(graph_module, arg.target).numel()
               for arg in node.all_input_nodes if arg.op == "get_attr")


def _fetch_attr(module: torch.nn.Module, target: str) -> torch.Tensor:
    for part in target.split("."):
        module = getattr(module, part)
    return module  # type: ignore[return-value]


def _node_inputs(traced: TracedModel) -> dict[str, tuple[tuple[Any, ...], dict[str, Any]]]:
    """Concrete args and kwargs of every compute node, captured from one run of the graph."""
    captured: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    class Capture(fx.Interpreter):
        def run_node(self, node: fx.Node) -> Any:
            if node.op in COMPUTE_OPS:
                args, kwargs = self.fetch_args_kwargs_from_env(node)
                captured[node.name] = (args, kwargs)
            return super().run_node(node)

    with torch.no_grad():
        Capture(traced.graph_module).run(*traced.example_inputs)
    return captured


def _node_callable(graph_module: fx.GraphModule, node: fx.Node) -> Callable[..., Any]:
    """The callable a node runs, invoked the way the generated forward invokes it."""
    if node.op == "call_module":
        return graph_module.get_submodule(node.target)
    if node.op == "call_function":
        return node.target  # type: ignore[return-value]
    return lambda receiver, *args, **kwargs: getattr(receiver, node.target)(*args, **kwargs)


def profile_model(traced: TracedModel, *, name: str = "model", runs: int = 20, warmup: int = 3,
                  progress: bool = True) -> ProfileReport:
    """Measure every node and every candidate cut of ``traced`` on this machine.

    Timing runs in ``runs`` rounds; each round takes one sample of every node, head, tail and the whole model.
    Interleaving matters on shared machines, whose speed drifts by tens of percent within seconds: every
    median then sees the same mix of machine states, so heads and their summed nodes stay comparable.
    """
    graph_module, inputs = traced.graph_module, traced.example_inputs
    macs, uncounted = count_macs(graph_module, *inputs)
    params, weight_bytes = _params_and_bytes(graph_module)
    node_inputs = _node_inputs(traced)
    splits = [traced.split(cut) for cut in traced.cuts]

    with progress_bar(progress) as bar:
        task = bar.add_task(f"profiling {name}", total=len(splits) + runs, status="warm-up and memory")
        in_context = InContextSampler(graph_module, inputs, warmup)
        whole = Sampler(graph_module, inputs, warmup)
        isolated = [Sampler(_node_call(graph_module, node, node_inputs[node.name][1]), node_inputs[node.name][0], warmup)
                    for node in traced.compute_nodes]
        heads, tails, peaks = [], [], []
        for split in splits:
            with torch.no_grad():
                crossing = tuple(split.head(*inputs))
            heads.append(Sampler(split.head, inputs, warmup))
            tails.append(Sampler(split.tail, crossing, warmup))
            peaks.append(peak_memory_bytes(split.head, inputs))
            bar.advance(task)
        for round_number in range(runs):
            bar.update(task, status=f"timing round {round_number + 1}/{runs}")
            for sampler in (in_context, whole, *isolated, *heads, *tails):
                sampler.sample()
            bar.advance(task)

    nodes = [_node_profile(graph_module, index, node, macs[node.name], in_context.median_ms[index],
                           isolated[index].median_ms) for index, node in enumerate(traced.compute_nodes)]
    cuts = [_cut_profile(split, nodes, head.median_ms, tail.median_ms, peak)
            for split, head, tail, peak in zip(splits, heads, tails, peaks)]
    model = ModelInfo(
        name=name, input_shapes=[list(t.shape) for t in inputs], tracer=traced.tracer,
        fallback_reason=traced.fallback_reason, fingerprint=traced.fingerprint, nodes=len(nodes),
        cuts=len(cuts), macs=sum(n.macs for n in nodes), params=params, weight_bytes=weight_bytes,
    )
    return ProfileReport(model=model, machine=machine_info(), runs=runs, model_ms=whole.median_ms,
                         uncounted_ops={k: sorted(v) for k, v in uncounted.items()}, nodes=nodes, cuts=cuts)


def _node_call(graph_module: fx.GraphModule, node: fx.Node, kwargs: dict[str, Any]) -> Callable[..., Any]:
    function = _node_callable(graph_module, node)
    return functools.partial(function, **kwargs) if kwargs else function


def _node_profile(graph_module: fx.GraphModule, index: int, node: fx.Node, macs: int, latency_ms: float,
                  isolated_ms: float) -> NodeProfile:
    meta = node.meta.get("tensor_meta")
    shape = list(meta.shape) if isinstance(meta, TensorMetadata) else None
    return NodeProfile(
        index=index, name=node.name, kind=node_kind(node), target=str(node.target), output_shape=shape,
        output_bytes=math.prod(shape) * meta.dtype.itemsize if shape is not None else 0,
        macs=macs, params=_node_params(graph_module, node), latency_ms=latency_ms, latency_isolated_ms=isolated_ms,
    )


def _cut_profile(split: Split, nodes: list[NodeProfile], head_ms: float, tail_ms: float, head_peak_bytes: int,
                 ) -> CutProfile:
    cut = split.cut
    head_nodes, tail_nodes = nodes[:cut.position], nodes[cut.position:]
    head_params, head_bytes = _params_and_bytes(split.head)
    tail_params, tail_bytes = _params_and_bytes(split.tail)
    return CutProfile(
        index=cut.index, position=cut.position, after=cut.after,
        crossing=list(cut.crossing), crossing_bytes=cut.crossing_bytes,
        head_macs=sum(n.macs for n in head_nodes), tail_macs=sum(n.macs for n in tail_nodes),
        head_params=head_params, head_weight_bytes=head_bytes, tail_params=tail_params, tail_weight_bytes=tail_bytes,
        head_ms=head_ms, head_ms_summed=sum(n.latency_ms for n in head_nodes),
        tail_ms=tail_ms, tail_ms_summed=sum(n.latency_ms for n in tail_nodes), head_peak_bytes=head_peak_bytes,
    )
