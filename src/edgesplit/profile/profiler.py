"""Profile a traced model: count, time and measure every node and every candidate cut, into a ``ProfileReport``.

This module only orchestrates: MACs come from ``macs``, parameters and weight bytes from ``weights``, latencies
from the samplers of ``timing``, peak memory from ``memory``, host facts from ``machine``; the records it fills
are declared in ``schema``. Node latencies are timed in context during whole-graph runs.

Two modes (``measure``):

- ``"calibrate"`` (the default): a cut's head and tail latencies are the sums of their nodes' latencies, and
  its head's peak memory comes from the liveness of the graph's tensors (``liveness_peak_bytes``), so the cost
  grows with the model, not with the model times its cuts. Only a few cuts, at most ``MAX_MEASURED_CUTS``,
  have their head and tail run as a whole: the ones a planner could choose (the fewest crossing bytes, the
  Pareto front of crossing bytes against head latency, and any the caller names; at least ``MIN_MEASURED_CUTS``
  with the next-fewest-bytes cuts). Those keep their measured
  latencies, and the report's ``calibration`` says how far the sums were from them.
- ``"all"``: every cut's head and tail are run as a whole, and each head's peak memory is measured under the
  torch profiler: the exhaustive mode, for studies.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Literal

import torch
from torch import fx
from torch.fx.passes.shape_prop import TensorMetadata

from edgesplit.model.graph import Cut, TracedModel, node_kind
from edgesplit.profile.machine import machine_info
from edgesplit.profile.macs import count_macs
from edgesplit.profile.memory import liveness_peak_bytes, peak_memory_bytes
from edgesplit.profile.schema import Calibration, CutProfile, ModelInfo, NodeProfile, ProfileReport
from edgesplit.profile.timing import InContextSampler, Sampler, isolated_node_call, node_inputs
from edgesplit.profile.weights import cut_params_and_bytes, node_params, params_and_bytes
from edgesplit.progress import progress_bar

__all__ = ["MAX_MEASURED_CUTS", "profile_model"]

MAX_MEASURED_CUTS = 8  # cuts whose head and tail run as a whole in the default mode (named cuts come first)
MIN_MEASURED_CUTS = 4  # a short Pareto front is topped up with the next-fewest-bytes cuts, to calibrate on


def profile_model(traced: TracedModel, *, name: str = "model", runs: int = 20, warmup: int = 3,
                  progress: bool = True, measure: Literal["calibrate", "all"] = "calibrate",
                  measure_cuts: Sequence[int | str] = ()) -> ProfileReport:
    """Measure every node and every candidate cut of ``traced`` on this machine.

    Timing runs in ``runs`` rounds; each round takes one sample of every node, of the whole model, and of
    each measured head and tail. Interleaving matters on shared machines, whose speed drifts by tens of
    percent within seconds: every median then sees the same mix of machine states, so heads and their summed
    nodes stay comparable. ``measure`` chooses which cuts run as a whole (see the module docstring);
    ``measure_cuts`` names cuts (index or node name) to measure in the default mode too.
    """
    if measure not in ("calibrate", "all"):
        raise ValueError(f"measure must be 'calibrate' or 'all', not {measure!r}")
    graph_module, inputs = traced.graph_module, traced.example_inputs
    macs, uncounted = count_macs(graph_module, *inputs)
    params, weight_bytes = params_and_bytes(graph_module)
    captured = node_inputs(graph_module, inputs)
    positions = [cut.position for cut in traced.cuts]
    exhaustive = measure == "all"

    with progress_bar(progress) as bar:
        task = bar.add_task(f"profiling {name}", total=None, status="warm-up and node timing")
        in_context = InContextSampler(graph_module, inputs, warmup)
        whole = Sampler(graph_module, inputs, warmup)
        isolated = [Sampler(isolated_node_call(graph_module, node, captured[node.name][1]), captured[node.name][0],
                            warmup) for node in traced.compute_nodes]
        if exhaustive:
            chosen = list(range(len(traced.cuts)))
            peaks = []
        else:
            # Sums need node latencies: a first round, which counts as one of the ``runs``.
            in_context.sample()
            summed = _prefix_sums(in_context.median_ms)
            named = [traced.cut(key).index for key in measure_cuts]
            chosen = _cuts_to_measure(traced.cuts, summed, named)
            peaks = liveness_peak_bytes(graph_module, traced.compute_nodes, inputs, positions)
        bar.update(task, total=len(chosen) + runs, status="warm-up of heads and tails")
        heads, tails = {}, {}
        for index in chosen:
            split = traced.split(traced.cuts[index])
            with torch.no_grad():
                crossing = tuple(split.head(*inputs))
            heads[index] = Sampler(split.head, inputs, warmup)
            tails[index] = Sampler(split.tail, crossing, warmup)
            if exhaustive:
                peaks.append(peak_memory_bytes(split.head, inputs))
            bar.advance(task)
        for round_number in range(runs):
            bar.update(task, status=f"timing round {round_number + 1}/{runs}")
            sampled_already = not exhaustive and round_number == 0  # the round that chose the cuts
            for sampler in ((in_context,) if not sampled_already else ()) + (whole, *isolated):
                sampler.sample()
            for index in chosen:
                heads[index].sample()
                tails[index].sample()
            bar.advance(task)

    nodes = [_node_profile(graph_module, index, node, macs[node.name], in_context.median_ms[index],
                           isolated[index].median_ms) for index, node in enumerate(traced.compute_nodes)]
    weights = cut_params_and_bytes(graph_module, traced.compute_nodes, positions)
    cuts = [_cut_profile(cut, nodes, heads.get(cut.index), tails.get(cut.index), peak, cut_weights)
            for cut, peak, cut_weights in zip(traced.cuts, peaks, weights)]
    model = ModelInfo(
        name=name, input_shapes=[list(t.shape) for t in inputs], tracer=traced.tracer,
        fallback_reason=traced.fallback_reason, fingerprint=traced.fingerprint, nodes=len(nodes),
        cuts=len(cuts), macs=sum(n.macs for n in nodes), params=params, weight_bytes=weight_bytes,
    )
    return ProfileReport(model=model, machine=machine_info(), runs=runs, model_ms=whole.median_ms,
                         uncounted_ops={k: sorted(v) for k, v in uncounted.items()}, nodes=nodes, cuts=cuts,
                         measure=measure, calibration=_calibration(cuts, len(nodes)))


def _prefix_sums(values: Sequence[float]) -> list[float]:
    sums = [0.0]
    for value in values:
        sums.append(sums[-1] + value)
    return sums


def _cuts_to_measure(cuts: Sequence[Cut], summed: Sequence[float], named: Sequence[int]) -> list[int]:
    """Indices of the cuts a planner could choose, at most ``MAX_MEASURED_CUTS`` (more only if named): the named
    ones, the one with the fewest crossing bytes, and the Pareto front of crossing bytes against summed head
    latency, evenly thinned along the front if it does not fit; topped up to ``MIN_MEASURED_CUTS`` with the
    next-fewest-bytes cuts."""
    chosen = list(dict.fromkeys(named))
    fewest = min(cuts, key=lambda c: (c.crossing_bytes, c.position)).index
    if fewest not in chosen and len(chosen) < MAX_MEASURED_CUTS:
        chosen.append(fewest)
    front, best = [], math.inf
    for cut in sorted(cuts, key=lambda c: (summed[c.position], c.crossing_bytes, c.position)):
        if cut.crossing_bytes < best:
            best = cut.crossing_bytes
            if cut.index not in chosen:
                front.append(cut.index)
    slots = MAX_MEASURED_CUTS - len(chosen)
    if len(front) <= slots:
        chosen.extend(front)
    elif slots == 1:
        chosen.append(front[len(front) // 2])
    elif slots > 1:
        chosen.extend(front[round(k * (len(front) - 1) / (slots - 1))] for k in range(slots))
    for cut in sorted(cuts, key=lambda c: (c.crossing_bytes, c.position)):
        if len(set(chosen)) >= MIN_MEASURED_CUTS:
            break
        chosen.append(cut.index)
    return sorted(set(chosen))


def _calibration(cuts: Sequence[CutProfile], nodes: int) -> Calibration:
    """Errors of the summed-node latencies against the heads and tails measured as a whole."""
    measured = [c for c in cuts if c.measured]
    heads = [abs(c.head_ms_summed - c.head_ms) / c.head_ms for c in measured if c.position > 0 and c.head_ms > 0]
    tails = [abs(c.tail_ms_summed - c.tail_ms) / c.tail_ms for c in measured if c.position < nodes and c.tail_ms > 0]
    return Calibration(cuts=[c.index for c in measured],
                       head_median_abs_error=statistics.median(heads) if heads else 0.0,
                       head_max_abs_error=max(heads, default=0.0),
                       tail_median_abs_error=statistics.median(tails) if tails else 0.0,
                       tail_max_abs_error=max(tails, default=0.0))


def _node_profile(graph_module: fx.GraphModule, index: int, node: fx.Node, macs: int, latency_ms: float,
                  isolated_ms: float) -> NodeProfile:
    meta = node.meta.get("tensor_meta")
    shape = list(meta.shape) if isinstance(meta, TensorMetadata) else None
    return NodeProfile(
        index=index, name=node.name, kind=node_kind(node), target=str(node.target), output_shape=shape,
        output_bytes=math.prod(shape) * meta.dtype.itemsize if shape is not None else 0,
        macs=macs, params=node_params(graph_module, node), latency_ms=latency_ms, latency_isolated_ms=isolated_ms,
    )


def _cut_profile(cut: Cut, nodes: list[NodeProfile], head: Sampler | None, tail: Sampler | None,
                 head_peak_bytes: int, weights: tuple[int, int, int, int]) -> CutProfile:
    """A cut's record; ``head`` and ``tail`` are its samplers if it ran as a whole, else its sums stand in."""
    head_nodes, tail_nodes = nodes[:cut.position], nodes[cut.position:]
    head_params, head_bytes, tail_params, tail_bytes = weights
    head_summed = sum(n.latency_ms for n in head_nodes)
    tail_summed = sum(n.latency_ms for n in tail_nodes)
    return CutProfile(
        index=cut.index, position=cut.position, after=cut.after,
        crossing=list(cut.crossing), crossing_bytes=cut.crossing_bytes,
        head_macs=sum(n.macs for n in head_nodes), tail_macs=sum(n.macs for n in tail_nodes),
        head_params=head_params, head_weight_bytes=head_bytes, tail_params=tail_params, tail_weight_bytes=tail_bytes,
        head_ms=head.median_ms if head else head_summed, head_ms_summed=head_summed,
        tail_ms=tail.median_ms if tail else tail_summed, tail_ms_summed=tail_summed,
        head_peak_bytes=head_peak_bytes, measured=head is not None,
    )
