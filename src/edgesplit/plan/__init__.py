"""Where to cut: hardware and cost models, chain scan and DAG min-cut, constraints, Pareto front, switch table."""

from .api import plan_model
from .costs import Candidate, CostModel, Objective, parse_objective
from .machines import HostProfiler, Machine, resolve_machine
from .mincut import FlowGraph, PlacementProblem, brute_force_head, min_cost_head
from .payload import PlanCodec, measure_codec, measure_input_formats, parse_codecs
from .planner import PlanError, make_plan
from .schema import Constraints, PlanReport, load_plan
from .workload import Workload, workload_of

__all__ = ["Candidate", "Constraints", "CostModel", "FlowGraph", "plan_model", "HostProfiler", "Machine", "Objective", "PlacementProblem", "PlanError",
           "PlanReport", "Workload", "brute_force_head", "load_plan", "make_plan", "measure_input_formats",
           "min_cost_head", "parse_codecs", "PlanCodec", "measure_codec", "parse_objective", "resolve_machine", "workload_of"]
