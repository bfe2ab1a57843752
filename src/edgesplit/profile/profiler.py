"""Profile a traced model: count, time and measure every node and every candidate cut, into a ``ProfileReport``.

This module only orchestrates: MACs come from ``macs``, parameters and weight bytes from ``weights``, latencies
from the samplers of ``timing``, peak memory from ``memory``, host facts from ``machine``; the records it fills
are declared in ``schema``. Node latencies are timed in context during whole-graph runs; head and tail
latencies per cut are measured by running the head and the tail themselves, and head peak memory by running
the head under the torch profiler.
"""

from __future__ import annotations

import math

import torch
from torch import fx
from torch.fx.passes.shape_prop import TensorMetadata

from edgesplit.model.graph import Split, TracedModel, node_kind
from edgesplit.profile.machine import machine_info
from edgesplit.profile.macs import count_macs
from edgesplit.profile.memory import peak_memory_bytes
from edgesplit.profile.schema import CutProfile, ModelInfo, NodeProfile, ProfileReport
from edgesplit.profile.timing import InContextSampler, Sampler, isolated_node_call, node_inputs
from edgesplit.profile.weights import node_params, params_and_bytes
from edgesplit.progress import progress_bar

__all__ = ["profile_model"]


def profile_model(traced: TracedModel, *, name: str = "model", runs: int = 20, warmup: int = 3,
                  progress: bool = True) -> ProfileReport:
    """Measure every node and every candidate cut of ``traced`` on this machine.

    Timing runs in ``runs`` rounds; each round takes one sample of every node, head, tail and the whole model.
    Interleaving matters on shared machines, whose speed drifts by tens of percent within seconds: every
    median then sees the same mix of machine states, so heads and their summed nodes stay comparable.
    """
    graph_module, inputs = traced.graph_module, traced.example_inputs
    macs, uncounted = count_macs(graph_module, *inputs)
    params, weight_bytes = params_and_bytes(graph_module)
    captured = node_inputs(graph_module, inputs)
    splits = [traced.split(cut) for cut in traced.cuts]

    with progress_bar(progress) as bar:
        task = bar.add_task(f"profiling {name}", total=len(splits) + runs, status="warm-up and memory")
        in_context = InContextSampler(graph_module, inputs, warmup)
        whole = Sampler(graph_module, inputs, warmup)
        isolated = [Sampler(isolated_node_call(graph_module, node, captured[node.name][1]), captured[node.name][0],
                            warmup) for node in traced.compute_nodes]
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


def _node_profile(graph_module: fx.GraphModule, index: int, node: fx.Node, macs: int, latency_ms: float,
                  isolated_ms: float) -> NodeProfile:
    meta = node.meta.get("tensor_meta")
    shape = list(meta.shape) if isinstance(meta, TensorMetadata) else None
    return NodeProfile(
        index=index, name=node.name, kind=node_kind(node), target=str(node.target), output_shape=shape,
        output_bytes=math.prod(shape) * meta.dtype.itemsize if shape is not None else 0,
        macs=macs, params=node_params(graph_module, node), latency_ms=latency_ms, latency_isolated_ms=isolated_ms,
    )


def _cut_profile(split: Split, nodes: list[NodeProfile], head_ms: float, tail_ms: float, head_peak_bytes: int,
                 ) -> CutProfile:
    cut = split.cut
    head_nodes, tail_nodes = nodes[:cut.position], nodes[cut.position:]
    head_params, head_bytes = params_and_bytes(split.head)
    tail_params, tail_bytes = params_and_bytes(split.tail)
    return CutProfile(
        index=cut.index, position=cut.position, after=cut.after,
        crossing=list(cut.crossing), crossing_bytes=cut.crossing_bytes,
        head_macs=sum(n.macs for n in head_nodes), tail_macs=sum(n.macs for n in tail_nodes),
        head_params=head_params, head_weight_bytes=head_bytes, tail_params=tail_params, tail_weight_bytes=tail_bytes,
        head_ms=head_ms, head_ms_summed=sum(n.latency_ms for n in head_nodes),
        tail_ms=tail_ms, tail_ms_summed=sum(n.latency_ms for n in tail_nodes), head_peak_bytes=head_peak_bytes,
    )
