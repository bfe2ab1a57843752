"""The self-describing frame one tensor travels in, and the decoder that reads it from untrusted bytes.

Layout (little-endian; ``varint`` is unsigned LEB128)::

    magic "ESC"  version u8 (= 1)
    dtype u8     ndim u8     stage count u8
    dims         ndim × varint
    stages       in the order they were applied, each: stage id u8, then its fields
        1 cast   target dtype u8
        2 quant  bits u8, axis u8 (255 = one range for the tensor), ranges varint, low f32 × ranges,
                 high f32 × ranges
        3 zstd   size before compression varint
        4 ans    model u8 (0 adaptive, 1 calibrated), first symbol varint, symbols varint, count u16 × symbols,
                 body length in 32-bit words varint (ANS data carry no length of their own)
    body         the rest: the output of the last stage

The decoder checks that the body holds exactly what the header says, and computes from the header everything the
decode will hold at once (``decode_cost``: the tensor, zstd output that does not fit inside it, the ANS coder's
copy of its data, quantization ranges beyond the first ``STEP``), refusing it before allocating when that is over
``DecodeLimits.max_decoded_bytes``; anything else raises ``PayloadError`` with what is wrong. Values are converted
a run at a time straight into the tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from edgesplit.codecs import entropy, quantize
from edgesplit.errors import EdgesplitError

__all__ = ["MAX_NDIM", "RANGE_BYTES", "AnsRecord", "CastRecord", "CodecError", "DecodeCost", "DecodeLimits", "Frame",
           "PayloadError", "QuantRecord", "StageRecord", "ZstdRecord", "decode", "decode_cost", "header", "pack",
           "pack_count", "range_bytes", "read", "unpack", "unpack_bytes", "unpack_cost", "write"]

MAGIC = b"ESC"
VERSION = 1
PER_TENSOR = 255
MAX_NDIM = 8

DTYPES: dict[int, torch.dtype] = {0: torch.float32, 1: torch.float16, 2: torch.bfloat16, 3: torch.float64,
                                  4: torch.uint8, 5: torch.int8, 6: torch.int16, 7: torch.int32, 8: torch.int64,
                                  9: torch.bool}
DTYPE_CODES = {dtype: code for code, dtype in DTYPES.items()}
STAGE_CAST, STAGE_QUANT, STAGE_ZSTD, STAGE_ANS = 1, 2, 3, 4
ANS_MODELS = ("adaptive", "calibrated")


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
    dtype: torch.dtype


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
    dtype: torch.dtype
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


def header(dtype: torch.dtype, shape: tuple[int, ...], stages: list[StageRecord]) -> bytes:
    parts = [MAGIC, bytes([VERSION, DTYPE_CODES[dtype], len(shape), len(stages)])]
    parts += [varint(d) for d in shape]
    for stage in stages:
        if isinstance(stage, CastRecord):
            parts.append(bytes([STAGE_CAST, DTYPE_CODES[stage.dtype]]))
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


def write(frame: Frame) -> bytes:
    return header(frame.dtype, frame.shape, frame.stages) + frame.body


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


def read(data: bytes, limits: DecodeLimits) -> Frame:
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
    dtype = _dtype(reader.u8("dtype"))
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
        raise PayloadError(f"frame declares a {list(shape)} {str(dtype).removeprefix('torch.')} tensor "
                           f"({numel * itemsize:,} bytes), over the decode limit of {limits.max_decoded_bytes:,}")
    stages = [_stage(reader, shape, numel * itemsize, limits) for _ in range(stage_count)]
    _check_order(stages, dtype)
    return Frame(dtype, shape, stages, reader.rest())


def _check_order(stages: list[StageRecord], dtype: torch.dtype) -> None:
    """Stages come as [cast | quant] then [zstd | ans], ans only after quant, lossy ones only on floats."""
    kinds = [type(s) for s in stages]
    valid = len(stages) <= 2 and all(
        (i == 0 and kind in (CastRecord, QuantRecord) and dtype.is_floating_point)
        or (kind is ZstdRecord and i == len(stages) - 1)
        or (kind is AnsRecord and i == 1 and kinds[0] is QuantRecord)
        for i, kind in enumerate(kinds))
    if not valid:
        names = "+".join(k.__name__.removesuffix("Record").lower() for k in kinds)
        raise PayloadError(f"payload corrupt: stages {names or 'none'} on a {str(dtype).removeprefix('torch.')} "
                           "tensor are not a valid pipeline")
    cast = stages[0] if stages and isinstance(stages[0], CastRecord) else None
    if cast is not None and not (cast.dtype.is_floating_point and _itemsize(cast.dtype) <= _itemsize(dtype)):
        raise PayloadError(f"payload corrupt: a {_name(dtype)} tensor sent as {_name(cast.dtype)} cannot have been "
                           "written (casts only narrow floating-point values)")


def _dtype(code: int) -> torch.dtype:
    if code not in DTYPES:
        raise PayloadError(f"payload corrupt: unknown dtype code {code}")
    return DTYPES[code]


def _stage(reader: _Reader, shape: tuple[int, ...], tensor_bytes: int, limits: DecodeLimits) -> StageRecord:
    kind = reader.u8("stage id")
    if kind == STAGE_CAST:
        return CastRecord(_dtype(reader.u8("cast dtype")))
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


def decode_cost(data: bytes, float_dtype: torch.dtype | None = None,
                limits: DecodeLimits = DecodeLimits()) -> DecodeCost:
    """What ``decode(data, limits, float_dtype)`` would hold and do, from the frame's header; the same
    ``PayloadError`` as decode for a header that is malformed, inconsistent with its body, or over ``limits``."""
    return _plan(read(data, limits), float_dtype, limits).cost


def decode(data: bytes, limits: DecodeLimits = DecodeLimits(),
           float_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The tensor a frame carries; raises ``PayloadError`` on anything malformed.

    Everything the decode holds at once (the tensor, decompressed bytes, the ANS coder's copy of its data) is
    computed from the header and checked against ``limits.max_decoded_bytes`` before any of it is allocated;
    quantized values and casts are converted a few thousand at a time straight into the tensor. A floating-point
    frame is decoded into ``float_dtype`` when given: the values ``decode(data).to(float_dtype)`` has, without
    the second tensor.
    """
    if float_dtype is not None and not (isinstance(float_dtype, torch.dtype) and float_dtype.is_floating_point):
        raise CodecError(f"float_dtype must be a floating-point torch dtype, not {float_dtype}")
    frame = read(data, limits)
    plan = _plan(frame, float_dtype, limits)
    try:
        return _decode(frame, plan)
    except ValueError as error:
        raise PayloadError(f"payload corrupt: {error}") from error


