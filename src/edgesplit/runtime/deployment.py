"""A plan made runnable: the model rebuilt, and one route (head, codec, tail) per way the switch table may run it.

Client and server build the same routes from the same plan; routes are numbered in switch-table order, so a
route id names the same cut, codec and width on both sides. Switching is then a lookup, never a re-trace.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edgesplit.codecs import (Codec, CodecError, DecodeCost, DecodeLimits, codec_from_json, pack, pack_count,
                              parse_codec, unpack_bytes, unpack_cost, unpacking)
from edgesplit.codecs.frame import Unpacking
from edgesplit.compress.bottleneck import SlimmableBottleneck, bottleneck_config, load_checkpoint
from edgesplit.compress.pictures import PICTURE_BYTES_PER_PIXEL, decode_picture, encode_picture
from edgesplit.compress.rate import CompressReport, code_codec, load_compress
from edgesplit.errors import EdgesplitError
from edgesplit.model.graph import Split, TracedModel, trace
from edgesplit.model.intake import ModelRef, build_model, example_input, load_weights, read_weights
from edgesplit.plan.schema import PlanEntry, PlanReport, SwitchRange
from edgesplit.runtime.adapt import row_label_at
from edgesplit.runtime.wire import Status, WireError, model_id_for

__all__ = ["Deployment", "DeploymentError", "PictureCodec", "Route", "load_deployment"]

# The all-server plans' input formats: raw 8-bit levels as a codec frame (exact levels over [0, 1]); PNG and JPEG
# as pictures.
_UINT8 = parse_codec("uint8").with_range(0.0, 1.0)
_UNBOUNDED = DecodeLimits(max_decoded_bytes=1 << 62)  # decode_cost reports a cost over any limit; decode refuses it


@dataclass(frozen=True)
class PictureCodec:
    """Whole input images sent as PNG or JPEG (what the planner costs for all-server plans), one per row."""

    spec: str  # "png" or "jpeg q90"
    options: tuple[tuple[str, object], ...]

    def encode(self, images: torch.Tensor) -> bytes:
        return pack([encode_picture(image, dict(self.options)) for image in images])

    def decode(self, payload: bytes, shape: tuple[int, ...], max_rows: int,
               limits: DecodeLimits = DecodeLimits()) -> torch.Tensor:
        """The N×C×H×W images of a payload. What the decode holds at once (the pictures' bytes, the tensor, and
        Pillow's working memory for one picture) is checked against ``limits`` before any picture is opened."""
        try:
            pictures = unpack_bytes(payload, max_rows)
        except CodecError as error:
            raise WireError(f"input pictures: {error}") from error
        held = self.held_bytes(pictures, shape)
        if held > limits.max_decoded_bytes:
            raise WireError(f"input pictures: {len(pictures)} pictures of {'×'.join(map(str, shape[1:]))} hold "
                            f"{held:,} bytes while they decode, over the decode limit of "
                            f"{limits.max_decoded_bytes:,}; send fewer rows per request")
        images = torch.empty((len(pictures), *shape[1:]), dtype=torch.float32)
        try:
            for picture, image in zip(pictures, images):
                decode_picture(picture, tuple(shape[1:]), out=image)
        except ValueError as error:
            raise WireError(f"input picture: {error}; send the image at the model's input size") from error
        return images

    @staticmethod
    def held_bytes(pictures: list[bytes], shape: tuple[int, ...]) -> int:
        """The most decoding ``pictures`` (rows of ``shape``) holds at once: their bytes, the float32 tensor, and
        Pillow's working memory for the largest picture it may open (one at a time, each exactly the model's size)."""
        pixels = math.prod(shape[2:])
        return sum(map(len, pictures)) + len(pictures) * math.prod(shape[1:]) * 4 + \
            (PICTURE_BYTES_PER_PIXEL * pixels if pictures else 0)


_PICTURES = {"png": PictureCodec("png", (("format", "PNG"),)),
             "jpeg": PictureCodec("jpeg q90", (("format", "JPEG"), ("quality", 90)))}


class DeploymentError(EdgesplitError):
    """A plan that cannot be made runnable: its model, weights, cut or codec cannot be rebuilt."""


def _decode_work(cost: DecodeCost) -> int:
    """A decode's work in bytes copied: what it holds at once, plus 16 a value it computes (dequantizes or casts)
    and 32 more a value an ANS stage decodes (their measured cost against copying a byte)."""
    return cost.peak_bytes + 16 * cost.converted_values + 32 * cost.ans_symbols


@dataclass
class Route:
    """One way to run the model across the network: the head and its encoder, the codec, the server's tail."""

    route_id: int
    label: str
    kind: str  # "split" or "all-server"
    split: Split
    codecs: list[Codec]  # one per crossing tensor
    tail: nn.Module
    bottleneck: SlimmableBottleneck | None = None
    width: float | None = None
    ranges: list[tuple[float, float]] = field(default_factory=list)  # the switch table's [low, high) Mbit/s
    picture: PictureCodec | None = None  # all-server plans that send the input as PNG or JPEG
    # Per crossing tensor: the vocabulary size when it holds the model's token ids (the input, or a view of it),
    # so ids outside 0..vocab-1 are refused as a bad request before the tail's embedding sees them.
    vocab: tuple[int | None, ...] = ()

    @property
    def sent_shapes(self) -> list[tuple[int, ...]]:
        """The shape of each tensor the device sends for one input (batch dimension 1)."""
        shapes = [tuple(t.shape) for t in self.split.cut.crossing]
        if self.bottleneck is not None:
            shapes = [(1, *self.bottleneck.code_shape(shapes[0][1:], self.width or 1.0))]
        return shapes

    @property
    def sent_dtypes(self) -> list[torch.dtype]:
        """The dtype the tail takes for each sent tensor: float32 for floating-point features (whatever a codec
        sends them as) and for a bottleneck's code, the crossing tensor's own dtype for integer ones (token ids)."""
        if self.bottleneck is not None or self.picture is not None:
            return [torch.float32] * len(self.sent_shapes)
        dtypes = [getattr(torch, spec.dtype, torch.float32) for spec in self.split.cut.crossing]
        return [torch.float32 if d.is_floating_point else d for d in dtypes]

    def warm_inputs(self) -> list[torch.Tensor]:
        """What the server's warm-up feeds the tail: zeros of each sent tensor's shape and dtype (id 0 is in every
        vocabulary), so a route that takes token ids warms up on int64 ids, not floats."""
        return [torch.zeros(shape, dtype=dtype) for shape, dtype in zip(self.sent_shapes, self.sent_dtypes)]

    @torch.no_grad()
    def device_side(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """What the device computes and sends: the head's crossing tensors, through the bottleneck encoder."""
        tensors = list(self.split.head(*inputs))
        if self.bottleneck is not None:
            tensors = [self.bottleneck.encode(tensors[0], self.width or 1.0)]
        return tensors

    def encode(self, tensors: list[torch.Tensor]) -> bytes:
        """The crossing tensors as one payload (``pack`` of one codec frame each, or of one picture per row)."""
        if self.picture is not None:
            return self.picture.encode(tensors[0])
        return pack([codec.encode(t) for codec, t in zip(self.codecs, tensors)])

    def decode(self, payload: bytes, limits: DecodeLimits, max_batch: int) -> list[torch.Tensor]:
        """The tensors of a payload, checked against this route's shapes; raises WireError (400) if they differ.

        ``limits`` bounds the most the whole decode holds at once, checked from the headers before anything is
        allocated: floating-point tensors are decoded straight into the float32 the tail takes (no second copy).
        Integer tensors must arrive in the crossing tensor's own dtype, and token ids inside the vocabulary.
        """
        return self.decoding(payload, limits, max_batch)[1]()

    def decoding(self, payload: bytes, limits: DecodeLimits,
                 max_batch: int) -> tuple[int, Callable[[], list[torch.Tensor]]]:
        """``decode`` in two steps, the headers read once: roughly how much work the decode is (``decode_cost``'s
        figure; 0 for headers that do not parse or are over ``limits``, which the call refuses at once), and the
        call that decodes (raising what ``decode`` raises). A server reads the first to choose where to run the
        second."""
        if self.picture is not None:
            return self.decode_cost(payload), lambda: self._pictures(payload, limits, max_batch)
        try:
            unpacked = unpacking(payload, limits, max_frames=len(self.codecs), float_dtype=torch.float32)
        except CodecError as error:
            failure = WireError(f"payload for route {self.route_id} ({self.label}): {error}")
            failure.__cause__ = error

            def refuse() -> list[torch.Tensor]:
                raise failure

            return 0, refuse
        return _decode_work(unpacked.cost), lambda: self._checked(unpacked, max_batch)

    def _pictures(self, payload: bytes, limits: DecodeLimits, max_batch: int) -> list[torch.Tensor]:
        images = self.picture.decode(payload, self.sent_shapes[0], max_batch, limits)
        if not 1 <= len(images) <= max_batch:
            raise WireError(f"batch of {len(images)} is outside 1..{max_batch} for this server")
        return [images]

    def _checked(self, unpacked: Unpacking, max_batch: int) -> list[torch.Tensor]:
        """The tensors of a payload whose headers ``unpacking`` read, decoded and checked against this route."""
        try:
            tensors = unpacked.decode()
        except CodecError as error:
            raise WireError(f"payload for route {self.route_id} ({self.label}): {error}") from error
        expected = self.sent_shapes
        if len(tensors) != len(expected):
            raise WireError(f"route {self.route_id} ({self.label}) takes {len(expected)} tensor(s), got "
                            f"{len(tensors)}; encode every crossing tensor of this cut")
        batch = tensors[0].shape[0] if tensors[0].dim() else 0
        for tensor, shape in zip(tensors, expected):
            if tensor.dim() != len(shape) or tuple(tensor.shape[1:]) != shape[1:] or tensor.shape[0] != batch:
                raise WireError(f"route {self.route_id} ({self.label}) takes tensors of shape "
                                f"{['N', *shape[1:]]}, got {list(tensor.shape)}; run this route's head on the input")
        if not 1 <= batch <= max_batch:
            raise WireError(f"batch of {batch} is outside 1..{max_batch} for this server; send smaller batches")
        # The tail runs on what the head computes: float features as float32, integer ones in their own dtype.
        wanted = ["float32"] * len(tensors) if self.bottleneck is not None else \
            [spec.dtype for spec in self.split.cut.crossing]
        for tensor, name in zip(tensors, wanted):
            dtype = getattr(torch, name, None)
            floating = dtype.is_floating_point if isinstance(dtype, torch.dtype) else True
            if tensor.is_floating_point() != floating or (not floating and tensor.dtype != dtype):
                raise WireError(f"route {self.route_id} ({self.label}) takes {name} tensors, got "
                                f"{str(tensor.dtype).removeprefix('torch.')}; encode what this route's head computes")
        for tensor, vocab in zip(tensors, self.vocab):
            if vocab is not None and tensor.numel() and not (0 <= int(tensor.min()) and int(tensor.max()) < vocab):
                raise WireError(f"route {self.route_id} ({self.label}) takes token ids in 0..{vocab - 1} (the "
                                f"model's vocabulary), got ids from {int(tensor.min())} to {int(tensor.max())}; "
                                "send ids from the model's tokenizer")
        return tensors  # floating-point ones already float32

    def decode_cost(self, payload: bytes) -> int:
        """Roughly how much work ``decode(payload, ...)`` is, read from the payload's headers alone (microseconds:
        nothing is decoded), in bytes: what the decode holds at once, plus 16 for each value it computes (dequantizes
        or casts), 32 more for each value an ANS stage decodes, and 64 for each pixel of a picture: their measured
        cost against copying a byte. A payload whose headers do not parse costs 0: decode refuses it at once."""
        try:
            if self.picture is not None:
                shape = self.sent_shapes[0]
                return pack_count(payload) * (math.prod(shape[1:]) * 4 + 64 * math.prod(shape[2:]))
            cost = unpack_cost(payload, len(self.codecs), torch.float32, _UNBOUNDED)
        except CodecError:
            return 0
        return _decode_work(cost)

    @torch.no_grad()
    def server_side(self, tensors: list[torch.Tensor]) -> object:
        """The tail's output for the received tensors (through the bottleneck decoder when there is one)."""
        if self.bottleneck is not None:
            tensors = [self.bottleneck.decode(tensors[0], self.width or 1.0)]
        return self.tail(*tensors)

    def describe(self) -> dict:
        """What a client needs to check it runs the same route: shown by the server's /v1/models."""
        return {"route_id": self.route_id, "label": self.label, "kind": self.kind, "cut_index": self.split.cut.index,
                "position": self.split.cut.position, "head_nodes": list(self.split.cut.head or []) or None,
                "codecs": [self.picture.spec] if self.picture else [c.spec for c in self.codecs], "width": self.width,
                "sends": [list(s) for s in self.sent_shapes], "ranges_mbps": [list(r) for r in self.ranges]}


@dataclass
class Deployment:
    """A plan's model, its routes, and its switch table."""

    model_id: str
    plan: PlanReport
    model: nn.Module
    traced: TracedModel
    routes: list[Route]

    def route(self, route_id: int) -> Route:
        if not 0 <= route_id < len(self.routes):
            raise WireError(f"model {self.model_id} has routes 0..{len(self.routes) - 1}, not {route_id}; "
                            "GET /v1/models lists them", status=Status.NOT_FOUND)
        return self.routes[route_id]

    def label_at(self, mbps: float) -> str:
        """The switch table's best plan at ``mbps`` uplink (its first or last row outside the table)."""
        return row_label_at(self.plan.switch_table, mbps)

    def route_for_label(self, label: str) -> Route | None:
        """The route that runs the plan labelled ``label``; None for all-device (nothing to send)."""
        return next((r for r in self.routes if r.label == label), None)

    @property
    def vocab_size(self) -> int | None:
        """The size of the model's vocabulary when it takes token ids (``hf.HFModel``), else None."""
        return getattr(self.model, "vocab_size", None) if not self.input_dtype.is_floating_point else None

    @property
    def input_dtype(self) -> torch.dtype:
        """What the model takes: float32 images or features, int64 token ids."""
        return getattr(self.model, "input_dtype", torch.float32)

    def example(self, seed: int = 0) -> torch.Tensor:
        """A seeded input of the plan's shape and the model's dtype (uniform in [0, 1), or ids in the vocabulary)."""
        return example_input(self.model, self.plan.input_shape, seed=seed)

    def describe(self) -> dict:
        return {"model_id": self.model_id, "model": self.plan.model, "fingerprint": self.plan.fingerprint,
                "input_shape": self.plan.input_shape, "chosen": self.plan.chosen.label,
                "switch_table": [row.model_dump() for row in self.plan.switch_table],
                "routes": [r.describe() for r in self.routes]}


def load_deployment(plan: PlanReport, *, weights: str | Path | None = None, model_id: str | None = None,
                    plan_dir: Path | None = None, model: str | None = None) -> Deployment:
    """Rebuild ``plan``'s model (weights from ``weights`` or the plan) and one route per split in its switch table.

    The plan may name a zoo model; a ``module:factory`` is built only if ``model`` names that same factory (the
    caller's choice, `--model` on the command line: a plan never chooses code to run). Its arguments and input
    shape are checked before anything is allocated (``intake.build_model``)."""
    model, example = _rebuild(plan, weights, plan_dir, model)
    traced = trace(model, example)
    if traced.fingerprint != plan.fingerprint:
        raise DeploymentError(f"the model rebuilt from the plan (graph {traced.fingerprint}) is not the one that was "
                              f"planned (graph {plan.fingerprint}); plan again with this model and weights")
    reports = [load_compress(_resolve(p, plan_dir)) for p in plan.constraints.compress_files]
    entries = _entries(plan)
    if not entries:
        raise DeploymentError(f"the plan for {plan.model} runs the whole model on the device at every uplink in its "
                              f"switch table ({plan.switch_table[0].low_mbps:g}–{plan.switch_table[-1].high_mbps:g} "
                              "Mbit/s), so there is nothing to serve; plan for a slower device, a faster server or "
                              "other codecs until a plan sends something")
    routes = [_route(i, entry, ranges, traced, reports) for i, (entry, ranges) in enumerate(entries)]
    vocab = getattr(model, "vocab_size", None)
    if vocab is not None and not getattr(model, "input_dtype", torch.float32).is_floating_point:
        ids = _token_id_values(traced)
        for route in routes:
            if route.bottleneck is None and route.picture is None:
                route.vocab = tuple(vocab if spec.name in ids else None for spec in route.split.cut.crossing)
    return Deployment(model_id or model_id_for(plan.model), plan, model, traced, routes)


def _entries(plan: PlanReport) -> list[tuple[SwitchRange | PlanEntry, list[tuple[float, float]]]]:
    """Every plan the switch table (or the chosen plan) may run across the network, once each, with its ranges."""
    found: dict[str, tuple[SwitchRange | PlanEntry, list[tuple[float, float]]]] = {}
    for row in plan.switch_table:
        if row.kind != "all-device":
            found.setdefault(row.label, (row, []))[1].append((row.low_mbps, row.high_mbps))
    if plan.chosen.kind != "all-device":
        found.setdefault(plan.chosen.label, (plan.chosen, []))
    return list(found.values())


def _rebuild(plan: PlanReport, weights: str | Path | None, plan_dir: Path | None,
             trusted_factory: str | None = None) -> tuple[nn.Module, torch.Tensor]:
    ref = plan.model_ref or {}
    if not isinstance(ref.get("name"), str):
        raise DeploymentError("this plan does not say how to rebuild its model (no model_ref); plan again with "
                              "`edgesplit plan MODEL --weights W ...`")
    if not isinstance(ref.get("weights") or "", str):
        raise DeploymentError("this plan's model_ref names its weights with something other than a path; plan again")
    model = build_model(ModelRef(ref["name"], ref.get("kwargs") or {}), trusted_factory=trusted_factory,
                        input_shapes=[tuple(plan.input_shape)], source="the plan")
    source = weights or ref.get("weights")
    if source:
        path = _resolve(source, plan_dir)
        state_dict, _ = read_weights(path)
        load_weights(model, state_dict, str(path))
    example = example_input(model, plan.input_shape, seed=None)  # zeros, of the model's input dtype
    return model.eval(), example


# Ops that only change how a tensor's values are laid out: their output holds the same token ids as their input.
_LAYOUT_OPS = frozenset({"view", "reshape", "_unsafe_view", "unsqueeze", "squeeze", "flatten", "contiguous", "clone",
                         "expand", "alias", "detach"})


def _token_id_values(traced: TracedModel) -> set[str]:
    """The graph values that hold the model's token ids: integer inputs, and layout-only views of them."""
    ids: set[str] = set()
    for node in traced.graph_module.graph.nodes:
        meta = node.meta.get("tensor_meta")
        integer = meta is not None and hasattr(meta, "dtype") and not meta.dtype.is_floating_point \
            and meta.dtype != torch.bool
        if node.op == "placeholder":
            if integer:
                ids.add(node.name)
        elif integer and node.args and getattr(node.args[0], "name", None) in ids:
            name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
            if name.split(".")[0] in _LAYOUT_OPS:
                ids.add(node.name)
    return ids


def _resolve(path: str | Path, plan_dir: Path | None) -> Path:
    """``path`` as given, else relative to the plan's folder (plans move with their files)."""
    path = Path(path)
    if path.exists() or path.is_absolute() or plan_dir is None:
        return path
    beside = plan_dir / path
    return beside if beside.exists() else path


def _route(route_id: int, entry: SwitchRange | PlanEntry, ranges: list[tuple[float, float]], traced: TracedModel,
           reports: list[CompressReport]) -> Route:
    cut = traced.head_cut(entry.head_nodes) if entry.head_nodes else traced.cuts[_cut_index(entry, traced)]
    split = traced.split(cut)
    name = entry.codec or "fp32"
    if entry.kind == "all-server":
        found = re.fullmatch(r"all on server \((\w+).* input\)", entry.label)
        input_format = found.group(1) if found else None
        if input_format == "uint8":
            return Route(route_id, entry.label, entry.kind, split, [_UINT8], split.tail, ranges=ranges)
        if input_format in _PICTURES:
            return Route(route_id, entry.label, entry.kind, split, [], split.tail, ranges=ranges,
                         picture=_PICTURES[input_format])
    configuration, report = _reported(name, cut.position, reports)
    if configuration is None:
        try:
            codecs = [parse_codec(name)] * len(cut.crossing)
        except CodecError as error:
            raise DeploymentError(f"plan entry '{entry.label}' uses codec '{name}', which is neither a codec spec "
                                  f"nor a configuration in the plan's compress files ({error})") from error
        codecs = [_calibrated(c, split, traced) for c in codecs]
        return Route(route_id, entry.label, entry.kind, split, codecs, split.tail, ranges=ranges)
    codecs = [codec_from_json(c) for c in configuration.codecs]
    if configuration.kind != "bottleneck":
        return Route(route_id, entry.label, entry.kind, split, codecs * (len(cut.crossing) // max(len(codecs), 1)),
                     split.tail, ranges=ranges)
    bottleneck, tail = _bottleneck(report, split)
    return Route(route_id, entry.label, entry.kind, split, [code_codec(bottleneck.config)], tail, bottleneck,
                 configuration.width, ranges)


def _cut_index(entry: SwitchRange | PlanEntry, traced: TracedModel) -> int:
    if entry.cut_index is not None and 0 <= entry.cut_index < len(traced.cuts):
        return entry.cut_index
    position = 0 if entry.kind == "all-server" else entry.position
    for cut in traced.cuts:
        if cut.position == position:
            return cut.index
    raise DeploymentError(f"plan entry '{entry.label}' names no cut of this model; plan again")


def _reported(name: str, position: int, reports: list[CompressReport]):  # noqa: ANN202
    for report in reports:
        if report.cut_position != position:
            continue
        for configuration in report.configurations:
            if configuration.name == name and configuration.kind != "input":
                return configuration, report
    return None, None


def _calibrated(codec: Codec, split: Split, traced: TracedModel) -> Codec:
    """A codec that needs a calibrated model, calibrated on the head's features of the example input."""
    if not codec.needs_calibration:
        return codec
    with torch.no_grad():
        features = split.head(*traced.example_inputs)
    return codec.calibrate(features[0])


def _bottleneck(report: CompressReport, split: Split) -> tuple[SlimmableBottleneck, nn.Module]:
    summary = report.bottleneck
    if summary is None or not summary.checkpoint:
        raise DeploymentError(f"the compress result for cut {report.cut_index} has a bottleneck but no checkpoint "
                              "folder; run `edgesplit compress ... --bottleneck K --checkpoint DIR` again")
    config = bottleneck_config(split, summary.channels, summary.stride, summary.bits, tuple(summary.widths))
    bottleneck, tail = SlimmableBottleneck(config), copy.deepcopy(split.tail)
    load_checkpoint(Path(summary.checkpoint), bottleneck, tail)
    return bottleneck.eval(), tail.eval()
