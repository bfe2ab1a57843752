"""`edgesplit export`: a plan made into a device bundle, a folder with everything a device needs and nothing else.

:func:`export_bundle` rebuilds the plan's routes as ``edgesplit serve`` does (``load_deployment``, so route ids
match the server's), exports each route's device part to ONNX (the head with ``onnx_head.export_head``, a bottleneck
route's encoder beside it), checks every file against PyTorch (``verify_head``), adds the whole model as ONNX for
local fallback, and writes the manifest (``edgesplit.device.bundle.Manifest``). With ``quantize="int8"`` each head
is also quantized with ONNX Runtime's static quantization (QDQ: int8 weights, per channel, and uint8 activations,
MinMax calibration) calibrated on images of ``data`` (bench/device_int8.py compares this with QOperator, per-tensor,
U8U8/S8S8, reduce_range, Entropy/Percentile calibration: none was clearly faster or more accurate on the
planner's early cuts, and S8S8 left MobileNet convolutions in float); every quantized route is then run end to
end (head, codec, the server's tail) on held-out images of that data against its float route, and runs int8 only
if it loses at most ``max_accuracy_drop`` (accuracy on the data's labels, or top-1 agreement with the float route
when the labels do not fit the model or it does no better than chance). With ``formats`` holding ``"pte"``, each
head and encoder is also lowered to an ExecuTorch program (``pte_head.export_pte``, XNNPACK partitioner) and checked
against PyTorch with ExecuTorch's runtime; ``executorch`` is imported only then. :func:`load_bundle` reads a bundle
back (``edgesplit.device.bundle``, without torch).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.utils._pytree as pytree
from torch import nn

import edgesplit
from edgesplit.codecs import DecodeLimits
from edgesplit.codecs.grammar import Quantize
from edgesplit.codecs.layout import pack as pack_frames
from edgesplit.device.bundle import (MANIFEST_NAME, Bundle, BundleError, BundleFile, InputSpec, Manifest,
                                     PteProgram, QuantizedHead, QuantizedOutput, RouteEntry, SwitchRow, file_record,
                                     load_bundle)
from edgesplit.device.codecs import quantized_frame
from edgesplit.errors import EdgesplitError
from edgesplit.plan.schema import PlanReport, is_chain_plan, load_plan
from edgesplit.runtime.deployment import Deployment, Route, load_deployment
from edgesplit.runtime.infer import load_inputs
from edgesplit.runtime.onnx_head import (INPUT_PREFIX, OUTPUT_PREFIX, OnnxExportError, OnnxHead, export_head,
                                         verify_head)
from edgesplit.versioned import write_json

__all__ = ["DEFAULT_CALIBRATION", "DEFAULT_HOLDOUT", "DEFAULT_MAX_ACCURACY_DROP", "Bundle", "BundleError",
           "ExportError", "ExportSettings", "export_bundle", "load_bundle", "summary_lines"]

DEFAULT_MAX_ACCURACY_DROP = 0.01
DEFAULT_CALIBRATION = 128  # images that calibrate the int8 activations' ranges
DEFAULT_HOLDOUT = 1000  # further images the int8 routes are measured on
FORMATS = ("onnx", "pte")  # ONNX files are always written (the device client and the fallback run them)
CHECK_BATCH = 3  # seeded inputs every ONNX file is checked on against PyTorch (a batch, not the planned 1)
TOLERANCE = 1e-4
_EVAL_BATCH = 64
_EVAL_LIMITS = DecodeLimits(max_decoded_bytes=1 << 34)  # our own payloads, decoded as the server would


class ExportError(EdgesplitError):
    """A plan that cannot be exported as a bundle, or options that do not fit together."""


@dataclass(frozen=True)
class ExportSettings:
    """What `edgesplit export` takes besides the plan and the folder."""

    weights: Path | None = None
    model: str | None = None  # the trusted module:factory, as `serve --model`
    model_id: str | None = None
    quantize: str | None = None  # None or "int8"
    data: str | None = None  # a data spec as `edgesplit infer --data` takes it
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP
    calibration: int = DEFAULT_CALIBRATION
    holdout: int = DEFAULT_HOLDOUT
    per_channel: bool = True
    formats: tuple[str, ...] = ("onnx",)  # "pte" adds ExecuTorch programs of the heads and encoders


def export_bundle(plan_path: str | Path, out: str | Path, settings: ExportSettings = ExportSettings()) -> Manifest:
    """Write the bundle of the plan at ``plan_path`` into the folder ``out`` (absent or empty); its manifest."""
    plan_path, out = Path(plan_path), Path(out)
    plan = _read_plan(plan_path)
    _check_settings(settings)
    created = not out.exists()
    _prepare_out(out)
    try:
        return _export(plan, plan_path, out, settings)
    except BaseException:
        # The folder was empty (or new): what is in it now is this export's, and half a bundle is none.
        for path in out.iterdir():
            if path.is_file() or path.is_symlink():
                path.unlink()
        if created:
            out.rmdir()
        raise


def _export(plan: PlanReport, plan_path: Path, out: Path, settings: ExportSettings) -> Manifest:
    deployment = load_deployment(plan, weights=settings.weights, model_id=settings.model_id,
                                 plan_dir=plan_path.parent, model=settings.model)
    data = _quantization_data(deployment, settings) if settings.quantize else None
    check = torch.cat([deployment.example(seed=seed) for seed in range(CHECK_BATCH)])

    heads: dict[tuple, tuple[BundleFile, float]] = {}  # by cut: routes at the same cut share one head file
    entries: list[RouteEntry] = []
    for route in deployment.routes:
        entries.append(_export_route(route, out, check, heads))
    fallback, outputs = _export_model(deployment, out, check)

    quantization = None
    if data is not None:
        quantization = _quantize_routes(deployment, entries, out, data, settings)
    executorch = _export_pte_routes(deployment, entries, out, check) if "pte" in settings.formats else None
    manifest = Manifest(
        model=plan.model, model_id=deployment.model_id, fingerprint=plan.fingerprint,
        input=_input_spec(deployment), outputs=outputs, uplink_mbps=plan.link.uplink_mbps,
        chosen=plan.chosen.label, switch_table=_switch_rows(plan, deployment), routes=entries, fallback=fallback,
        onnx_io={"inputs": f"{INPUT_PREFIX}0..", "outputs": f"{OUTPUT_PREFIX}0..", "batch": "dimension 0, any size"},
        quantization=quantization, executorch=executorch, edgesplit_version=edgesplit.__version__)
    write_json(out / MANIFEST_NAME, manifest)
    return manifest


# ---- checks before any work ---------------------------------------------------------------------------------------


def _read_plan(path: Path) -> PlanReport:
    if not path.is_file():
        raise ExportError(f"no plan at {path}; make one with `edgesplit plan MODEL ... --json {path}`")
    if is_chain_plan(path):
        raise ExportError(f"{path} is a chain plan (several tiers); `edgesplit export` bundles two-tier plans only "
                          "for now: plan the device and one server (`edgesplit plan MODEL --device D --server S`)")
    return load_plan(path)


def _check_settings(settings: ExportSettings) -> None:
    unknown = [f for f in settings.formats if f not in FORMATS]
    if unknown or not settings.formats:
        raise ExportError(f"--format {','.join(settings.formats)}: the formats are onnx (always written) and pte "
                          "(ExecuTorch programs beside the ONNX files); give onnx, pte or onnx,pte")
    if "pte" in settings.formats:
        from edgesplit.runtime.pte_head import require_executorch
        require_executorch()  # a missing ExecuTorch is a user error before any work
    if settings.quantize not in (None, "int8"):
        raise ExportError(f"--quantize {settings.quantize!r}: the bundle's heads are quantized to int8 only; "
                          "use --quantize int8 or leave it out")
    if settings.quantize and not settings.data:
        raise ExportError("--quantize int8 needs --data SPEC: images to calibrate the int8 heads on and to measure "
                          "their accuracy (digits | mnist:DIR | fashion-mnist:DIR | folder:DIR ...)")
    if settings.data and not settings.quantize:
        raise ExportError("--data is read by --quantize int8 only; add --quantize int8 or leave --data out")
    if not 0.0 <= settings.max_accuracy_drop <= 1.0:
        raise ExportError(f"--max-accuracy-drop {settings.max_accuracy_drop:g} is a fraction in 0..1 (0.01 is one "
                          "point)")
    if settings.calibration < 1 or settings.holdout < 1:
        raise ExportError("--calibration and --holdout count images: give at least 1 of each")


def _prepare_out(out: Path) -> None:
    """``out`` as an empty, writable folder (a bundle holds only its own files)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; give a folder for the bundle")
    if out.is_dir() and any(out.iterdir()):
        raise ExportError(f"--out {out} is not empty; a bundle holds only its own files, so give a new or empty "
                          "folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise ExportError(f"cannot write the bundle to {out} ({error.strerror or error}); choose a writable "
                          "folder") from error


