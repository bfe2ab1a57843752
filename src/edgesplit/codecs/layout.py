"""The frame layout without tensors: header fields, the safe reader, the size checks, and bundling.

Everything about a frame that is not a tensor library lives here, so that the PyTorch codecs (``frame``, ``spec``)
and the numpy ones the device client uses (``edgesplit.device.codecs``) read, check and write the same bytes: this
module imports neither torch nor anything that does. The layout is documented in ``edgesplit.codecs.frame``.

A frame's element type is one of ``DTYPE_NAMES`` (its code on the wire is the index); each side passes its own
table of those types (``DTypes``): anything with ``itemsize``, ``is_floating_point`` and a ``str`` naming it (a
``torch.dtype``, or a ``WireDType``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgesplit.codecs import entropy, quantize
from edgesplit.errors import EdgesplitError

__all__ = ["DTYPE_NAMES", "MAX_NDIM", "RANGE_BYTES", "STEP", "AnsRecord", "CastRecord", "CodecError", "DTypes",
           "DecodeCost", "DecodeLimits", "Frame", "PayloadError", "Plan", "QuantRecord", "StageRecord", "WireDType",
           "ZstdRecord", "bundled", "header", "pack", "pack_count", "plan", "range_bytes", "read", "unpack_bytes",
           "varint", "write"]

MAGIC = b"ESC"
VERSION = 1
PER_TENSOR = 255
MAX_NDIM = 8

DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64", "uint8", "int8", "int16", "int32", "int64", "bool")
STAGE_CAST, STAGE_QUANT, STAGE_ZSTD, STAGE_ANS = 1, 2, 3, 4
ANS_MODELS = ("adaptive", "calibrated")


@dataclass(frozen=True)
class WireDType:
    """A frame's element type without a tensor library: what the reader and the size checks need of it."""

    name: str
    itemsize: int
    is_floating_point: bool

    def __str__(self) -> str:
        return self.name


WIRE_DTYPES = tuple(WireDType(name, size, name.startswith(("float", "bfloat")))
                    for name, size in zip(DTYPE_NAMES, (4, 2, 2, 8, 1, 1, 2, 4, 8, 1), strict=True))


class DTypes:
    """The wire's dtype codes as one library's dtype objects, both ways."""

    def __init__(self, by_code: Mapping[int, Any]) -> None:
        self.by_code = dict(by_code)
        self.codes = {dtype: code for code, dtype in self.by_code.items()}


WIRE = DTypes(dict(enumerate(WIRE_DTYPES)))


class CodecError(EdgesplitError):
    """A codec spec that does not parse, or a tensor a codec cannot encode."""


class PayloadError(CodecError):
    """Bytes that are not a valid frame: truncated, corrupt, another version, or over the decode limits."""


@dataclass(frozen=True)
class DecodeLimits:
    """What a decoder accepts from untrusted bytes; larger declarations are refused before anything is allocated."""

    max_decoded_bytes: int = 256 * 2**20  # the most one decode (or unpack) holds at once: tensors and buffers
    max_ndim: int = MAX_NDIM


@dataclass
class CastRecord:
    dtype: Any  # the side's dtype object (``DTypes``)


@dataclass
class QuantRecord:
    bits: int
    axis: int | None
    low: np.ndarray
    high: np.ndarray


@dataclass
class ZstdRecord:
    raw_size: int


@dataclass
class AnsRecord:
    model: str
    first: int
    counts: np.ndarray
    words: int = 0  # the body's length in 32-bit words


StageRecord = CastRecord | QuantRecord | ZstdRecord | AnsRecord


@dataclass
class Frame:
    dtype: Any  # the side's dtype object (``DTypes``)
    shape: tuple[int, ...]
    stages: list[StageRecord] = field(default_factory=list)
    body: bytes | memoryview = b""  # read() gives a view of the caller's bytes, not a copy


# ---- writing ---------------------------------------------------------------------------------------------------

def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def header(dtype: Any, shape: tuple[int, ...], stages: list[StageRecord], dtypes: DTypes = WIRE) -> bytes:
    parts = [MAGIC, bytes([VERSION, dtypes.codes[dtype], len(shape), len(stages)])]
    parts += [varint(d) for d in shape]
    for stage in stages:
        if isinstance(stage, CastRecord):
            parts.append(bytes([STAGE_CAST, dtypes.codes[stage.dtype]]))
        elif isinstance(stage, QuantRecord):
            axis = PER_TENSOR if stage.axis is None else stage.axis
            parts += [bytes([STAGE_QUANT, stage.bits, axis]), varint(len(stage.low)),
                      stage.low.astype("<f4").tobytes(), stage.high.astype("<f4").tobytes()]
        elif isinstance(stage, ZstdRecord):
            parts += [bytes([STAGE_ZSTD]), varint(stage.raw_size)]
        else:
            parts += [bytes([STAGE_ANS, ANS_MODELS.index(stage.model)]), varint(stage.first),
                      varint(len(stage.counts)), stage.counts.astype("<u2").tobytes(), varint(stage.words)]
    return b"".join(parts)


