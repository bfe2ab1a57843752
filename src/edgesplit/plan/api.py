"""One call from a traced model and machine specs to a plan: what `edgesplit plan` runs."""

from __future__ import annotations

import torch

from edgesplit.codecs import codec_from_json
from edgesplit.compress.payload import PlanCodec, ReportedCodec, measure_codec, measure_input_formats, parse_codecs
from edgesplit.compress.rate import CompressReport
from edgesplit.errors import EdgesplitError
from edgesplit.model.data import is_image_shape
from edgesplit.model.graph import TracedModel
from edgesplit.plan.costs import CostModel, parse_objective
from edgesplit.plan.hardware import parse_link
from edgesplit.plan.leakage import LeakageTable
from edgesplit.plan.machines import HostProfiler, resolve_machine
from edgesplit.plan.planner import make_plan
from edgesplit.plan.schema import Constraints, PlanReport
from edgesplit.plan.workload import workload_of

__all__ = ["plan_model"]


def plan_model(traced: TracedModel, *, device: str, server: str, link: str, codec: str | list[str] = "fp32",
               objective: str = "latency", samples: torch.Tensor | None = None, jpeg_quality: int = 90,
               constraints: Constraints | None = None, leakage: LeakageTable | None = None, name: str = "model",
               model_ref: dict | None = None, host_runs: int = 10, progress: bool = True,
               compressed: list[CompressReport] = ()) -> PlanReport:
    """Plan ``traced`` for a device, a server and a link given as spec strings (see `edgesplit.plan.hardware`).

    ``codec`` is one codec spec or several: every prefix cut is costed with each, so cut and codec are chosen
    together (the first is the min-cut's). Codecs are measured on this host on ``samples`` (N×C×H×W images
    in [0, 1]), which are also encoded as PNG and JPEG to cost sending the whole input; without them, the
    all-server candidates send the input as raw 8-bit pixels and as a tensor. ``compressed`` adds the
    configurations `edgesplit compress` measured (learned bottlenecks included) at their cuts.
    """
    workload = workload_of(traced, name)
    host = HostProfiler(traced, name, host_runs, progress)
    device_machine = resolve_machine(device, workload, host.profile, host.memory_gb_s)
    server_machine = resolve_machine(server, workload, host.profile, host.memory_gb_s)
    network = parse_link(link)
    codecs = parse_codecs(codec)
    goal = parse_objective(objective)
    reported = [entry for report in compressed for entry in reported_codecs(report, traced, workload)]
    formats = measure_input_formats(samples, jpeg_quality) if samples is not None else []
    if samples is None and _is_image(traced):
        formats = measure_input_formats(torch.zeros(1, *traced.example_inputs[0].shape[1:]))[:1]  # raw uint8 only
    batch = traced.example_inputs[0].shape[0] if traced.example_inputs[0].dim() else 1
    measured = _measure_codecs(codecs, traced, workload, samples)
    model = CostModel(workload, device_machine, server_machine, network, measured[0], host.memory_gb_s(), batch)
    return make_plan(model, goal, formats=formats, constraints=constraints or Constraints(), leakage=leakage,
                     model_name=name, model_ref=model_ref, device_spec=device, server_spec=server, link_spec=link,
                     codec_name=", ".join(c.spec for c in codecs), input_shape=list(traced.example_inputs[0].shape),
                     codecs=measured[1:], reported=reported)


_CODEC_SAMPLES = 8


def _measure_codecs(codecs, traced: TracedModel, workload, samples: torch.Tensor | None) -> list[PlanCodec]:  # noqa: ANN001
    """Each codec measured on this host: on the sample images where they fit the model, else on its example input."""
    example = traced.example_inputs[0]
    inputs = example
    if samples is not None and len(traced.example_inputs) == 1 and tuple(samples.shape[1:]) == tuple(example.shape[1:]):
        inputs = samples[:_CODEC_SAMPLES]
    values = [name for name, spec in workload.tensors.items() if spec is not None]
    return [measure_codec(c, traced, inputs, values) if len(traced.example_inputs) == 1 else PlanCodec(c)
            for c in codecs]


def reported_codecs(report: CompressReport, traced: TracedModel, workload) -> list[tuple[ReportedCodec, int]]:  # noqa: ANN001
    """The feature configurations of a compress result, at their cut of this model."""
    if report.fingerprint != traced.fingerprint:
        raise EdgesplitError(f"the compress result for {report.model} (graph {report.fingerprint}) was measured on "
                             f"another model than this one (graph {traced.fingerprint}); run compress on this model")
    if report.cut_position not in workload.cut_at:
        raise EdgesplitError(f"the compress result's cut {report.cut_index} is not a cut of this model; "
                             "run compress again")
    found = []
    for config in report.configurations:
        if config.kind == "input" or not config.codecs:
            continue
        found.append((ReportedCodec(codec_from_json(config.codecs[0]), config.name, config.bytes_per_inference,
                                    config.encode_ms, config.decode_ms, len(report.crossing), config.accuracy_drop),
                      report.cut_position))
    return found


def _is_image(traced: TracedModel) -> bool:
    return len(traced.example_inputs) == 1 and is_image_shape(traced.example_inputs[0].shape)