# ---- float files ----------------------------------------------------------------------------------------------------


class _Encoder(nn.Module):
    """A bottleneck route's encoder at its width, as a module ONNX can export (one tensor in, the code out)."""

    def __init__(self, route: Route):
        super().__init__()
        self.bottleneck = route.bottleneck
        self.width = route.width or 1.0

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.bottleneck.encode(features, self.width)


def _export_route(route: Route, out: Path, check: torch.Tensor,
                  heads: dict[tuple, tuple[BundleFile, float]]) -> RouteEntry:
    cut = route.split.cut
    head = encoder = None
    worst: float | None = None
    if route.kind == "split":
        key = (cut.index, tuple(cut.head or ()))
        if key not in heads:
            path, diff = _export_checked(route.split.head, (check,), out / f"route{route.route_id}-head.onnx")
            heads[key] = (file_record(path), diff)
        head, worst = heads[key]
        if route.bottleneck is not None:
            with torch.no_grad():
                features = route.split.head(check)[0]
            module = _Encoder(route).eval()
            path, diff = _export_checked(module, (features,), out / f"route{route.route_id}-encoder.onnx")
            encoder, worst = file_record(path), max(worst, diff)
    codecs = [] if route.picture is not None else [codec.to_json() for codec in route.codecs]
    files = [f for f in (head, encoder) if f is not None]
    size = sum(f.bytes for f in files)
    return RouteEntry(route_id=route.route_id, label=route.label, kind=route.kind, cut_index=cut.index,
                      position=cut.position, head_nodes=list(cut.head) if cut.head else None,
                      ranges_mbps=[list(r) for r in route.ranges], codecs=codecs,
                      picture=route.picture.spec if route.picture else None, width=route.width,
                      sends=[list(s) for s in route.sent_shapes],
                      sends_dtypes=[str(d).removeprefix("torch.") for d in route.sent_dtypes], head=head,
                      encoder=encoder, max_abs_diff=worst, device_bytes=size, bytes_on_disk=size)


