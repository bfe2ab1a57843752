"""Time calls and graph nodes on this machine: medians of samples, nodes timed in context or in isolation.

Node latency is timed *in context*: an fx pass inserts a timestamp before every node and the whole graph
runs ``runs`` times, so each op pays the cold caches and branch predictors it meets in a real forward.
Timing each op alone in a loop (``latency_isolated_ms``, ``--measure all`` only) flatters it:
on a 2-core x86 machine summed isolated timings came out 20-40% below the measured head latency.

Each timer is a *sampler* that takes one sample per ``sample()`` call, so a caller can interleave the
samples of many timers in rounds (see ``edgesplit.profile.profiler``); ``median_ms`` and
``in_context_node_ms`` are the one-timer shorthands.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import fx

from edgesplit.model.graph import COMPUTE_OPS

__all__ = ["MIN_SAMPLE_SECONDS", "InContextSampler", "Sampler", "in_context_node_ms", "instrument_with_timestamps",
           "isolated_node_call", "median_ms", "node_inputs"]

MIN_SAMPLE_SECONDS = 2e-4  # repeat fast calls within a sample so timer resolution does not dominate


class Sampler:
    """Times one call with ``time.perf_counter``: warms up, then each ``sample()`` is one timed sample.

    The constructor makes ``warmup`` untimed calls and one timed call that sizes a sample (its result is kept in
    ``output``). Calls faster than ``MIN_SAMPLE_SECONDS`` are repeated within a sample so timer resolution does
    not dominate, and such a sample first makes one untimed call, so it measures the steady state (as for a
    stream of frames) even when other work ran just before; that costs little since the call is short. Longer
    calls are timed once per sample, without that priming call, so a sample costs one call.
    """

    def __init__(self, function: Callable[..., Any], args: tuple[Any, ...], warmup: int = 3) -> None:
        self.function, self.args = function, args
        with torch.no_grad():
            for _ in range(warmup):
                function(*args)
            start = time.perf_counter()
            self.output = function(*args)
            once = max(time.perf_counter() - start, 1e-7)
        self.repeats = max(1, min(100, int(MIN_SAMPLE_SECONDS / once)))
        self.prime = self.repeats > 1
        self.samples_ms: list[float] = []

    def sample(self) -> None:
        function, args, repeats = self.function, self.args, self.repeats
        with torch.no_grad():
            if self.prime:
                function(*args)
            start = time.perf_counter()
            for _ in range(repeats):
                function(*args)
            self.samples_ms.append((time.perf_counter() - start) / repeats * 1e3)

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
    """Times every compute node in context: each ``sample()`` runs the instrumented graph once.

    A sample is not primed by an untimed run: within a profile's round it follows other runs of the same model."""

    def __init__(self, graph_module: fx.GraphModule, inputs: tuple[torch.Tensor, ...], warmup: int = 3) -> None:
        self.stamps: list[int] = []
        self.timed = instrument_with_timestamps(graph_module, self.stamps)
        self.inputs = inputs
        self.samples_ms: list[list[float]] = []
        with torch.no_grad():
            for _ in range(warmup):
                self.timed(*inputs)

    def sample(self) -> None:
        self.stamps.clear()
        with torch.no_grad():
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


# --- one node alone: what ``latency_isolated_ms`` times with a ``Sampler`` ----------------------


def node_inputs(graph_module: fx.GraphModule, inputs: tuple[torch.Tensor, ...],
                ) -> dict[str, tuple[tuple[Any, ...], dict[str, Any]]]:
    """Concrete args and kwargs of every compute node, captured from one run of the graph."""
    captured: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    class Capture(fx.Interpreter):
        def run_node(self, node: fx.Node) -> Any:
            if node.op in COMPUTE_OPS:
                args, kwargs = self.fetch_args_kwargs_from_env(node)
                captured[node.name] = (args, kwargs)
            return super().run_node(node)

    with torch.no_grad():
        Capture(graph_module).run(*inputs)
    return captured


def isolated_node_call(graph_module: fx.GraphModule, node: fx.Node, kwargs: dict[str, Any]) -> Callable[..., Any]:
    """The callable a node runs with its captured ``kwargs`` bound, to be called with its captured args."""
    function = _node_callable(graph_module, node)
    return functools.partial(function, **kwargs) if kwargs else function


def _node_callable(graph_module: fx.GraphModule, node: fx.Node) -> Callable[..., Any]:
    """The callable a node runs, invoked the way the generated forward invokes it."""
    if node.op == "call_module":
        return graph_module.get_submodule(node.target)
    if node.op == "call_function":
        return node.target  # type: ignore[return-value]
    return lambda receiver, *args, **kwargs: getattr(receiver, node.target)(*args, **kwargs)
