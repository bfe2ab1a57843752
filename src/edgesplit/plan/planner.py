"""Choose the plan: every candidate costed, the min-cut's optimum added, constraints applied, the switch table built.

Candidates are all-device, all-server (the input as 8-bit pixels, PNG, JPEG or the float tensor), every
topological-prefix cut (the chain scan), and every head the s–t minimum cut returns across the bandwidth sweep
(predecessor-closed sets that need not be prefixes). Additive objectives (latency, energy, weighted) are
optimized exactly over all closed heads by the min-cut; throughput (the slowest pipeline stage) is not a sum,
so it is taken over the candidates.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ..errors import EdgesplitError
from ..hardware import Link
from ..privacy.leakage import LeakageTable
from .costs import Candidate, CostModel, Objective, at_link
from .mincut import min_cost_head
from .payload import InputFormat
from .schema import Constraints, Costs, LinkSummary, MachineSummary, PlanEntry, PlanReport, SwitchRange

SWEEP_MBPS = (0.1, 1000.0)
_SWEEP_POINTS = 161  # 40 per decade: then each boundary is refined by bisection
_MINCUT_POINTS = 41  # min-cut solves across the sweep, refined where neighbouring solutions differ


class PlanError(EdgesplitError):
    """No plan satisfies the constraints."""


@dataclass
class Scored:
    candidate: Candidate
    costs: Costs
    violations: list[str]


def candidates(model: CostModel, objective: Objective, formats: list[InputFormat]) -> list[Candidate]:
    """All-device, all-server in each input format, every prefix cut, and the min-cut's heads across bandwidths."""
    workload = model.workload
    found = [Candidate("all on device", "all-device", frozenset(workload.node_names), len(workload.nodes))]
    found += [Candidate(f"all on server ({fmt.name} input)", "all-server", frozenset(), 0, fmt) for fmt in formats]
    by_position = {cut.position: cut for cut in workload.prefix_cuts}
    for position, cut in sorted(by_position.items()):
        if position == len(workload.nodes):
            continue  # computing everything and then shipping the result adds nothing to all-device
        if position == 0:
            found.append(Candidate("all on server (fp32 tensor)", "all-server", frozenset(), 0))
        else:
            found.append(Candidate(f"cut {cut.index} after {cut.after}", "split", workload.prefix(position), position))
    if objective.additive:
        known = {c.head for c in found}
        for head in min_cut_heads(model, objective):
            if head not in known:
                known.add(head)
                position = workload.position_of_prefix(head)
                found.append(Candidate(_min_cut_label(model, head), "split", head, position))
    return found


def _min_cut_label(model: CostModel, head: frozenset[str]) -> str:
    names = [t.name for t in model.workload.crossing(head)]
    return f"min-cut head of {len(head)} nodes, sends {'+'.join(names)}"


def min_cut_heads(model: CostModel, objective: Objective) -> set[frozenset[str]]:
    """The optimal closed heads at the link's bandwidth and across the sweep, refined where they change."""
    inputs = frozenset(model.workload.inputs)

    def solve(mbps: float) -> frozenset[str]:
        _, head = min_cost_head(model.placement_problem(objective, model.link.at_uplink(mbps)))
        return head - inputs

    heads = {solve(model.link.uplink_mbps)}
    grid = list(np.geomspace(*SWEEP_MBPS, _MINCUT_POINTS))
    solutions = [solve(b) for b in grid]
    heads.update(solutions)
    for (low, low_head), (high, high_head) in zip(zip(grid, solutions), zip(grid[1:], solutions[1:])):
        _refine(solve, low, low_head, high, high_head, heads, depth=6)
    return heads


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
    """What keeps ``candidate`` from being allowed: memory, bytes per inference, leakage."""
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
    if constraints.max_uplink_bytes is not None and costs.uplink_bytes > constraints.max_uplink_bytes:
        found.append(f"sends {costs.uplink_bytes:,} B, more than {constraints.max_uplink_bytes:,} B")
    if leakage is not None and (constraints.max_ssim is not None or constraints.max_probe_accuracy is not None):
        found += _leakage_violations(candidate, constraints, leakage)
    return found


def _leakage_violations(candidate: Candidate, constraints: Constraints, leakage: LeakageTable) -> list[str]:
    if candidate.kind == "all-device":
        return []  # nothing leaves the device
    if candidate.position is None:
        return ["leakage not measured for this head (the audit covers prefix cuts)"]
    entry = leakage.at(candidate.position)
    if entry is None:
        return [f"leakage not measured at position {candidate.position}; audit this cut"]
    found = []
    for name, limit, value in (("SSIM", constraints.max_ssim, entry.ssim),
                               ("probe accuracy", constraints.max_probe_accuracy, entry.probe_accuracy)):
        if limit is None:
            continue
        if value is None:
            found.append(f"{name} not measured at this cut")
        elif value > limit:
            found.append(f"{name} {value:.3f} above {limit:g}")
    return found


def _mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:.3g} MiB" if nbytes >= 2**20 else f"{nbytes / 1024:.3g} KiB"