def _export_checked(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> tuple[Path, float]:
    """Export ``module`` to ``path`` and check the file computes what the module does (``verify_head``)."""
    export_head(module, inputs, path)
    return path, verify_head(module, OnnxHead(path, threads=1), inputs, atol=TOLERANCE, rtol=TOLERANCE)


def _export_model(deployment: Deployment, out: Path, check: torch.Tensor) -> tuple[BundleFile, list[list[int]]]:
    """The whole model (its traced graph, of which every head is a part) as ``model.onnx``; its output shapes."""
    module = deployment.traced.graph_module
    try:
        path, _ = _export_checked(module, (check,), out / "model.onnx")
    except OnnxExportError as error:
        raise ExportError(f"the whole model (the device's fallback) cannot be exported: {error}") from error
    with torch.no_grad():
        outputs = [list(t.shape[1:]) for t in pytree.tree_leaves(module(deployment.example()))]
    return file_record(path), [[1, *shape] for shape in outputs]


def _input_spec(deployment: Deployment) -> InputSpec:
    shape = list(deployment.plan.input_shape)
    if not deployment.input_dtype.is_floating_point:
        vocab = deployment.vocab_size
        return InputSpec(shape=shape, dtype="int64", layout="NT", low=0, high=(vocab or 1) - 1, vocab_size=vocab,
                         preprocessing="token ids from the model's tokenizer, each sequence exactly "
                                       f"{shape[-1]} ids long (pad or cut)")
    image = len(shape) == 4 and shape[1] in (1, 3)
    channels = ("gray" if shape[1] == 1 else "rgb") if image else None
    words = (f"{'gray' if shape[1] == 1 else 'RGB'} images resized to {shape[2]}×{shape[3]}, float32 in [0, 1] "
             "(8-bit levels / 255), channels first (N×C×H×W), no mean or std normalisation (the model does its own)"
             if image else "float32 features of the planned shape")
    return InputSpec(shape=shape, dtype="float32", layout="NCHW" if len(shape) == 4 else "N...", low=0.0, high=1.0,
                     channels=channels, preprocessing=words)


def _switch_rows(plan: PlanReport, deployment: Deployment) -> list[SwitchRow]:
    rows = []
    for row in plan.switch_table:
        route = deployment.route_for_label(row.label) if row.kind != "all-device" else None
        rows.append(SwitchRow(low_mbps=row.low_mbps, high_mbps=row.high_mbps, label=row.label, kind=row.kind,
                              route_id=route.route_id if route is not None else None))
    return rows


# ---- ExecuTorch programs ------------------------------------------------------------------------------------------


def _export_pte_routes(deployment: Deployment, entries: list[RouteEntry], out: Path, check: torch.Tensor) -> dict:
    """Each route's head (and encoder) as an ExecuTorch program beside its ONNX file, checked against PyTorch."""
    from edgesplit.runtime.pte_head import BATCH, PteHead, executorch_version, export_pte, verify_pte

    def lowered(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> tuple[BundleFile, float]:
        """The program of ``module`` for a batch of BATCH, checked on every check input, BATCH at a time."""
        export_pte(module, tuple(t[:BATCH] for t in inputs), path)
        program = PteHead(path)
        worst = max(verify_pte(module, program, tuple(t[i:i + BATCH] for t in inputs), atol=TOLERANCE,
                               rtol=TOLERANCE) for i in range(0, len(inputs[0]), BATCH))
        return file_record(path), worst

    heads: dict[str, tuple[BundleFile, float]] = {}  # by ONNX head file: routes sharing a head share its program
    for route, entry in zip(deployment.routes, entries):
        if entry.head is None:
            continue
        if entry.head.name not in heads:
            heads[entry.head.name] = lowered(route.split.head, (check,),
                                             out / entry.head.name.replace("-head.onnx", "-head.pte"))
        head, worst = heads[entry.head.name]
        encoder = None
        if entry.encoder is not None:
            with torch.no_grad():
                features = route.split.head(check)[0]
            encoder, diff = lowered(_Encoder(route).eval(), (features,),
                                    out / entry.encoder.name.replace("-encoder.onnx", "-encoder.pte"))
            worst = max(worst, diff)
        entry.pte = PteProgram(head=head, encoder=encoder, batch=BATCH, max_abs_diff=worst)
        entry.bytes_on_disk = sum(f.bytes for f in entry.files())
    return {"version": executorch_version(), "method": "forward", "backend": "xnnpack", "batch": BATCH,
            "io": "inputs and outputs in the ONNX files' order, as a flat list"}


# ---- int8 -----------------------------------------------------------------------------------------------------------


@dataclass
class _Data:
    calibration: torch.Tensor
    images: torch.Tensor  # held out: never seen by the calibration
    labels: torch.Tensor | None
    source: str


def _quantization_data(deployment: Deployment, settings: ExportSettings) -> _Data:
    if not deployment.input_dtype.is_floating_point:
        raise ExportError("--quantize int8 quantizes heads that take images or features; this plan's model takes "
                          "token ids: export it without --quantize")
    inputs = load_inputs(deployment.plan.input_shape, data=settings.data,
                         limit=settings.calibration + settings.holdout)
    count = len(inputs.images)
    if count < 2:
        raise ExportError(f"--data {settings.data} gives {count} image(s); the int8 heads need some to calibrate on "
                          "and others to be measured on")
    calibration = min(settings.calibration, count // 2)  # at least half of the images stay held out
    labels = inputs.labels[calibration:] if inputs.labels is not None else None
    return _Data(inputs.images[:calibration], inputs.images[calibration:], labels, inputs.source)


class _Reader:
    """onnxruntime's calibration data reader: the calibration images, a batch at a time."""

    def __init__(self, images: torch.Tensor, batch: int = 16):
        self.batches = [{f"{INPUT_PREFIX}0": b.numpy()} for b in images.split(batch)]

    def get_next(self) -> dict | None:
        return self.batches.pop(0) if self.batches else None

    def rewind(self) -> None:
        """Nothing to rewind: onnxruntime reads the batches once (older versions call this)."""


def _quantize(source: Path, target: Path, images: torch.Tensor, per_channel: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
        except Exception:  # noqa: BLE001 - the pre-processing is an optimisation; quantize the file as it is
            prepared = source
        try:
            quantize_static(str(prepared), str(target), _Reader(images), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                            calibrate_method=CalibrationMethod.MinMax)
        except Exception as error:  # onnxruntime raises many types; all mean the same here
            raise ExportError(f"ONNX Runtime cannot quantize {source.name} to int8 ({type(error).__name__}: "
                              f"{str(error).splitlines()[0][:200] if str(error) else ''}); export without "
                              "--quantize") from error


def _quantize_routes(deployment: Deployment, entries: list[RouteEntry], out: Path, data: _Data,
                     settings: ExportSettings) -> dict:
    quantized: dict[str, Path] = {}  # float head file → its int8 file
    emitted: dict[str, tuple[list[float], list[int]] | None] = {}  # int8 file emitting uint8 → (scales, zero points)
    for route, entry in zip(deployment.routes, entries):
        if entry.head is None:
            continue
        if entry.head.name not in quantized:
            target = out / entry.head.name.replace("-head.onnx", "-head.int8.onnx")
            _quantize(out / entry.head.name, target, data.calibration, settings.per_channel)
            quantized[entry.head.name] = target
        target = quantized[entry.head.name]
        # Where the route can send the int8 head's own uint8 tensors (no dequantizing, no second quantization by the
        # codec), the device runs that head: measure what it will send, not the head + codec it will not run.
        direct, output = None, None
        if route.bottleneck is None and route.picture is None and _frames_directly(route.codecs):
            direct = target.with_name(target.name.replace(".int8.onnx", ".int8-uint8.onnx"))
            if direct.name not in emitted:
                try:
                    emitted[direct.name] = emit_quantized(target, direct)
                except ValueError:  # an output not made by a per-tensor uint8 DequantizeLinear: codec it is
                    emitted[direct.name] = None
            if emitted[direct.name] is not None:
                scales, zero_points = emitted[direct.name]
                output = QuantizedOutput(file=file_record(direct), scales=scales, zero_points=zero_points)
        measured = _measure(route, OnnxHead(out / entry.head.name, threads=1),
                            OnnxHead(direct if output is not None else target, threads=1), data, output)
        used = measured["drop"] <= settings.max_accuracy_drop + 1e-12
        name = measured["metric"]
        note = (f"runs int8: {name} {measured['float_score']:.4f} → {measured['int8_score']:.4f} on "
                f"{measured['samples']} held-out images, within the {settings.max_accuracy_drop:g} allowed" if used else
                f"keeps its float head: int8 {name} {measured['float_score']:.4f} → {measured['int8_score']:.4f} "
                f"loses {measured['drop']:.4f}, more than the {settings.max_accuracy_drop:g} allowed")
        entry.int8 = QuantizedHead(file=file_record(target), per_channel=settings.per_channel,
                                   calibration_samples=len(data.calibration), used=used, note=note, **measured)
        entry.runs = "int8" if used else "float32"
        if used and output is not None:
            entry.int8.quantized_output = output
    # An int8 file no route runs is not shipped: its measurement stays in the manifest, the file goes.
    kept = {e.int8.file.name for e in entries if e.int8 is not None and e.int8.used}
    for target in quantized.values():
        if target.name not in kept:
            target.unlink()
    framing = {e.int8.quantized_output.file.name for e in entries if e.int8 is not None and e.int8.quantized_output}
    for name in emitted:
        if name not in framing and (out / name).exists():
            (out / name).unlink()
    for entry in entries:
        if entry.int8 is not None and entry.int8.file is not None and entry.int8.file.name not in kept:
            entry.int8 = entry.int8.model_copy(update={"file": None})
        encoder = entry.encoder.bytes if entry.encoder else 0
        entry.device_bytes = (entry.run_file.bytes if entry.run_file else 0) + encoder
        entry.bytes_on_disk = sum(f.bytes for f in entry.files())
    return {"data": settings.data, "source": data.source, "calibration_samples": len(data.calibration),
            "holdout_samples": len(data.images), "max_accuracy_drop": settings.max_accuracy_drop,
            "format": "QDQ", "weights": "int8", "activations": "uint8", "per_channel": settings.per_channel,
            "calibration_method": "minmax"}


def _frames_directly(codecs) -> bool:
    """Whether every codec is plain ``int8`` (8 bits, one range per tensor from its min/max, not calibrated, no
    lossless stage): the int8 head's own quantized output can then be sent as that codec's frame."""
    return bool(codecs) and all(
        isinstance(c.transform, Quantize) and c.transform.bits == 8 and c.transform.per_tensor
        and not c.transform.calibrated and c.transform.percentile is None and c.lossless is None for c in codecs)


def emit_quantized(source: Path, target: Path) -> tuple[list[float], list[int]]:
    """``source`` (a QDQ int8 head) with each output's last DequantizeLinear removed, written to ``target``: the
    outputs are the uint8 tensors its QuantizeLinears make. Returns each output's scale and zero point; raises
    ValueError where an output is not a per-tensor uint8 DequantizeLinear of initializers."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    scales, zero_points = [], []
    for output in graph.output:
        producer = next((n for n in graph.node if output.name in n.output), None)
        if producer is None or producer.op_type != "DequantizeLinear" or len(producer.input) < 3:
            raise ValueError(f"output {output.name} is not made by a DequantizeLinear with a zero point")
        scale, zero = initializers.get(producer.input[1]), initializers.get(producer.input[2])
        if scale is None or zero is None or scale.size != 1 or zero.size != 1 or zero.dtype.name != "uint8":
            raise ValueError(f"output {output.name} is not a per-tensor uint8 quantization")
        quantized = producer.input[0]
        if any(quantized == o.name for o in graph.output):
            raise ValueError(f"output {output.name} dequantizes another output")
        graph.node.remove(producer)
        for node in graph.node:  # the quantized tensor takes the output's name
            for names in (node.output, node.input):
                for k, name in enumerate(names):
                    if name == quantized:
                        names[k] = output.name
        output.type.tensor_type.elem_type = onnx.TensorProto.UINT8
        scales.append(float(scale.reshape(())))
        zero_points.append(int(zero.reshape(())))
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return scales, zero_points


def _measure(route: Route, float_head: OnnxHead, int8_head: OnnxHead, data: _Data,
             output: QuantizedOutput | None = None) -> dict:
    """Run ``route`` end to end (head, encoder, codec, the server's tail) on the held-out images with either head;
    with ``output``, ``int8_head`` returns uint8 tensors, sent as frames as they are (as the device sends them)."""
    float_predictions, int8_predictions = [], []
    for batch in data.images.split(_EVAL_BATCH):
        float_predictions.append(_predict(route, float_head, batch))
        int8_predictions.append(_predict(route, int8_head, batch, output))
    fp, q = torch.cat(float_predictions), torch.cat(int8_predictions)
    agreement = (fp == q).double().mean().item()
    labels = data.labels
    metric, float_score, int8_score = "agreement", 1.0, agreement
    if labels is not None and fp.dim() == 1 and len(labels) == len(fp):
        float_accuracy = (fp == labels).double().mean().item()
        chance = 1.0 / max(int(labels.max()) + 1, 2)
        if float_accuracy > 1.5 * chance:  # a model that has learnt something from these labels
            metric, float_score = "accuracy", float_accuracy
            int8_score = (q == labels).double().mean().item()
    return {"metric": metric, "float_score": float_score, "int8_score": int8_score, "agreement": agreement,
            "drop": max(0.0, float_score - int8_score), "samples": len(fp)}


def _predict(route: Route, head: OnnxHead, images: torch.Tensor, output: QuantizedOutput | None = None) -> torch.Tensor:
    """Top-1 of the route's output for ``images`` when the device runs ``head`` and the server decodes the bytes
    (with ``output``: the head's uint8 tensors framed as they are, ``device.codecs.quantized_frame``)."""
    with torch.no_grad():
        tensors = list(head(images))
        if output is not None:
            payload = pack_frames([quantized_frame(t.numpy(), scale, zero)
                                   for t, scale, zero in zip(tensors, output.scales, output.zero_points)])
        else:
            if route.bottleneck is not None:
                tensors = [route.bottleneck.encode(tensors[0], route.width or 1.0)]
            payload = route.encode(tensors)
        received = route.decode(payload, _EVAL_LIMITS, len(images))
        logits = pytree.tree_leaves(route.server_side(received))[0]
    return logits.argmax(-1)


def _size_text(n: int) -> str:
    return f"{n:,} B" if n < 10_000 else f"{n / 1e3:,.1f} kB" if n < 10_000_000 else f"{n / 1e6:,.1f} MB"


def summary_lines(out: Path, manifest: Manifest) -> list[str]:
    """What `edgesplit export` prints: the bundle's files and, per route, what the device runs."""
    files = manifest.files()
    total = sum(f.bytes for f in files) + (out / MANIFEST_NAME).stat().st_size
    lines = [(f"bundle in {out}/: {len(files) + 1} files, {_size_text(total)} (model {manifest.model}, server "
              f"model id {manifest.model_id}, graph {manifest.fingerprint})"),
             f"fallback {manifest.fallback.name} {_size_text(manifest.fallback.bytes)}"]
    for route in manifest.routes:
        if route.head is None:
            lines.append(f"route {route.route_id} {route.label}: sends the input "
                         f"({route.picture or route.codecs[0]['spec']}), no head")
            continue
        parts = [f"head {route.head.name} {_size_text(route.head.bytes)}"]
        if route.encoder is not None:
            parts.append(f"encoder {_size_text(route.encoder.bytes)}")
        if route.pte is not None:
            parts.append(f"ExecuTorch {route.pte.head.name} {_size_text(route.pte.head.bytes)}")
        if route.int8 is not None:
            size = f" {_size_text(route.int8.file.bytes)}" if route.int8.file else ""
            parts.append(f"int8{size}: {route.int8.note}")
        lines.append(f"route {route.route_id} {route.label}: " + "; ".join(parts))
    return lines

