"""Where to cut: hardware and cost models, chain scan and DAG min-cut, constraints, Pareto front, switch table."""

from edgesplit.plan.api import plan_model
from edgesplit.plan.costs import Candidate, CostModel, Objective, parse_objective
from edgesplit.plan.machines import HostProfiler, Machine, resolve_machine
from edgesplit.plan.mincut import FlowGraph, PlacementProblem, brute_force_head, min_cost_head
from edgesplit.compress.payload import PlanCodec, measure_codec, measure_input_formats, parse_codecs
from edgesplit.plan.planner import PlanError, make_plan
from edgesplit.plan.schema import Constraints, PlanReport, load_plan
from edgesplit.plan.workload import Workload, workload_of

__all__ = ["Candidate", "Constraints", "CostModel", "FlowGraph", "plan_model", "HostProfiler", "Machine", "Objective", "PlacementProblem", "PlanError",
           "PlanReport", "Workload", "brute_force_head", "load_plan", "make_plan", "measure_input_formats",
           "min_cost_head", "parse_codecs", "PlanCodec", "measure_codec", "parse_objective", "resolve_machine", "workload_of"]
