"""Where to cut: the plan for one model on a device, a server and a link (`edgesplit plan`).

``plan_model(traced, device="rpi4", server="host", link="lte")`` costs every candidate (all on the device, all on
the server, every prefix cut and the min-cut's heads, each with each codec) and returns a :class:`PlanReport`: the
ranked plans, the Pareto front and the switch table (plan.json, read back with :func:`load_plan`).

The modules, lower first (each imports only those above it):

* ``hardware``: machine presets, links and the spec strings that name them (``host/8@rpi4``, ``lte:up=2``);
  a new hardware preset is one ``ComputePreset`` in ``hardware.PRESETS``.
* ``workload``: the model as the planner sees it; ``synthetic``: random workloads for benchmarks and tests.
* ``machines``: each node's latency on a machine (a preset's roofline, a measured profile, or this host).
* ``mincut``: the cheapest predecessor-closed head as an s–t minimum cut, and by brute force to check it.
* ``schema``: plan.json's types; ``leakage``: the audit's per-cut leakage table, which the planner bounds.
* ``costs``: the cost model and the objectives; ``planner``: candidates, constraints, Pareto front, switch table.
* ``api``: :func:`plan_model`, from a traced model and spec strings to a plan.

What each codec or input format sends, as the planner costs it, comes from ``edgesplit.compress.payload``.
"""

from edgesplit.compress.payload import parse_codecs
from edgesplit.plan.api import plan_model
from edgesplit.plan.costs import parse_objective
from edgesplit.plan.leakage import LeakageTable, load_leakage
from edgesplit.plan.planner import PlanError
from edgesplit.plan.schema import Constraints, PlanEntry, PlanReport, load_plan

__all__ = ["Constraints", "LeakageTable", "PlanEntry", "PlanError", "PlanReport", "load_leakage", "load_plan",
           "parse_codecs", "parse_objective", "plan_model"]