@dataclass
class _Plan:
    out_dtype: torch.dtype
    numel: int
    cost: DecodeCost
    transform: CastRecord | QuantRecord | None
    lossless: ZstdRecord | AnsRecord | None
    zstd_apart: bool  # the zstd output does not fit in the tensor's buffer behind the values it becomes


def _plan(frame: Frame, float_dtype: torch.dtype | None, limits: DecodeLimits) -> _Plan:
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
    return _Plan(out_dtype, numel, DecodeCost(peak, tensor_bytes, converted, symbols), transform, lossless, apart)


def _decode(frame: Frame, plan: _Plan) -> torch.Tensor:
    out = torch.empty(frame.shape, dtype=plan.out_dtype)
    flat = out.view(-1)
    buffer = flat.view(torch.uint8).numpy()  # the tensor's bytes
    transform, lossless = plan.transform, plan.lossless
    source = np.frombuffer(frame.body, dtype=np.uint8)
    if isinstance(lossless, ZstdRecord):
        size = lossless.raw_size
        target = np.empty(size, dtype=np.uint8) if plan.zstd_apart else buffer[len(buffer) - size:]
        entropy.zstd_decompress_into(frame.body, target)
        if transform is None and plan.out_dtype == frame.dtype:
            return out  # decompressed straight into the tensor
        source = target
    if isinstance(transform, QuantRecord):
        if isinstance(lossless, AnsRecord):
            runs = entropy.ans_symbols(frame.body, lossless.first, lossless.counts, plan.numel, STEP)
        else:
            runs = quantize.unpacked_symbols(source, transform.bits, plan.numel, STEP)
        values = quantize.Dequantizer(transform.low, transform.high, transform.bits, transform.axis, frame.shape)
        check = isinstance(lossless, AnsRecord) and transform.bits < 8  # unpacked symbols cannot exceed their bits
        start = 0
        for symbols in runs:
            if check and int(symbols.max(initial=0)) >> transform.bits:
                raise PayloadError(f"payload corrupt: symbols exceed {transform.bits} bits")
            _store(flat, start, values.values(start, symbols), frame.dtype)
            start += len(symbols)
        return out
    if isinstance(transform, CastRecord):
        _convert(flat, source, transform.dtype, frame.dtype)
    elif plan.out_dtype != frame.dtype:
        _convert(flat, source, frame.dtype, frame.dtype)
    else:
        buffer[:] = source
    return out


