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
  with the next-fewest-bytes cuts), each in about ``CALIBRATION_SAMPLES`` of the rounds. Those keep their
  measured latencies, and the report's ``calibration`` says how far the sums were from them, and gives their
  median ratio (``scale``). The other cuts' latencies are their plain sums: rescaling them by ``scale`` did not
  help consistently against exhaustive measurement (``bench/README.md``, profiler section). Node latencies
  alone in a loop (``latency_isolated_ms``) are not taken.
- ``"all"``: every cut's head and tail are run as a whole, and each head's peak memory is measured under the
  torch profiler, and every node is also timed alone: the exhaustive mode, for studies.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Literal

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
CALIBRATION_SAMPLES = 5  # rounds in which each measured cut runs in the default mode (fewer if ``runs`` is small)


def profile_model(traced: TracedModel, *, name: str = "model", runs: int = 20, warmup: int = 3,
                  progress: bool = True, measure: Literal["calibrate", "all"] = "calibrate",
                  measure_cuts: Sequence[int | str] = ()) -> ProfileReport:
    """Measure every node and every candidate cut of ``traced`` on this machine.

    Timing runs in ``runs`` rounds; each round takes one sample of every node in context and of the whole
    model, and samples of the measured heads and tails. Interleaving matters on shared machines, whose speed
    drifts by tens of percent within seconds: every median then sees the same mix of machine states, so heads
    and their summed nodes stay comparable. ``measure`` chooses which cuts run as a whole (see the module
    docstring); ``measure_cuts`` names cuts (index or node name) to measure in the default mode too. In the
    default mode each measured cut is sampled in about ``CALIBRATION_SAMPLES`` of the rounds (every
    ``stride``-th, staggered across cuts), and the isolated per-node timings (``latency_isolated_ms``) are
    skipped: they are a study of the ``all`` mode.
    """
    if measure not in ("calibrate", "all"):
        raise ValueError(f"measure must be 'calibrate' or 'all', not {measure!r}")
    graph_module, inputs = traced.graph_module, traced.example_inputs
    named = [traced.cut(key).index for key in measure_cuts]  # an unknown cut fails before any timing
    positions = [cut.position for cut in traced.cuts]
    exhaustive = measure == "all"
    stride = 1 if exhaustive else _stride(runs)

    with progress_bar(progress) as bar:
        # Progress counts model forwards (a head and its tail count one); the total is exact once cuts are chosen.
        expected = len(traced.cuts) if exhaustive else min(len(traced.cuts), max(MAX_MEASURED_CUTS, len(named)))
        task = bar.add_task(f"profiling {name}", total=_planned_forwards(runs, warmup, expected, stride, exhaustive),
                            status="counting MACs")
        macs, uncounted = count_macs(graph_module, *inputs)
        params, weight_bytes = params_and_bytes(graph_module)
        bar.update(task, advance=1, status="warm-up")
        whole = Sampler(graph_module, inputs, warmup)
        in_context = InContextSampler(graph_module, inputs, 1)
        bar.advance(task, warmup + 2)
        if exhaustive:
            chosen = list(range(len(traced.cuts)))
            peaks = []
            captured = node_inputs(graph_module, inputs)
            isolated = [Sampler(isolated_node_call(graph_module, node, captured[node.name][1]),
                                captured[node.name][0], warmup) for node in traced.compute_nodes]
        else:
            # Sums need node latencies: a first sample, which counts as one of the ``runs``.
            bar.update(task, status="choosing the cuts to measure")
            in_context.sample()
            chosen = _cuts_to_measure(traced.cuts, _prefix_sums(in_context.median_ms), named)
            bar.update(task, total=_planned_forwards(runs, warmup, len(chosen), stride, exhaustive), advance=1,
                       status="peak memory from liveness")
            peaks = liveness_peak_bytes(graph_module, traced.compute_nodes, inputs, positions)
            isolated = []
            bar.advance(task)
        bar.update(task, status="warm-up of heads and tails")
        heads, tails = {}, {}
        for index in chosen:
            split = traced.split(traced.cuts[index])
            heads[index] = Sampler(split.head, inputs, 0)
            tails[index] = Sampler(split.tail, tuple(heads[index].output), 0)
            heads[index].output = None  # the crossing tensors live on as the tail's arguments only
            if exhaustive:
                peaks.append(peak_memory_bytes(split.head, inputs))
            bar.advance(task)
        for round_number in range(runs):
            bar.update(task, status=f"timing round {round_number + 1}/{runs}")
            if exhaustive or round_number > 0:  # round 0's in-context sample chose the cuts
                in_context.sample()
            whole.sample()
            for sampler in isolated:
                sampler.sample()
            due = [index for k, index in enumerate(chosen) if (round_number + k) % stride == 0]
            for index in due:
                heads[index].sample()
                tails[index].sample()
            bar.advance(task, (1 if exhaustive or round_number > 0 else 0) + 1 + bool(isolated) + len(due))

    nodes = [_node_profile(graph_module, index, node, macs[node.name], in_context.median_ms[index],
                           isolated[index].median_ms if isolated else None)
             for index, node in enumerate(traced.compute_nodes)]
    weights = cut_params_and_bytes(graph_module, traced.compute_nodes, positions)
    scale = _scale(traced.cuts, nodes, heads, tails)
    cuts = [_cut_profile(cut, nodes, heads.get(cut.index), tails.get(cut.index), peak, cut_weights)
            for cut, peak, cut_weights in zip(traced.cuts, peaks, weights)]
    model = ModelInfo(
        name=name, input_shapes=[list(t.shape) for t in inputs], tracer=traced.tracer,
        fallback_reason=traced.fallback_reason, fingerprint=traced.fingerprint, nodes=len(nodes),
        cuts=len(cuts), macs=sum(n.macs for n in nodes), params=params, weight_bytes=weight_bytes,
    )
    return ProfileReport(model=model, machine=machine_info(), runs=runs, model_ms=whole.median_ms,
                         uncounted_ops={k: sorted(v) for k, v in uncounted.items()}, nodes=nodes, cuts=cuts,
                         measure=measure, calibration=_calibration(cuts, len(nodes), scale))


