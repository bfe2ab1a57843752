"""Time a model's heads and tails under ONNX Runtime, float32 or int8: what a device running a bundle pays.

A device that runs the bundle of ``edgesplit export`` runs its head with onnxruntime, in float32 or, with
``--quantize int8``, as an int8 QDQ model; its latencies are not PyTorch's. :func:`onnx_profile` turns a PyTorch
``ProfileReport`` (which gives MACs, bytes, memory and the node latencies of the whole graph) into one whose
latencies were measured under onnxruntime (``runtime`` ``"onnx"`` or ``"onnx-int8"``), so that
``edgesplit profile MODEL --runtime onnx-int8 --save-device NAME.json`` makes the device profile the planner reads.

Affordable: the model is exported to ONNX **once**, with every crossing tensor of the cuts to time as an extra
output (a "tap"); for int8 that one file is quantized once, with the settings of ``edgesplit export --quantize
int8`` (static, QDQ, int8 weights per channel, uint8 activations, MinMax calibration) on ``calibration`` images of
``data``. Each timed cut's head (the model's inputs to the cut's crossing taps) and tail (the taps to the model's
outputs) are then cut out of that file with ``onnx.utils.Extractor`` and run in their own session, interleaved in
``runs`` rounds with the whole model as the profiler does. Graphs of up to ``ALL_CUTS_UP_TO`` cuts have every cut
timed; larger ones a bounded sample of ``SAMPLED_CUTS``: the cuts the PyTorch profile measured (the ones a planner
could choose, and any named), topped up with cuts evenly spaced along the graph. Those cuts keep their measured
latencies (``measured``); node latencies are derived from them: the ONNX Runtime time between two timed cuts is
shared out among the nodes between them in proportion to their PyTorch latencies, so the nodes' sums equal the
measured heads at the timed cuts, and stand in for the heads and tails of the cuts not timed.

With ``onnx-int8``, ``model_ms`` (what the planner charges for running all of the model on the device) is the
float32 ONNX model's: a bundle's all-device route and its fallback run the float ``model.onnx``, as export quantizes
heads only; the int8 whole model only anchors the node latencies. What stays PyTorch's: MACs, weights, crossing bytes and ``head_peak_bytes`` (the liveness of the graph's tensors).
A head cut out of the tapped file may differ from the file ``export`` writes for that head alone (the exporter's
optimiser sees different outputs; an int8 tail starts from the float crossing tensor); onnxruntime's own graph
optimisations run on each extracted part as on an exported head.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree
from torch import fx

from edgesplit.errors import EdgesplitError
from edgesplit.model.graph import TracedModel
from edgesplit.profile.schema import CutProfile, ProfileReport, Runtime
from edgesplit.profile.timing import Sampler
from edgesplit.progress import progress_bar

__all__ = ["ALL_CUTS_UP_TO", "CALIBRATION_IMAGES", "RUNTIMES", "SAMPLED_CUTS", "OnnxProfileError", "onnx_profile",
           "require_onnx_runtime"]

RUNTIMES: tuple[str, ...] = ("torch", "onnx", "onnx-int8")
ALL_CUTS_UP_TO = 24  # graphs with at most this many cuts have every cut timed under onnxruntime
SAMPLED_CUTS = 16  # cuts timed on larger graphs
CALIBRATION_IMAGES = 32  # images the int8 model's activation ranges are calibrated on
_INSTALL = "install the extra: pip install 'edgesplit[onnx]'"


class OnnxProfileError(EdgesplitError):
    """A profile that cannot be measured under ONNX Runtime: packages missing, a model that does not export, data."""


def onnx_profile(traced: TracedModel, report: ProfileReport, runtime: Runtime, *, data: str | None = None,
                 runs: int = 20, warmup: int = 3, threads: int | None = None, progress: bool = True,
                 calibration: int = CALIBRATION_IMAGES) -> ProfileReport:
    """``report`` (PyTorch's profile of ``traced``) with its latencies measured under onnxruntime ``runtime``.

    ``data`` is the data set spec the int8 model is calibrated on (default: the bundled photos for colour
    inputs, digits for gray ones); ``threads`` sets onnxruntime's intra-op threads (default: torch's).
    """
    ort = require_onnx_runtime(runtime)
    threads = threads or torch.get_num_threads()
    int8 = runtime == "onnx-int8"
    images = _calibration_images(traced, data, calibration) if int8 else None
    chosen = _cuts_to_time(report)
    taps = _tap_names(traced, chosen)
    n_outputs = len(pytree.tree_leaves(_run(traced.graph_module, traced.example_inputs)))
    names = {name: f"crossing_{n_outputs + k}" for k, name in enumerate(taps)}
    names.update({node.name: f"input_{k}" for k, node in enumerate(_placeholders(traced.graph_module))})
    outputs = [f"crossing_{k}" for k in range(n_outputs)]

    with progress_bar(progress) as bar, tempfile.TemporaryDirectory() as scratch:
        task = bar.add_task(f"profiling {report.model.name} under {runtime}", total=3 + 2 * len(chosen) + runs,
                            status="exporting the model to ONNX")
        path = float_path = _export_tapped(traced, taps, Path(scratch) / "model.onnx")
        bar.advance(task)
        if int8:
            bar.update(task, status=f"quantizing to int8 on {len(images)} images")
            path = _quantize(path, Path(scratch) / "model.int8.onnx", images)
        bar.advance(task)
        import onnx
        from onnx.utils import Extractor

        model = onnx.load(str(path))
        inputs = [i.name for i in model.graph.input]
        feed = {name: t.numpy() for name, t in zip(inputs, traced.example_inputs)}
        values = dict(zip([o.name for o in model.graph.output], _session(ort, model.SerializeToString(), threads)
                          .run(None, feed)))
        values.update(feed)
        source = _sources(model)
        extractor = Extractor(model)
        whole = _sampler(ort, extractor.extract_model(inputs, outputs), values, threads, warmup)
        # The bundle's all-device route and fallback run the float model.onnx (export quantizes heads only).
        whole_float = (_sampler(ort, Extractor(onnx.load(str(float_path))).extract_model(inputs, outputs), values,
                                threads, warmup) if int8 else whole)
        bar.advance(task)
        heads: dict[int, Sampler] = {}
        tails: dict[int, Sampler] = {}
        for index in chosen:
            cut = report.cuts[index]
            bar.update(task, status=f"cutting head and tail {index} out of the ONNX model")
            sent = list(dict.fromkeys(source(names[t.name]) for t in cut.crossing))
            computed = [name for name in sent if name not in inputs]
            if cut.position > 0 and computed:
                heads[index] = _sampler(ort, extractor.extract_model(inputs, computed), values, threads, warmup)
            bar.advance(task)
            produced = [name for name in outputs if source(name) not in sent]  # an output that crosses costs nothing
            if cut.position < len(report.nodes) and produced:
                tails[index] = _sampler(ort, extractor.extract_model(sent, produced), values, threads, warmup)
            bar.advance(task)
        for round_number in range(runs):
            bar.update(task, status=f"timing round {round_number + 1}/{runs}")
            whole.sample()
            if whole_float is not whole:
                whole_float.sample()
            for index in chosen:
                for sampler in (heads.get(index), tails.get(index)):
                    if sampler is not None:
                        sampler.sample()
            bar.advance(task)

    head_ms = {index: heads[index].median_ms if index in heads else 0.0 for index in chosen}
    tail_ms = {index: tails[index].median_ms if index in tails else 0.0 for index in chosen}
    return _with_latencies(report, runtime, whole.median_ms, whole_float.median_ms, head_ms, tail_ms)


# ---- which cuts, and their tensors -----------------------------------------------------------------------------------


def _cuts_to_time(report: ProfileReport) -> list[int]:
    """Every cut of a small graph; else the cuts PyTorch measured, topped up evenly along the graph."""
    cuts = report.cuts
    if len(cuts) <= ALL_CUTS_UP_TO:
        return [c.index for c in cuts]
    chosen = list(dict.fromkeys(c.index for c in cuts if c.measured))[:SAMPLED_CUTS]
    by_position = sorted(cuts, key=lambda c: (c.position, c.index))
    spare = SAMPLED_CUTS - len(chosen)
    for k in range(max(spare, 0)):
        candidate = by_position[round((k + 1) * (len(by_position) - 1) / (spare + 1))].index
        if candidate not in chosen:
            chosen.append(candidate)
    return sorted(set(chosen))


def _placeholders(graph_module: fx.GraphModule) -> list[fx.Node]:
    return [node for node in graph_module.graph.nodes if node.op == "placeholder"]


def _tap_names(traced: TracedModel, chosen: Sequence[int]) -> list[str]:
    """Names of the computed tensors that cross any of the ``chosen`` cuts (inputs are the model's own)."""
    placeholders = {node.name for node in _placeholders(traced.graph_module)}
    return list(dict.fromkeys(t.name for index in chosen for t in traced.cuts[index].crossing
                              if t.name not in placeholders))


def _run(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    with torch.no_grad():
        return module(*inputs)


class _Tapped(torch.nn.Module):
    """The model returning its outputs and then every tap, as one flat tuple of tensors."""

    def __init__(self, graph_module: fx.GraphModule, taps: Sequence[str]):
        super().__init__()
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        by_name: dict[str, fx.Node] = {}
        for node in graph_module.graph.nodes:
            if node.op == "output":
                leaves = pytree.tree_leaves(node.args[0])
                graph.output(tuple(env[n] if isinstance(n, fx.Node) else n for n in leaves)
                             + tuple(by_name[name] for name in taps))
                continue
            env[node] = graph.node_copy(node, lambda arg: env[arg])
            by_name[node.name] = env[node]
        self.module = fx.GraphModule(graph_module, graph)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.module(*inputs)


def _export_tapped(traced: TracedModel, taps: Sequence[str], path: Path) -> Path:
    from edgesplit.runtime.onnx_head import OnnxExportError, export_head

    try:
        return export_head(_Tapped(traced.graph_module, taps), traced.example_inputs, path)
    except OnnxExportError as error:
        raise OnnxProfileError(f"cannot time this model under ONNX Runtime: {error}") from error


# ---- int8 ------------------------------------------------------------------------------------------------------------


def _calibration_images(traced: TracedModel, data: str | None, limit: int) -> torch.Tensor:
    from edgesplit.model.data import DataError, input_samples

    shape = list(traced.example_inputs[0].shape)
    if len(traced.example_inputs) != 1 or not traced.example_inputs[0].is_floating_point():
        raise OnnxProfileError("--runtime onnx-int8 calibrates on images and this model does not take one image "
                               "tensor; profile it with --runtime onnx")
    try:
        images = input_samples(shape, data, limit)
    except DataError as error:
        raise OnnxProfileError(f"--data {data}: {error}") from error
    if images is None:
        raise OnnxProfileError(f"--runtime onnx-int8 calibrates on images and this model takes {shape} inputs; "
                               "profile it with --runtime onnx")
    return images


class _Reader:
    """onnxruntime's calibration data reader: the images, one at a time (the planned batch)."""

    def __init__(self, name: str, images: torch.Tensor):
        self.batches = [{name: image[None].numpy()} for image in images]

    def get_next(self) -> dict | None:
        return self.batches.pop(0) if self.batches else None

    def rewind(self) -> None:
        """Nothing to rewind: onnxruntime reads the batches once (older versions call this)."""


def _quantize(source: Path, target: Path, images: torch.Tensor) -> Path:
    """``source`` quantized as ``edgesplit export --quantize int8`` quantizes a head."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = source.with_suffix(".prepared.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a warning per weight it cannot quantize per channel
    try:
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
        except Exception:  # noqa: BLE001 - the pre-processing is an optimisation; quantize the file as it is
            prepared = source
        quantize_static(str(prepared), str(target), _Reader("input_0", images), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax)
    except Exception as error:  # onnxruntime raises many types; all mean the same here
        first = str(error).splitlines()[0][:200] if str(error) else ""
        raise OnnxProfileError(f"ONNX Runtime cannot quantize this model to int8 ({type(error).__name__}: {first}); "
                               "profile it with --runtime onnx") from error
    finally:
        root.setLevel(level)
    return target


# ---- sessions and timing ---------------------------------------------------------------------------------------------


def require_onnx_runtime(runtime: str) -> Any:
    """The ``onnxruntime`` module, once ``runtime`` is one of ours and the ONNX packages import; else a one-line
    OnnxProfileError (before any work, so a profile does not fail after minutes of timing)."""
    if runtime not in ("onnx", "onnx-int8"):
        raise OnnxProfileError(f"--runtime {runtime}: choose {', '.join(RUNTIMES)}")
    for name in ("onnx", "onnxscript", "onnxruntime", "onnxruntime.quantization"):
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise OnnxProfileError(f"--runtime {runtime} needs the package {name.split('.')[0]}, which is not "
                                   f"installed; {_INSTALL}") from error
    return importlib.import_module("onnxruntime")


def _sources(model: Any) -> Any:
    """Each graph value's source through Identity nodes, where that source is a graph input or output: the
    exporter returns a value that is both a tap and a model output (or two taps) once, and an Identity of it."""
    aliases = {node.output[0]: node.input[0] for node in model.graph.node
               if node.op_type == "Identity" and len(node.input) == 1 and len(node.output) == 1}
    visible = {value.name for value in [*model.graph.input, *model.graph.output]}

    def source(name: str) -> str:
        seen = {name}
        while aliases.get(name) in visible and aliases[name] not in seen:
            name = aliases[name]
            seen.add(name)
        return name

    return source


def _session(ort: Any, model: bytes, threads: int) -> Any:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _sampler(ort: Any, model: Any, values: dict[str, np.ndarray], threads: int, warmup: int) -> Sampler:
    """A sampler of one part cut out of the ONNX model, fed from one run of the whole tapped model."""
    session = _session(ort, model.SerializeToString(), threads)
    feed = {i.name: values[i.name] for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    return Sampler(lambda: session.run(names, feed), (), warmup)


# ---- the report ------------------------------------------------------------------------------------------------------


def _with_latencies(report: ProfileReport, runtime: Runtime, whole_ms: float, model_ms: float,
                    head_ms: dict[int, float], tail_ms: dict[int, float]) -> ProfileReport:
    """``report`` with node, head, tail and model latencies from the timed cuts (see the module docstring).

    ``whole_ms`` is the whole model in ``runtime`` (the last anchor of the node latencies); ``model_ms``, what the
    device runs when it runs all of it: the float32 model, also for ``onnx-int8``."""
    n = len(report.nodes)
    torch_ms = [node.latency_ms for node in report.nodes]
    # Measured heads by position, made non-decreasing along the graph (timing noise can make a longer head
    # come out faster), ending at the whole model.
    anchors: dict[int, float] = {0: 0.0}
    for index, ms in head_ms.items():
        position = report.cuts[index].position
        if 0 < position < n:
            anchors[position] = max(anchors.get(position, 0.0), ms)
    anchors[n] = max([whole_ms, *anchors.values()])
    positions = sorted(anchors)
    level = 0.0
    for position in positions:
        level = anchors[position] = max(level, anchors[position])
    node_ms = [0.0] * n
    for start, end in itertools.pairwise(positions):
        share = anchors[end] - anchors[start]
        weights = torch_ms[start:end]
        total = sum(weights)
        for k in range(start, end):
            node_ms[k] = share * (weights[k - start] / total if total > 0 else 1 / (end - start))
    prefix = np.concatenate([[0.0], np.cumsum(node_ms)])
    nodes = [node.model_copy(update={"latency_ms": float(ms), "latency_isolated_ms": None})
             for node, ms in zip(report.nodes, node_ms)]
    cuts = [_cut(cut, prefix, head_ms, tail_ms) for cut in report.cuts]
    return report.model_copy(update={"nodes": nodes, "cuts": cuts, "model_ms": model_ms, "runtime": runtime,
                                     "torch_model_ms": report.model_ms, "calibration": None})


def _cut(cut: CutProfile, prefix: np.ndarray, head_ms: dict[int, float], tail_ms: dict[int, float]) -> CutProfile:
    head_summed = float(prefix[cut.position])
    tail_summed = float(prefix[-1] - prefix[cut.position])
    measured = cut.index in head_ms
    return cut.model_copy(update={
        "head_ms": head_ms[cut.index] if measured else head_summed, "head_ms_summed": head_summed,
        "tail_ms": tail_ms[cut.index] if measured else tail_summed, "tail_ms_summed": tail_summed,
        "measured": measured, "head_ms_torch": cut.head_ms})