def write(frame: Frame, dtypes: DTypes = WIRE) -> bytes:
    return header(frame.dtype, frame.shape, frame.stages, dtypes) + frame.body


# ---- reading ---------------------------------------------------------------------------------------------------

class _Reader:
    """Reads a frame from the caller's bytes without copying them (only header fields become new objects)."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B") if view.c_contiguous else memoryview(bytes(view))
        self.data, self.pos = view, 0

    def view(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise PayloadError(f"payload truncated: {what} needs {n} bytes at offset {self.pos}, "
                               f"{max(0, len(self.data) - self.pos)} left")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def take(self, n: int, what: str) -> bytes:
        return bytes(self.view(n, what))

    def u8(self, what: str) -> int:
        if self.pos >= len(self.data):
            raise PayloadError(f"payload truncated: {what} needs 1 bytes at offset {self.pos}, 0 left")
        self.pos += 1
        return self.data[self.pos - 1]

    def varint(self, what: str) -> int:
        value = shift = 0
        while True:
            byte = self.u8(what)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise PayloadError(f"payload corrupt: {what} is not a valid varint")

    def rest(self) -> memoryview:
        return self.data[self.pos:]


def read(data: bytes, limits: DecodeLimits, dtypes: DTypes = WIRE) -> Frame:
    """Parse and check a frame's header; the body is returned as it is."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PayloadError(f"a payload is bytes, not {type(data).__name__}")
    reader = _Reader(data)
    if reader.take(3, "magic") != MAGIC:
        raise PayloadError("not an edgesplit tensor frame (magic bytes differ); send what Codec.encode wrote")
    version = reader.u8("version")
    if version != VERSION:
        raise PayloadError(f"frame version {version}, this decoder reads version {VERSION}; "
                           "use the same edgesplit release on both ends")
    dtype = _dtype(reader.u8("dtype"), dtypes)
    ndim, stage_count = reader.u8("ndim"), reader.u8("stage count")
    if ndim > limits.max_ndim:
        raise PayloadError(f"frame declares {ndim} dimensions, the limit is {limits.max_ndim}")
    shape = tuple(reader.varint("dimension") for _ in range(ndim))
    numel, itemsize = math.prod(shape), dtype.itemsize
    spanned = math.prod(d or 1 for d in shape)
    if numel == 0 and spanned * max(itemsize, 4) > limits.max_decoded_bytes:  # torch overflows on such shapes
        raise PayloadError(f"frame declares an empty tensor of shape {list(shape)}, whose nonzero dimensions "
                           f"span {spanned:,} elements, over the decode limit of {limits.max_decoded_bytes:,} bytes")
    if numel * itemsize > limits.max_decoded_bytes:  # the tensor alone; decode() checks all it would hold
        raise PayloadError(f"frame declares a {list(shape)} {_name(dtype)} tensor "
                           f"({numel * itemsize:,} bytes), over the decode limit of {limits.max_decoded_bytes:,}")
    stages = [_stage(reader, shape, numel * itemsize, limits, dtypes) for _ in range(stage_count)]
    _check_order(stages, dtype)
    return Frame(dtype, shape, stages, reader.rest())


def _check_order(stages: list[StageRecord], dtype: Any) -> None:
    """Stages come as [cast | quant] then [zstd | ans], ans only after quant, lossy ones only on floats."""
    kinds = [type(s) for s in stages]
    valid = len(stages) <= 2 and all(
        (i == 0 and kind in (CastRecord, QuantRecord) and dtype.is_floating_point)
        or (kind is ZstdRecord and i == len(stages) - 1)
        or (kind is AnsRecord and i == 1 and kinds[0] is QuantRecord)
        for i, kind in enumerate(kinds))
    if not valid:
        names = "+".join(k.__name__.removesuffix("Record").lower() for k in kinds)
        raise PayloadError(f"payload corrupt: stages {names or 'none'} on a {_name(dtype)} "
                           "tensor are not a valid pipeline")
    cast = stages[0] if stages and isinstance(stages[0], CastRecord) else None
    if cast is not None and not (cast.dtype.is_floating_point and _itemsize(cast.dtype) <= _itemsize(dtype)):
        raise PayloadError(f"payload corrupt: a {_name(dtype)} tensor sent as {_name(cast.dtype)} cannot have been "
                           "written (casts only narrow floating-point values)")


