"""One call from a traced model and machine specs to a plan: what `edgesplit plan` runs."""

from __future__ import annotations

import torch

from ..graph import TracedModel
from ..hardware import parse_link
from ..privacy.leakage import LeakageTable
from .costs import CostModel, parse_objective
from .machines import HostProfiler, resolve_machine
from .payload import measure_input_formats, parse_codec
from .planner import make_plan
from .schema import Constraints, PlanReport
from .workload import workload_of


def plan_model(traced: TracedModel, *, device: str, server: str, link: str, codec: str = "fp32",
               objective: str = "latency", samples: torch.Tensor | None = None, jpeg_quality: int = 90,
               constraints: Constraints | None = None, leakage: LeakageTable | None = None, name: str = "model",
               model_ref: dict | None = None, host_runs: int = 10, progress: bool = True) -> PlanReport:
    """Plan ``traced`` for a device, a server and a link given as spec strings (see `edgesplit.hardware`).

    ``samples`` (N×C×H×W images in [0, 1]) are encoded as PNG and JPEG to cost sending the whole input; without
    them, the all-server candidates send the input as raw 8-bit pixels and as the float tensor.
    """
    workload = workload_of(traced, name)
    host = HostProfiler(traced, name, host_runs, progress)
    device_machine = resolve_machine(device, workload, host.profile, host.memory_gb_s)
    server_machine = resolve_machine(server, workload, host.profile, host.memory_gb_s)
    network = parse_link(link)
    crossing_codec = parse_codec(codec)
    goal = parse_objective(objective)
    formats = measure_input_formats(samples, jpeg_quality) if samples is not None else []
    if samples is None and _is_image(traced):
        formats = measure_input_formats(torch.zeros(1, *traced.example_inputs[0].shape[1:]))[:1]  # raw uint8 only
    batch = traced.example_inputs[0].shape[0] if traced.example_inputs[0].dim() else 1
    model = CostModel(workload, device_machine, server_machine, network, crossing_codec, host.memory_gb_s(), batch)
    return make_plan(model, goal, formats=formats, constraints=constraints or Constraints(), leakage=leakage,
                     model_name=name, model_ref=model_ref, device_spec=device, server_spec=server, link_spec=link,
                     codec_name=crossing_codec.name, input_shape=list(traced.example_inputs[0].shape))


def _is_image(traced: TracedModel) -> bool:
    shape = traced.example_inputs[0].shape
    return len(traced.example_inputs) == 1 and len(shape) == 4 and shape[1] in (1, 3)
