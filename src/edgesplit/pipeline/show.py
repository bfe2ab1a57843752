"""What each stage shows on the console, the same from its CLI verb and from `edgesplit run`.

The tables are ``views``'s; the lines under them (the chosen plan, the split's check, the best compression …)
are written here once.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from edgesplit.compress.rate import CompressReport
from edgesplit.model.train import TrainRecord
from edgesplit.pipeline.stages import SplitResult
from edgesplit.plan import PlanReport
from edgesplit.plan.schema import ChainPlanReport
from edgesplit.privacy.audit import summary_line
from edgesplit.privacy.schema import AuditReport
from edgesplit.profile import ProfileReport
from edgesplit.views import (audit_table, chain_switch_view, chain_table, compress_table, pareto_view, plan_table, profile_table, split_table,
                             switch_table_view)

__all__ = ["chosen_line", "show_audit", "show_compress", "show_plan", "show_profile", "show_split", "show_train"]


def show_train(console: Console, record: TrainRecord) -> None:
    name = record.model.get("name") if isinstance(record.model, dict) else record.model
    console.print(f"{escape(str(name))} on {escape(record.dataset)}: test accuracy {record.test_accuracy:.2%} after "
                  f"{record.epochs} epochs ({record.seconds or 0:.0f} s); weights written to {record.weights}")


def show_profile(console: Console, report: ProfileReport) -> None:
    console.print(profile_table(report))
    if report.uncounted_ops:
        console.print(f"[yellow]MACs not counted for ops without a formula: {report.uncounted_ops}")


def chosen_line(report: PlanReport) -> str:
    """The chosen plan, its speed-ups and how it was found (rich markup)."""
    chosen = report.chosen
    return (f"[bold]chosen:[/] {escape(chosen.label)} — {chosen.costs.latency_ms:.3g} ms per inference, "
            f"{report.speedup_vs_all_device:.2f}× all-device, {report.speedup_vs_all_server:.2f}× all-server "
            f"({escape(report.all_server.label)}); {report.candidates} plans costed in {report.planner_ms:.0f} ms; "
            f"min-cut {'agrees with' if report.min_cut_agrees else 'DISAGREES with'} the scan")


def show_plan(console: Console, report: PlanReport, *, top: int = 0, pareto: bool = False) -> None:
    """The ``top`` ranked plans (none: 0), the chosen one, the switch table, and the Pareto front if asked."""
    if top:
        console.print(plan_table(report, top))
    console.print(chosen_line(report))
    console.print(switch_table_view(report))
    if pareto:
        console.print(pareto_view(report))


def show_chain_plan(console: Console, report: ChainPlanReport) -> None:
    """A chain plan's placements, the chosen one in a line, and its switch table."""
    console.print(chain_table(report))
    chosen = report.chosen
    where = ", ".join(f"tier {s.tier} {s.machine}: {s.nodes} nodes" + (f" ({s.first} … {s.last})" if s.nodes else "")
                      for s in chosen.stages)
    latency = f"{chosen.latency_ms:.3g}" if chosen.latency_ms < 100 else f"{chosen.latency_ms:.0f}"
    console.print(f"[bold]chosen:[/] {escape(chosen.label)} — {latency} ms, "
                  f"{chosen.throughput_fps:.3g} inferences/s (bottleneck: {chosen.bottleneck}); {escape(where)}; "
                  f"planned in {report.planner_ms:.0f} ms")
    console.print(chain_switch_view(report))


def show_split(console: Console, result: SplitResult) -> None:
    console.print(split_table(result.record))
    line = (f"reloaded from {result.folder}: tail(*head(x)) vs model(x) max abs diff {result.max_abs_diff:.2e}")
    if result.agreement is not None:
        line += f" on {result.images} held-out images, predictions agree on {result.agreement:.2%}"
    console.print(line)


def show_compress(console: Console, report: CompressReport, max_accuracy_drop: float) -> None:
    """The configurations, then the one that sends fewest bytes within ``max_accuracy_drop`` of the baseline."""
    console.print(compress_table(report))
    features = [c for c in report.at_most(max_accuracy_drop) if c.kind != "input"]
    if features:
        points = max_accuracy_drop * 100
        console.print(f"[bold]fewest bytes within {points:g} point{'' if points == 1 else 's'} of the baseline:[/] "
                      f"{escape(features[0].name)} — {features[0].bytes_per_inference:,.0f} B, "
                      f"{features[0].compression:.1f}× smaller than float32")


def show_audit(console: Console, report: AuditReport) -> None:
    console.print(audit_table(report))
    console.print(summary_line(report))