def make_plan(model: CostModel, objective: Objective, *, formats: list[InputFormat], constraints: Constraints,
              leakage: LeakageTable | None = None, model_name: str, model_ref: dict | None, device_spec: str,
              server_spec: str, link_spec: str, codec_name: str, input_shape: list[int]) -> PlanReport:
    """Rank every candidate under ``objective``, pick the best allowed one, and build the switch table."""
    if objective.needs_power and not model.device.knows_power:
        raise EdgesplitError(f"objective {objective.name} needs the device's power figures, which a measured profile "
                             f"lacks; borrow them from a preset, e.g. --device {device_spec}@rpi4")
    started = time.perf_counter()
    scored = []
    for candidate in candidates(model, objective, formats):
        costs = model.evaluate(candidate)
        scored.append(Scored(candidate, costs, violations(model, candidate, costs, constraints, leakage)))
    allowed = [s for s in scored if not s.violations]
    if not allowed:
        raise PlanError(_nothing_fits(scored))
    ranked = sorted(scored, key=lambda s: (bool(s.violations), objective.value(s.costs), s.costs.latency_ms))
    chosen = ranked[0]
    all_device = next(s for s in scored if s.candidate.kind == "all-device")
    servers = [s for s in scored if s.candidate.kind == "all-server"]
    all_server = min(servers, key=lambda s: objective.value(s.costs))

    min_cut_agrees = True
    if objective.additive:
        problem = model.placement_problem(objective)
        best_cost, _ = min_cost_head(problem)
        inputs = frozenset(model.workload.inputs)
        # every candidate's head (all-device's as "compute everything, then ship the result") under the same costs
        scan_best = min(problem.cost(s.candidate.head | inputs) for s in scored)
        min_cut_agrees = math.isclose(best_cost, scan_best, rel_tol=1e-9, abs_tol=1e-9)

    table = switch_table(model, objective, allowed)
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
    kinds = {"memory": "device memory", "storage": "weight storage", "sends": "--max-bytes", "leak": "leakage bound"}

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


def _entry(model: CostModel, objective: Objective, scored: Scored) -> PlanEntry:
    candidate, workload = scored.candidate, model.workload
    cut = next((c for c in workload.prefix_cuts if c.position == candidate.position), None)
    prefix = candidate.position is not None
    after = None
    if candidate.head:
        after = [n for n in workload.node_names if n in candidate.head][-1]
    return PlanEntry(
        label=candidate.label, kind=candidate.kind, position=candidate.position,  # type: ignore[arg-type]
        cut_index=cut.index if cut is not None and candidate.kind != "all-device" else None, after=after,
        head_nodes=None if prefix else sorted(candidate.head, key=workload.node_names.index),
        input_format=(candidate.input_format.name if candidate.input_format else
                      ("tensor" if candidate.kind == "all-server" else None)),
        crossing=model.crossing(candidate), costs=scored.costs, objective=objective.value(scored.costs),
        feasible=not scored.violations, violations=scored.violations)


def pareto_front(allowed: list[Scored]) -> list[str]:
    """Labels of plans that no other plan matches or beats on latency, device energy and uplink bytes at once."""
    def point(s: Scored) -> tuple[float, float, float]:
        energy = s.costs.energy_mj if s.costs.energy_mj is not None else 0.0
        return (s.costs.latency_ms, energy, float(s.costs.uplink_bytes))

    points = [point(s) for s in allowed]
    front = []
    for s, p in zip(allowed, points):
        dominated = any(all(a <= b for a, b in zip(q, p)) and q != p for q in points)
        if not dominated and s.candidate.label not in front:
            front.append(s.candidate.label)
    order = {label: point(s) for s, label in ((s, s.candidate.label) for s in allowed)}
    return sorted(front, key=lambda label: order[label][0])


def switch_table(model: CostModel, objective: Objective, allowed: list[Scored],
                 sweep: tuple[float, float] = SWEEP_MBPS) -> list[SwitchRange]:
    """Uplink bandwidth ranges over the sweep in which each allowed plan is the best under ``objective``."""

    def best(mbps: float) -> Scored:
        link = model.link.at_uplink(mbps)
        return min(allowed, key=lambda s: (objective.value(at_link(s.costs, link, model.device)), s.costs.latency_ms))

    grid = list(np.geomspace(*sweep, _SWEEP_POINTS))
    winners = [best(b) for b in grid]
    boundaries: list[tuple[float, Scored]] = [(grid[0], winners[0])]
    for (low, low_best), (high, high_best) in zip(zip(grid, winners), zip(grid[1:], winners[1:])):
        if high_best is not low_best:
            boundaries.extend(_crossings(best, low, low_best, high, high_best))
    ranges = []
    for (start, scored), (end, _) in zip(boundaries, [*boundaries[1:], (sweep[1], None)]):
        if ranges and ranges[-1][2] is scored:
            ranges[-1][1] = end
        else:
            ranges.append([start, end, scored])
    workload = model.workload
    return [SwitchRange(low_mbps=_round(low), high_mbps=_round(high), label=s.candidate.label, kind=s.candidate.kind,
                        position=s.candidate.position,
                        cut_index=next((c.index for c in workload.prefix_cuts if c.position == s.candidate.position
                                        and s.candidate.kind != "all-device"), None),
                        head_nodes=None if s.candidate.position is not None
                        else sorted(s.candidate.head, key=workload.node_names.index))
            for low, high, s in ranges]


def _crossings(best, low: float, low_best: Scored, high: float, high_best: Scored) -> list[tuple[float, Scored]]:  # noqa: ANN001
    """Where the winner changes between two grid points, by bisection in log-bandwidth (to 0.01%)."""
    while high / low > 1.0001:
        middle = math.sqrt(low * high)
        winner = best(middle)
        if winner is low_best:
            low = middle
        elif winner is high_best:
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