def _store(flat: torch.Tensor, start: int, values: np.ndarray, dtype: torch.dtype) -> None:
    """float64 ``values`` into ``flat[start:]`` as the old whole-tensor decode rounded them: to float32, then to the
    frame's ``dtype``, then to the tensor's."""
    end = start + len(values)
    if dtype == torch.float32 and flat.dtype == torch.float32:
        np.copyto(flat[start:end].numpy(), values, casting="same_kind")
        return
    run = torch.from_numpy(values.astype(np.float32))
    flat[start:end].copy_(run if dtype == torch.float32 else run.to(dtype))


def _convert(flat: torch.Tensor, source: np.ndarray, stored: torch.dtype, dtype: torch.dtype) -> None:
    """``source`` bytes holding values in ``stored`` dtype into ``flat``, through the frame's ``dtype``, a run at a
    time; each run is read before the tensor's bytes are written, so ``source`` may lie at the tensor's end."""
    size = _itemsize(stored)
    for start in range(0, flat.numel(), STEP):
        end = min(start + STEP, flat.numel())
        run = torch.empty(end - start, dtype=stored)
        run.view(torch.uint8).numpy()[:] = source[start * size:end * size]
        flat[start:end].copy_(run if stored == dtype else run.to(dtype))


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _itemsize(dtype: torch.dtype) -> int:
    return dtype.itemsize


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _expect_size(length: int, expected: int, what: str) -> None:
    if length != expected:
        raise PayloadError(f"payload {'truncated' if length < expected else 'corrupt'}: {what} need "
                           f"{expected:,} bytes, the body has {length:,}")


def pack(frames: list[bytes]) -> bytes:
    """Several frames (a crossing set of several tensors) as one payload: count, then each length and frame."""
    return varint(len(frames)) + b"".join(varint(len(f)) + f for f in frames)


def _bundled(data: bytes, max_frames: int, noun: str) -> list[memoryview]:
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
    return [bytes(frame) for frame in _bundled(data, max_frames, "frames")]


def unpack(data: bytes, limits: DecodeLimits = DecodeLimits(), max_frames: int = 64,
           float_dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """The tensors ``pack`` bundled, decoded under ``limits`` all together: each frame's decode gets what the
    tensors before it left, so the limit bounds the most the whole unpack holds at once. ``float_dtype`` as in
    ``decode``."""
    frames = _bundled(data, max_frames, "tensors")
    tensors: list[torch.Tensor] = []
    for frame in frames:
        left = limits.max_decoded_bytes - sum(t.numel() * t.element_size() for t in tensors)
        try:
            tensors.append(decode(frame, DecodeLimits(left, limits.max_ndim), float_dtype))
        except PayloadError as error:
            raise PayloadError(f"tensor {len(tensors) + 1} of {len(frames)}: {error}"
                               + (" (the limit left after the tensors before it)" if tensors else "")) from error
    return tensors


def unpack_cost(data: bytes, max_frames: int = 64, float_dtype: torch.dtype | None = None,
                limits: DecodeLimits = DecodeLimits()) -> DecodeCost:
    """What ``unpack(data, limits, max_frames, float_dtype)`` would hold and do, from the headers alone; the same
    ``PayloadError`` as unpack for headers that are malformed or over ``limits``."""
    held = peak = converted = symbols = 0
    for number, frame in enumerate(_bundled(data, max_frames, "tensors"), 1):
        try:
            cost = decode_cost(frame, float_dtype, DecodeLimits(limits.max_decoded_bytes - held, limits.max_ndim))
        except PayloadError as error:
            raise PayloadError(f"tensor {number}: {error}") from error
        peak, held = max(peak, held + cost.peak_bytes), held + cost.tensor_bytes
        converted, symbols = converted + cost.converted_values, symbols + cost.ans_symbols
    return DecodeCost(peak, held, converted, symbols)
