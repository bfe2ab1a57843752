"""Choose the plan: every candidate costed, the min-cut's optimum added, constraints applied, the switch table built.

Candidates are all-device, all-server (the input as 8-bit pixels, PNG, JPEG or the float tensor), every
topological-prefix cut (the chain scan), and every head the s–t minimum cut returns across the bandwidth sweep
(predecessor-closed sets that need not be prefixes). Additive objectives (latency, energy, weighted) are
optimized exactly over all closed heads by the min-cut; throughput (the slowest pipeline stage) is not a sum,
so it is taken over the candidates.
"""

from __future__ import annotations

import bisect
import functools
import gc
import math
import time
from dataclasses import dataclass

import numpy as np

from edgesplit.compress.payload import InputFormat, PlanCodec, ReportedCodec
from edgesplit.errors import EdgesplitError
from edgesplit.plan.costs import Candidate, CostModel, LinkSweep, Objective, TransferCosts, trusted
from edgesplit.plan.hardware import Link
from edgesplit.plan.leakage import LeakageTable, bounded, leakage_violations
from edgesplit.plan.mincut import FlowGraph
from edgesplit.plan.schema import Constraints, Costs, LinkSummary, MachineSummary, PlanEntry, PlanReport, SwitchRange

__all__ = ["PlanError", "make_plan"]

SWEEP_MBPS = (0.1, 1000.0)
_SWEEP_POINTS = 161  # 40 per decade: then each boundary is refined by bisection
_MINCUT_POINTS = 9  # min-cut solves across the sweep (2 per decade), refined where neighbours differ


class PlanError(EdgesplitError):
    """No plan satisfies the constraints."""


@dataclass(slots=True)
class Scored:
    candidate: Candidate
    costs: Costs
    violations: list[str]
    value: float  # the objective's value of ``costs``, worked out once


def candidates(model: CostModel, objective: Objective, formats: list[InputFormat], method: str = "scipy",
               codecs: list[PlanCodec] = (), reported: list[tuple[ReportedCodec, int]] = (),
               heads: set[frozenset[str]] | None = None) -> list[Candidate]:
    """All-device, all-server in each input format, every prefix cut with each codec, the configurations
    `edgesplit compress` measured at their cut, and the min-cut's heads across bandwidths (``heads``, when
    the caller has found them already)."""
    workload = model.workload
    found = [Candidate("all on device", "all-device", len(workload.nodes))]
    found += [Candidate(f"all on server ({fmt.name} input)", "all-server", 0, input_format=fmt) for fmt in formats]
    for cut in workload.prefix_cuts:
        if cut.position == len(workload.nodes):
            continue  # computing everything and then shipping the result adds nothing to all-device
        if cut.position == 0:
            found.append(Candidate(f"all on server ({model.codec.name} tensor)", "all-server", 0))
        else:
            found.append(Candidate(_cut_label(cut, model.codec), "split", cut.position))
            found += [Candidate(_cut_label(cut, codec), "split", cut.position, codec=codec) for codec in codecs]
    for codec, position in reported:
        label = f"cut {workload.cut_at[position].index} after {workload.cut_at[position].after} [{codec.name}, measured]"
        found.append(Candidate(label, "split", position, codec=codec))
    if objective.additive:
        found_heads = min_cut_heads(model, objective, method) if heads is None else heads
        for head in sorted(found_heads, key=len):
            if workload.position_of_prefix(head) is None:  # prefixes are candidates already
                found.append(Candidate(_min_cut_label(model, head), "split", None, head=head))
    return found


def _cut_label(cut, codec: PlanCodec) -> str:  # noqa: ANN001 - Cut
    return f"cut {cut.index} after {cut.after}" + ("" if codec.name == "fp32" else f" [{codec.name}]")


def _min_cut_label(model: CostModel, head: frozenset[str]) -> str:
    names = [t.name for t in model.workload.crossing(head)]
    return f"min-cut head of {len(head)} nodes, sends {'+'.join(names)}"