def _dtype(code: int, dtypes: DTypes) -> Any:
    if code not in dtypes.by_code:
        raise PayloadError(f"payload corrupt: unknown dtype code {code}")
    return dtypes.by_code[code]


def _stage(reader: _Reader, shape: tuple[int, ...], tensor_bytes: int, limits: DecodeLimits,
           dtypes: DTypes) -> StageRecord:
    kind = reader.u8("stage id")
    if kind == STAGE_CAST:
        return CastRecord(_dtype(reader.u8("cast dtype"), dtypes))
    if kind == STAGE_QUANT:
        bits, axis = reader.u8("bits"), reader.u8("axis")
        if not 1 <= bits <= 8:
            raise PayloadError(f"payload corrupt: {bits}-bit quantization (1–8 bits exist)")
        ranges = reader.varint("range count")
        expected = 1 if axis == PER_TENSOR else (shape[axis] if axis < len(shape) else -1)
        if ranges != expected:
            raise PayloadError(f"payload corrupt: {ranges} quantization ranges for axis {axis} of {list(shape)}")
        held = tensor_bytes + range_bytes(ranges)  # at the least: the tensor and the ranges, refused before reading
        if range_bytes(ranges) and held > limits.max_decoded_bytes:
            raise PayloadError(f"frame declares {ranges:,} quantization ranges for a {list(shape)} tensor, whose "
                               f"decoding holds {held:,} bytes at once, over the decode limit of "
                               f"{limits.max_decoded_bytes:,}")
        low = np.frombuffer(reader.view(4 * ranges, "range lows"), dtype="<f4").astype(np.float32)
        high = np.frombuffer(reader.view(4 * ranges, "range highs"), dtype="<f4").astype(np.float32)
        if not (np.isfinite(low).all() and np.isfinite(high).all() and (high >= low).all()):
            raise PayloadError("payload corrupt: quantization ranges are not finite and ordered")
        return QuantRecord(bits, None if axis == PER_TENSOR else axis, low, high)
    if kind == STAGE_ZSTD:
        raw_size = reader.varint("zstd size")
        if raw_size > limits.max_decoded_bytes:
            raise PayloadError(f"zstd stage declares {raw_size:,} bytes, over the decode limit of "
                               f"{limits.max_decoded_bytes:,}")
        return ZstdRecord(raw_size)
    if kind == STAGE_ANS:
        model = reader.u8("ans model")
        if model >= len(ANS_MODELS):
            raise PayloadError(f"payload corrupt: unknown ANS model {model}")
        first, symbols = reader.varint("first symbol"), reader.varint("alphabet")
        if symbols == 0 or first + symbols > 256:
            raise PayloadError(f"payload corrupt: ANS alphabet [{first}, {first + symbols}) is not within 0–255")
        counts = np.frombuffer(reader.take(2 * symbols, "symbol counts"), dtype="<u2").astype(np.uint16)
        if not counts.any():
            raise PayloadError("payload corrupt: ANS model has no nonzero count")
        return AnsRecord(ANS_MODELS[model], first, counts, reader.varint("ANS words"))
    raise PayloadError(f"payload corrupt: unknown stage id {kind}")


STEP = 1 << 13  # values converted at a time: all a decode holds besides its accounted buffers is this small
RANGE_BYTES = 32  # what a decode holds per quantization range: low and high as float32, low and step as float64


def range_bytes(ranges: int) -> int:
    """What a decode holds for ``ranges`` quantization ranges beyond the fixed slack: the first ``STEP`` are as
    small as a run's buffers; more (one a channel along the last axis of a long [B, N, D], say) are counted."""
    return RANGE_BYTES * max(0, ranges - STEP)


@dataclass(frozen=True)
class DecodeCost:
    """What decoding takes, read from the headers alone (nothing is decompressed or decoded)."""

    peak_bytes: int  # the most the decoder holds at once: the tensor(s) and every buffer that grows with them
    tensor_bytes: int  # the decoded tensor(s)
    converted_values: int = 0  # values computed one by one (dequantized or cast), not copied as bytes
    ans_symbols: int = 0  # symbols the ANS stage decodes, the slowest per-value step


@dataclass
class Plan:
    """What a decode of one frame will make and hold: read from its header, checked against its body."""

    out_dtype: Any
    numel: int
    cost: DecodeCost
    transform: CastRecord | QuantRecord | None
    lossless: ZstdRecord | AnsRecord | None
    zstd_apart: bool  # the zstd output does not fit in the tensor's buffer behind the values it becomes


