"""How long does planning take on big graphs? Synthetic residual networks of 100, 1,000 and 10,000 nodes.

Side by side in one run, on the same flow graphs:
  min-cut, scipy     one s–t minimum cut with edgesplit's solver (greedy warm start + scipy's Dinic, in C)
  min-cut, networkx  the same cut with networkx's preflow-push (pure Python): the baseline
  decide             what answers "where to cut at this link": one min-cut + costing every prefix cut
  full plan          everything `edgesplit plan` does after profiling: the min-cut sweep over 0.1–1000 Mbit/s,
                     every candidate costed, constraints, Pareto front and the switch table
  3 tiers            rpi4 > wifi > jetson-nano > ethernet > edge-gpu: the exact placement (one layered min-cut
                     per farthest tier used), and the full chain plan (placement, baselines on each tier and pair
                     of tiers, the contiguous DP, switch table); issue 19's target: < 100 ms at 1,000 nodes

Timings are medians of --repeats runs (networkx at 10,000 nodes once: it takes seconds). "decide" and "full
plan" start from a fresh cost model each run (its build is timed apart and subtracted), as `edgesplit plan` does.
Issue 3's target: under 50 ms for 1,000 nodes (issue 19 asks it of the full plan, which took 293 ms before the
speed work of issue 19).

    python bench/plan_speed.py [--sizes 100,1000,10000] [--repeats 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from edgesplit.plan.hardware import LINKS, PRESETS
from edgesplit.plan.costs import CostModel, TransferCosts, parse_objective
from edgesplit.plan.machines import preset_machine
from edgesplit.plan.mincut import FlowGraph
from edgesplit.codecs import parse_codec
from edgesplit.compress.payload import PlanCodec
from edgesplit.plan.planner import make_plan
from edgesplit.plan.costs import Candidate
from edgesplit.plan.schema import Constraints
from edgesplit.plan.chain import ChainModel, plan_chain_workload
from edgesplit.plan.hardware import parse_link
from edgesplit.plan.synthetic import synthetic_workload
from edgesplit.plan.tiers import min_cost_tiers
from edgesplit.plan.topology import parse_topology
from edgesplit.profile import machine_info

RESULTS = Path(__file__).parent / "results"
OBJECTIVE = parse_objective("latency")


def median_ms(action, repeats: int) -> float:  # noqa: ANN001
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def cost_model(size: int) -> CostModel:
    workload = synthetic_workload(size)
    return CostModel(workload, preset_machine(PRESETS["rpi4"], workload), preset_machine(PRESETS["edge-gpu"], workload),
                     LINKS["wifi"], PlanCodec(parse_codec("fp32")), host_gb_s=10.0)


def decide(model: CostModel) -> None:
    """The decision at the link's bandwidth: the min-cut's head and the chain scan over every prefix."""
    FlowGraph(model.placement_problem(OBJECTIVE)).solve()
    for cut in model.workload.prefix_cuts:
        model.evaluate(Candidate("cut", "split", cut.position))


def full_plan(model: CostModel) -> None:
    make_plan(model, OBJECTIVE, formats=[], constraints=Constraints(), model_name=model.workload.name,
              model_ref=None, device_spec="rpi4", server_spec="edge-gpu", link_spec="wifi", codec_name="fp32",
              input_shape=[1, 3, 224, 224])


CHAIN = "rpi4 > wifi > jetson-nano > ethernet > edge-gpu"


def chain_model(size: int) -> ChainModel:
    workload = synthetic_workload(size)
    topology = parse_topology(CHAIN)
    machines = [preset_machine(PRESETS[name], workload) for name in topology.machines]
    return ChainModel(workload, machines, [parse_link(spec) for spec in topology.links], PlanCodec(parse_codec("fp32")),
                      10.0, hop_ms=topology.hop_ms)


def chain_placement(model: ChainModel) -> None:
    """The exact three-tier placement: one layered min-cut per farthest tier used (what the chosen plan needs)."""
    for last in range(1, model.tiers):
        min_cost_tiers(model.tier_problem(last, OBJECTIVE))


def chain_plan(model: ChainModel) -> None:
    """Everything `edgesplit plan --topology` does after profiling: the placement, the baselines (each tier, each
    pair of tiers, the contiguous DP), every one costed, and the switch table."""
    plan_chain_workload(model, OBJECTIVE, Constraints(), model_name=model.workload.name, model_ref=None,
                        topology=parse_topology(CHAIN), codec_name="fp32", input_shape=[1, 3, 224, 224])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=RESULTS / "plan_speed.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with Progress() as progress:
        task = progress.add_task("planning synthetic graphs", total=len(sizes))
        for size in sizes:
            model = cost_model(size)
            graph = FlowGraph(model.placement_problem(OBJECTIVE))
            costs = TransferCosts(model, OBJECTIVE, graph).at(model.link)
            graph.solve(costs)  # compile the flow graph's arrays once, as the planner does
            scipy_ms = median_ms(lambda: graph.solve(costs, method="scipy"), args.repeats)
            networkx_ms = median_ms(lambda: graph.solve(costs, method="networkx"), 1 if size > 2000 else args.repeats)
            same = graph.solve(costs, method="scipy")[1] == graph.solve(costs, method="networkx")[1]
            decide_ms = median_ms(lambda: decide(cost_model(size)), args.repeats)
            full_ms = median_ms(lambda: full_plan(cost_model(size)), args.repeats)
            build_ms = median_ms(lambda: cost_model(size), args.repeats)  # not planning: subtracted below
            chain = chain_model(size)
            chain_placement(chain)  # imports scipy's solver once
            placement_ms = median_ms(lambda: chain_placement(chain), args.repeats)
            chain_ms = median_ms(lambda: chain_plan(chain), args.repeats)
            rows.append({"nodes": size, "flow_vertices": graph.vertices, "flow_edges": len(graph._tails),
                         "mincut_scipy_ms": scipy_ms, "mincut_networkx_ms": networkx_ms,
                         "networkx_over_scipy": networkx_ms / scipy_ms, "same_head": same,
                         "decide_ms": decide_ms - build_ms, "full_plan_ms": full_ms - build_ms,
                         "three_tier_placement_ms": placement_ms, "three_tier_plan_ms": chain_ms})
            progress.advance(task)

    table = Table(title="planner time (ms, median) on synthetic residual networks — rpi4 → wifi → edge-gpu")
    for column in ("nodes", "flow edges", "min-cut scipy", "min-cut networkx", "networkx / scipy", "same head",
                   "decide (min-cut + chain scan)", "full plan (sweep + switch table)", "3 tiers: placement",
                   "3 tiers: full chain plan"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(f"{row['nodes']:,}", f"{row['flow_edges']:,}", f"{row['mincut_scipy_ms']:.1f}",
                      f"{row['mincut_networkx_ms']:.0f}", f"{row['networkx_over_scipy']:.0f}×", str(row["same_head"]),
                      f"{row['decide_ms']:.1f}", f"{row['full_plan_ms']:.0f}",
                      f"{row['three_tier_placement_ms']:.1f}", f"{row['three_tier_plan_ms']:.0f}")
    Console(width=180).print(table)
    at_1000 = next((r for r in rows if r["nodes"] == 1000), None)
    if at_1000:
        print(f"target < 50 ms at 1,000 nodes: decide {at_1000['decide_ms']:.1f} ms "
              f"({'met' if at_1000['decide_ms'] < 50 else 'missed'}), full plan {at_1000['full_plan_ms']:.0f} ms "
              f"({'met' if at_1000['full_plan_ms'] < 50 else 'missed'}); three tiers ({CHAIN}), target < 100 ms: "
              f"exact placement {at_1000['three_tier_placement_ms']:.1f} ms "
              f"({'met' if at_1000['three_tier_placement_ms'] < 100 else 'missed'}), full chain plan "
              f"{at_1000['three_tier_plan_ms']:.0f} ms ({'met' if at_1000['three_tier_plan_ms'] < 100 else 'missed'})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine_info().model_dump(), "rows": rows}, indent=2))
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