def min_cut_heads(model: CostModel, objective: Objective, method: str = "scipy") -> set[frozenset[str]]:
    """The optimal closed heads at the link's bandwidth and across the sweep, refined where they change."""
    return _sweep_heads(model, objective, FlowGraph(model.placement_problem(objective)), method)[0]


def _sweep_heads(model: CostModel, objective: Objective, graph: FlowGraph,
                 method: str) -> tuple[set[frozenset[str]], frozenset[str]]:
    """``min_cut_heads`` on a compiled flow graph, and the head at the link's own bandwidth (inputs included).

    The flow graph is compiled once; each solve changes only the transfer capacities (see TransferCosts).
    """
    transfer = TransferCosts(model, objective, graph)
    inputs = frozenset(model.workload.inputs)

    def solve(mbps: float) -> frozenset[str]:
        _, head = graph.solve(transfer.at(model.link.at_uplink(mbps)), method=method)
        return head - inputs

    at_link = solve(model.link.uplink_mbps)
    heads = {at_link}
    grid = list(np.geomspace(*SWEEP_MBPS, _MINCUT_POINTS))
    solutions = [solve(b) for b in grid]
    heads.update(solutions)
    for (low, low_head), (high, high_head) in zip(zip(grid, solutions), zip(grid[1:], solutions[1:])):
        _refine(solve, low, low_head, high, high_head, heads, depth=4)
    return heads, at_link | inputs


def _refine(solve, low: float, low_head, high: float, high_head, heads: set, depth: int) -> None:  # noqa: ANN001
    if low_head == high_head or depth == 0:
        return
    middle = math.sqrt(low * high)
    head = solve(middle)
    heads.add(head)
    _refine(solve, low, low_head, middle, head, heads, depth - 1)
    _refine(solve, middle, head, high, high_head, heads, depth - 1)


def violations(model: CostModel, candidate: Candidate, costs: Costs, constraints: Constraints,
               leakage: LeakageTable | None) -> list[str]:
    """What keeps ``candidate`` from being allowed: memory, the raw input leaving, bytes per inference, leakage."""
    found: list[str] = []
    device = model.device
    memory = constraints.device_memory_bytes or device.memory_bytes
    if memory is not None:
        needed = costs.head_memory_bytes
        if device.weight_storage_bytes is not None:
            if costs.head_weight_bytes > device.weight_storage_bytes:
                found.append(f"weights need {_mb(costs.head_weight_bytes)} of {_mb(device.weight_storage_bytes)} storage")
        else:
            needed += costs.head_weight_bytes
        if needed > memory:
            found.append(f"needs {_mb(needed)} of device memory, {_mb(memory)} available")
    if constraints.keep_input_on_device:
        if candidate.kind == "all-server":
            found.append("the raw input leaves the device, which --keep-input forbids")
        elif candidate.kind == "split" and (sent := [t.name for t in model.crossing(candidate)
                                                      if t.name in model.workload.inputs]):
            found.append(f"the raw input ({', '.join(sent)}) crosses the link beside the features, which "
                         "--keep-input forbids")
    if constraints.max_uplink_bytes is not None and costs.uplink_bytes > constraints.max_uplink_bytes:
        found.append(f"sends {costs.uplink_bytes:,} B, more than {constraints.max_uplink_bytes:,} B")
    drop = getattr(candidate.codec, "accuracy_drop", None)
    if constraints.max_accuracy_drop is not None and drop is not None and drop > constraints.max_accuracy_drop:
        found.append(f"accuracy drop {drop * 100:.2f} pt above {constraints.max_accuracy_drop * 100:g} pt")
    if leakage is not None and bounded(constraints):
        found += _leakage_violations(candidate, constraints, leakage)
    return found


def _leakage_violations(candidate: Candidate, constraints: Constraints, leakage: LeakageTable) -> list[str]:
    if candidate.kind == "all-device":
        return []  # nothing leaves the device
    return leakage_violations(candidate.position, constraints, leakage)


def _mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:.3g} MiB" if nbytes >= 2**20 else f"{nbytes / 1024:.3g} KiB"