def _stride(runs: int) -> int:
    """Measured cuts are sampled every ``stride``-th round: about ``CALIBRATION_SAMPLES`` samples each."""
    return max(1, runs // CALIBRATION_SAMPLES)


def _planned_forwards(runs: int, warmup: int, cuts: int, stride: int, exhaustive: bool) -> int:
    """Model forwards a profile makes (a head and its tail count one, all nodes timed alone count one)."""
    samples = sum(1 for r in range(runs) for k in range(cuts) if (r + k) % stride == 0)
    per_round = 2 + exhaustive
    return 1 + warmup + 2 + (0 if exhaustive else 2) + cuts + per_round * runs + samples - (not exhaustive)


def _scale(cuts: Sequence[Cut], nodes: Sequence[NodeProfile], heads: dict[int, Sampler],
           tails: dict[int, Sampler]) -> float:
    """Median of measured / summed latency over the heads and tails run as a whole (1 if there are none)."""
    sums = _prefix_sums([n.latency_ms for n in nodes])
    ratios = []
    for index, head in heads.items():
        position = cuts[index].position
        if position > 0 and sums[position] > 0:
            ratios.append(head.median_ms / sums[position])
        if position < len(nodes) and sums[-1] - sums[position] > 0:
            ratios.append(tails[index].median_ms / (sums[-1] - sums[position]))
    return statistics.median(ratios) if ratios else 1.0


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


def _calibration(cuts: Sequence[CutProfile], nodes: int, scale: float) -> Calibration:
    """Errors of the summed-node latencies against the heads and tails measured as a whole."""
    measured = [c for c in cuts if c.measured]
    heads = [abs(c.head_ms_summed - c.head_ms) / c.head_ms for c in measured if c.position > 0 and c.head_ms > 0]
    tails = [abs(c.tail_ms_summed - c.tail_ms) / c.tail_ms for c in measured if c.position < nodes and c.tail_ms > 0]
    return Calibration(cuts=[c.index for c in measured], scale=scale,
                       head_median_abs_error=statistics.median(heads) if heads else 0.0,
                       head_max_abs_error=max(heads, default=0.0),
                       tail_median_abs_error=statistics.median(tails) if tails else 0.0,
                       tail_max_abs_error=max(tails, default=0.0))


def _node_profile(graph_module: fx.GraphModule, index: int, node: fx.Node, macs: int, latency_ms: float,
                  isolated_ms: float | None) -> NodeProfile:
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