def plan(frame: Frame, float_dtype: Any, limits: DecodeLimits) -> Plan:
    """Every size the decode will meet, checked against the header and the body, and what it will hold at once."""
    numel = _numel(frame.shape)
    out_dtype = float_dtype if float_dtype is not None and frame.dtype.is_floating_point else frame.dtype
    tensor_bytes = numel * _itemsize(out_dtype)
    transform = next((s for s in frame.stages if isinstance(s, (CastRecord, QuantRecord))), None)
    lossless = next((s for s in frame.stages if isinstance(s, (ZstdRecord, AnsRecord))), None)
    extra, symbols, apart, held = 0, 0, False, ""
    ranges = range_bytes(len(transform.low)) if isinstance(transform, QuantRecord) else 0
    if isinstance(lossless, AnsRecord):
        _expect_size(len(frame.body), 4 * lossless.words, f"{lossless.words:,} ANS words")
        extra, symbols, held = 4 * lossless.words, numel, "the ANS coder's copy of its data"
    else:
        if isinstance(transform, QuantRecord):
            expected, what = quantize.packed_size(numel, transform.bits), f"{transform.bits}-bit symbols"
        else:
            dtype = transform.dtype if isinstance(transform, CastRecord) else frame.dtype
            expected, what = numel * _itemsize(dtype), f"{numel:,} {_name(dtype)} values"
        if isinstance(lossless, ZstdRecord):
            try:
                declared = entropy.zstd_content_size(frame.body)
            except ValueError as error:
                raise PayloadError(f"payload corrupt: {error}") from error
            if declared == -1:
                raise PayloadError(f"payload corrupt: zstd data do not declare the size they decompress to "
                                   f"(the frame says {lossless.raw_size:,} bytes); send what Codec.encode wrote")
            if declared != lossless.raw_size:
                raise PayloadError(f"payload corrupt: zstd data decompress to {declared:,} bytes, the header "
                                   f"declares {lossless.raw_size:,}")
            _expect_size(lossless.raw_size, expected, what)
            # Decompressed behind the values they become, in the tensor's own buffer, when they fit there.
            apart = (transform is not None or out_dtype != frame.dtype) and expected > tensor_bytes
            extra, held = (expected, "the decompressed bytes") if apart else (0, "")
        else:
            _expect_size(len(frame.body), expected, what)
    if ranges:
        extra, held = extra + ranges, f"{held} and the quantization ranges".removeprefix(" and ")
    peak = tensor_bytes + extra
    if peak > limits.max_decoded_bytes:
        holds = f"{peak:,} bytes at once ({tensor_bytes:,} for the tensor, {extra:,} for {held})" if extra else \
            f"{peak:,} bytes"
        raise PayloadError(f"frame declares a {list(frame.shape)} {_name(out_dtype)} tensor whose decoding holds "
                           f"{holds}, over the decode limit of {limits.max_decoded_bytes:,}")
    converted = numel if transform is not None or out_dtype != frame.dtype else 0
    return Plan(out_dtype, numel, DecodeCost(peak, tensor_bytes, converted, symbols), transform, lossless, apart)


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _itemsize(dtype: Any) -> int:
    return dtype.itemsize


def _name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _expect_size(length: int, expected: int, what: str) -> None:
    if length != expected:
        raise PayloadError(f"payload {'truncated' if length < expected else 'corrupt'}: {what} need "
                           f"{expected:,} bytes, the body has {length:,}")


def pack(frames: list[bytes]) -> bytes:
    """Several frames (a crossing set of several tensors) as one payload: count, then each length and frame."""
    return varint(len(frames)) + b"".join(varint(len(f)) + f for f in frames)


def bundled(data: bytes, max_frames: int, noun: str) -> list[memoryview]:
    """Views of the frames ``pack`` bundled (no copies), the count and the lengths checked."""
    reader = _Reader(data)
    count = reader.varint("frame count")
    if count > max_frames:
        raise PayloadError(f"payload declares {count} {noun}, the limit is {max_frames}")
    frames = [reader.view(reader.varint("frame length"), "frame") for _ in range(count)]
    if reader.pos != len(reader.data):
        raise PayloadError(f"payload corrupt: {len(reader.data) - reader.pos} bytes after the last frame")
    return frames


def pack_count(data: bytes) -> int:
    """How many frames a ``pack`` payload says it holds (its first field), without reading them."""
    return _Reader(data).varint("frame count")


def unpack_bytes(data: bytes, max_frames: int = 64) -> list[bytes]:
    """The byte strings ``pack`` bundled, without decoding them (for payloads that are not codec frames)."""
    return [bytes(frame) for frame in bundled(data, max_frames, "frames")]