def _collector_paused(function):  # noqa: ANN001, ANN202 - any function
    """Run ``function`` with Python's cyclic garbage collector paused.

    A plan allocates tens of thousands of small objects (costs, entries, labels), which set off dozens of the
    collector's passes, each walking the young objects (and now and then a full pass over every object of the
    process: with torch loaded, 200,000 of them). Reference counting frees almost all of a plan's garbage; the few
    hundred objects in cycles it leaves are collected after it. Paused, a 1,000-node plan takes 15–30 ms less.
    """
    @functools.wraps(function)
    def paused(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if not gc.isenabled():
            return function(*args, **kwargs)
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            gc.enable()
    return paused


@_collector_paused
def make_plan(model: CostModel, objective: Objective, *, formats: list[InputFormat], constraints: Constraints,
              leakage: LeakageTable | None = None, model_name: str, model_ref: dict | None, device_spec: str,
              server_spec: str, link_spec: str, codec_name: str, input_shape: list[int],
              method: str = "scipy", codecs: list[PlanCodec] = (),
              reported: list[tuple[ReportedCodec, int]] = ()) -> PlanReport:
    """Rank every candidate under ``objective``, pick the best allowed one, and build the switch table."""
    if objective.needs_power and not model.device.knows_power:
        raise EdgesplitError(f"objective {objective.name} needs the device's power figures, which a measured profile "
                             f"lacks; borrow them from a preset, e.g. --device {device_spec}@rpi4")
    started = time.perf_counter()
    heads = graph = at_link = None
    if objective.additive:  # one flow graph for the sweep and for checking the scan against the min-cut
        graph = FlowGraph(model.placement_problem(objective))
        heads, at_link = _sweep_heads(model, objective, graph, method)
    found = candidates(model, objective, formats, method, codecs, reported, heads)
    value = objective.value
    scored = [Scored(candidate, costs, violations(model, candidate, costs, constraints, leakage), value(costs))
              for candidate, costs in zip(found, model.evaluate_many(found))]
    allowed = [s for s in scored if not s.violations]
    if not allowed:
        raise PlanError(_nothing_fits(scored))
    ranked = sorted(scored, key=lambda s: (bool(s.violations), s.value, s.costs.latency_ms))
    chosen = ranked[0]
    all_device = next(s for s in scored if s.candidate.kind == "all-device")
    servers = [s for s in scored if s.candidate.kind == "all-server"]
    all_server = min(servers, key=lambda s: s.value)

    min_cut_agrees = True
    if objective.additive:
        # the min-cut's head at the link's bandwidth, costed as a solve with the problem's own costs costs it
        problem = graph.problem
        best_cost = graph.cost(at_link, np.concatenate([graph.device_cost, graph.server_cost, graph.transfer_cost]))
        min_cut_agrees = best_cost <= min(_problem_costs(model, problem, scored)) * (1 + 1e-6) + 1e-9

    table = switch_table(model, objective, [s for s in ranked if not s.violations])
    entry = lambda s: _entry(model, objective, s)  # noqa: E731
    return PlanReport(
        model=model_name, model_ref=model_ref, fingerprint=model.workload.fingerprint, input_shape=input_shape,
        device=_machine_summary(device_spec, model.device), server=_machine_summary(server_spec, model.server),
        link=_link_summary(link_spec, model.link), codec=codec_name, objective=objective.name,
        constraints=constraints, chosen=entry(chosen), all_device=entry(all_device), all_server=entry(all_server),
        speedup_vs_all_device=all_device.costs.latency_ms / chosen.costs.latency_ms,
        speedup_vs_all_server=all_server.costs.latency_ms / chosen.costs.latency_ms,
        ranked=[entry(s) for s in ranked], pareto=pareto_front(allowed), switch_table=table,
        min_cut_agrees=min_cut_agrees, candidates=len(scored), planner_ms=(time.perf_counter() - started) * 1e3)


def _nothing_fits(scored: list[Scored]) -> str:
    """Name the constraint no plan satisfies on its own, or say that they conflict, with the nearest miss."""
    kinds = {"raw input": "--keep-input", "memory": "device memory", "storage": "weight storage", "sends": "--max-bytes",
             "accuracy": "--max-accuracy-drop", "leak": "leakage bound"}

    def kind(violation: str) -> str:
        return next((k for k in kinds if k in violation), "leak")

    for key, name in kinds.items():
        if all(any(kind(v) == key for v in s.violations) for s in scored):
            nearest = min(scored, key=lambda s: s.costs.head_memory_bytes + s.costs.head_weight_bytes
                          if key in ("memory", "storage") else s.costs.uplink_bytes)
            detail = next(v for v in nearest.violations if kind(v) == key)
            return (f"no plan satisfies the {name} constraint; the nearest, {nearest.candidate.label}, {detail}; "
                    "relax it")
    nearest = min(scored, key=lambda s: len(s.violations))
    return (f"no plan satisfies all constraints together; {nearest.candidate.label} comes closest but "
            f"{'; '.join(nearest.violations)}; relax one of them")


def _problem_costs(model: CostModel, problem, scored: list[Scored]) -> list[float]:  # noqa: ANN001
    """Each candidate's cost in the min-cut's terms (prefixes by running sums, other heads directly)."""
    workload = model.workload
    device = np.concatenate([[0.0], np.cumsum([problem.device_cost.get(n, 0.0) for n in workload.node_names])])
    server = np.concatenate([[0.0], np.cumsum([problem.server_cost.get(n, 0.0) for n in workload.node_names])])
    costs = []
    sent_at: dict[int, float] = {}  # a cut's transfer cost, once per position (codecs repeat positions)
    for s in scored:
        candidate = s.candidate
        if candidate.head is not None:
            costs.append(problem.cost(candidate.head | frozenset(workload.inputs)))
        elif (cut := workload.cut_at.get(candidate.position)) is not None:  # type: ignore[arg-type]
            p = candidate.position
            sent = sent_at.get(p)  # type: ignore[arg-type]
            if sent is None:
                sent = sent_at[p] = sum(problem.transfer_cost.get(t.name, math.inf) for t in cut.crossing)
            costs.append(float(device[p] + server[-1] - server[p] + sent))
    return costs


def _entry(model: CostModel, objective: Objective, scored: Scored) -> PlanEntry:
    candidate, workload = scored.candidate, model.workload
    head_nodes = after = cut_index = None
    if candidate.head is not None:
        head_nodes = sorted(candidate.head, key=workload._position.__getitem__)
        after = head_nodes[-1] if head_nodes else None
    else:
        after = workload.nodes[candidate.position - 1].name if candidate.position else None
        cut = workload.cut_at.get(candidate.position)  # type: ignore[arg-type]
        cut_index = cut.index if cut is not None and candidate.kind != "all-device" else None
    drop = getattr(candidate.codec, "accuracy_drop", None)
    # built without re-validation: every field comes from the cost model with its schema type (Costs too), passed
    # in the schema's order (see costs.trusted: model_construct itself took longer than validating)
    return _build_entry(
        label=candidate.label, kind=candidate.kind, position=candidate.position,  # type: ignore[arg-type]
        cut_index=cut_index, after=after, head_nodes=head_nodes,
        input_format=(candidate.input_format.name if candidate.input_format else
                      ("tensor" if candidate.kind == "all-server" else None)),
        crossing=model.crossing(candidate), costs=scored.costs, objective=scored.value,
        feasible=not scored.violations, violations=scored.violations,
        codec=(candidate.codec or model.codec).name if candidate.kind == "split" or (
            candidate.kind == "all-server" and candidate.input_format is None) else None,
        accuracy_drop=None if drop is None else float(drop))


_build_entry = trusted(PlanEntry)


def pareto_front(allowed: list[Scored]) -> list[str]:
    """Labels of plans that no other plan matches or beats on latency, device energy and uplink bytes at once.

    In lexicographic order a plan can only be dominated by one before it, and then by one on the front
    (dominance is transitive), so one pass that checks each plan against the front so far finds it. Every
    plan before it has no more latency, so what is left to check is energy and bytes: against the front's
    staircase in those two (energy ascending, bytes descending), by bisection.
    """
    def point(s: Scored) -> tuple[float, float, float]:
        return (s.costs.latency_ms, s.costs.energy_mj if s.costs.energy_mj is not None else 0.0,
                float(s.costs.uplink_bytes))

    front: list[str] = []
    energies: list[float] = []  # the staircase: no point on it matches or beats another on both
    sizes: list[float] = []
    for (_, energy, size), label in sorted((point(s), s.candidate.label) for s in allowed):
        below = bisect.bisect_right(energies, energy)  # staircase points with no more energy: [0, below)
        if below and sizes[below - 1] <= size:  # the one with the fewest bytes among them
            continue
        front.append(label)
        end = below
        while end < len(energies) and sizes[end] >= size:  # points this one now matches or beats on both
            end += 1
        energies[below:end], sizes[below:end] = [energy], [size]
    return front


def switch_table(model: CostModel, objective: Objective, allowed: list[Scored],
                 sweep: tuple[float, float] = SWEEP_MBPS) -> list[SwitchRange]:
    """Uplink bandwidth ranges over the sweep in which each allowed plan is the best under ``objective``.

    ``allowed`` is in rank order, so that of two plans equally good at some bandwidth the better-ranked wins.
    """
    values = LinkSweep([s.costs for s in allowed], objective, model.link, model.device.idle_w).values

    def best(mbps: float) -> int:
        return int(np.argmin(values(mbps)[0]))

    grid = np.geomspace(*sweep, _SWEEP_POINTS)
    winners = np.argmin(values(grid), axis=1).tolist()
    boundaries: list[tuple[float, int]] = [(float(grid[0]), winners[0])]
    for (low, low_best), (high, high_best) in zip(zip(grid, winners), zip(grid[1:], winners[1:])):
        if high_best != low_best:
            boundaries.extend(_crossings(best, float(low), low_best, float(high), high_best))
    ranges: list[list] = []
    for (start, winner), (end, _) in zip(boundaries, [*boundaries[1:], (sweep[1], None)]):
        if ranges and ranges[-1][2] == winner:
            ranges[-1][1] = end
        else:
            ranges.append([start, end, winner])
    table = []
    for low, high, winner in ranges:
        entry = _entry(model, objective, allowed[winner])
        table.append(SwitchRange(low_mbps=_round(low), high_mbps=_round(high), label=entry.label, kind=entry.kind,
                                 position=entry.position, cut_index=entry.cut_index, head_nodes=entry.head_nodes,
                                 codec=entry.codec))
    return table


def _crossings(best, low: float, low_best: int, high: float, high_best: int) -> list[tuple[float, int]]:  # noqa: ANN001
    """Where the winner changes between two grid points, by bisection in log-bandwidth (to 0.01%)."""
    while high / low > 1.0001:
        middle = math.sqrt(low * high)
        winner = best(middle)
        if winner == low_best:
            low = middle
        elif winner == high_best:
            high = middle
        else:  # a third plan wins in between: split the interval at it
            return [*_crossings(best, low, low_best, middle, winner), *_crossings(best, middle, winner, high, high_best)]
    return [(high, high_best)]


def _round(mbps: float) -> float:
    return float(f"{mbps:.4g}")


def _machine_summary(spec: str, machine) -> MachineSummary:  # noqa: ANN001 - Machine
    return MachineSummary(spec=spec, kind=machine.kind, model_ms=machine.model_ms, memory_bytes=machine.memory_bytes,
                          active_w=machine.active_w, idle_w=machine.idle_w, source=machine.source)


def _link_summary(spec: str, link: Link) -> LinkSummary:
    return LinkSummary(spec=spec, uplink_mbps=link.uplink_mbps, downlink_mbps=link.downlink_mbps, rtt_ms=link.rtt_ms,
                       tx_w=link.tx_w, rx_w=link.rx_w, source=link.source)
