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

The decoder checks every declared size against ``DecodeLimits`` before allocating, and that the body holds
exactly what the header says; anything else raises ``PayloadError`` with what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..errors import EdgesplitError
from . import entropy, quantize

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

    max_decoded_bytes: int = 256 * 2**20  # the tensor, and any intermediate buffer
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
    body: bytes = b""


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
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = memoryview(data), 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise PayloadError(f"payload truncated: {what} needs {n} bytes at offset {self.pos}, "
                               f"{max(0, len(self.data) - self.pos)} left")
        chunk = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

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

    def rest(self) -> bytes:
        return bytes(self.data[self.pos:])


def read(data: bytes, limits: DecodeLimits) -> Frame:
    """Parse and check a frame's header; the body is returned as it is."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PayloadError(f"a payload is bytes, not {type(data).__name__}")
    reader = _Reader(bytes(data))
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
    numel = int(np.prod(shape, dtype=object)) if shape else 1
    itemsize = torch.empty((), dtype=dtype).element_size()
    spanned = int(np.prod([d or 1 for d in shape], dtype=object)) if shape else 1
    if numel == 0 and spanned * max(itemsize, 4) > limits.max_decoded_bytes:  # torch overflows on such shapes
        raise PayloadError(f"frame declares an empty tensor of shape {list(shape)}, whose nonzero dimensions "
                           f"span {spanned:,} elements, over the decode limit of {limits.max_decoded_bytes:,} bytes")
    if numel * max(itemsize, 4) > limits.max_decoded_bytes:
        raise PayloadError(f"frame declares a {list(shape)} {str(dtype).removeprefix('torch.')} tensor "
                           f"({numel * itemsize:,} bytes), over the decode limit of {limits.max_decoded_bytes:,}")
    stages = [_stage(reader, shape, numel, limits) for _ in range(stage_count)]
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


def _dtype(code: int) -> torch.dtype:
    if code not in DTYPES:
        raise PayloadError(f"payload corrupt: unknown dtype code {code}")
    return DTYPES[code]


def _stage(reader: _Reader, shape: tuple[int, ...], numel: int, limits: DecodeLimits) -> StageRecord:
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
        low = np.frombuffer(reader.take(4 * ranges, "range lows"), dtype="<f4").astype(np.float32)
        high = np.frombuffer(reader.take(4 * ranges, "range highs"), dtype="<f4").astype(np.float32)
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


def decode(data: bytes, limits: DecodeLimits = DecodeLimits()) -> torch.Tensor:
    """The tensor a frame carries; raises ``PayloadError`` on anything malformed, never allocating past ``limits``."""
    frame = read(data, limits)
    numel = int(np.prod(frame.shape, dtype=object)) if frame.shape else 1
    body: bytes | np.ndarray = frame.body
    symbols: np.ndarray | None = None
    try:
        for stage in reversed(frame.stages):
            if isinstance(stage, ZstdRecord):
                body = entropy.zstd_decompress(body, stage.raw_size)  # type: ignore[arg-type]
            elif isinstance(stage, AnsRecord):
                _expect_size(body, 4 * stage.words, f"{stage.words:,} ANS words")  # type: ignore[arg-type]
                symbols = entropy.ans_decode(body, stage.first, stage.counts, numel)  # type: ignore[arg-type]
            elif isinstance(stage, QuantRecord):
                if symbols is None:
                    expected = quantize.packed_size(numel, stage.bits)
                    _expect_size(body, expected, f"{stage.bits}-bit symbols")
                    symbols = quantize.unpack_bits(body, stage.bits, numel)  # type: ignore[arg-type]
                if (symbols >= (1 << stage.bits)).any():
                    raise PayloadError(f"payload corrupt: symbols exceed {stage.bits} bits")
                values = quantize.dequantize(symbols, stage.low, stage.high, stage.bits, stage.axis, frame.shape)
                return torch.from_numpy(values).to(frame.dtype)
            else:  # cast: the body holds the tensor in the cast dtype
                return _tensor(body, stage.dtype, frame.shape, numel).to(frame.dtype)  # type: ignore[arg-type]
    except ValueError as error:
        raise PayloadError(f"payload corrupt: {error}") from None
    if symbols is not None:
        raise PayloadError("payload corrupt: entropy-coded symbols without a quantization stage")
    return _tensor(body, frame.dtype, frame.shape, numel)  # type: ignore[arg-type]


def _expect_size(body: bytes, expected: int, what: str) -> None:
    if len(body) != expected:
        raise PayloadError(f"payload {'truncated' if len(body) < expected else 'corrupt'}: {what} need "
                           f"{expected:,} bytes, the body has {len(body):,}")


def _tensor(body: bytes, dtype: torch.dtype, shape: tuple[int, ...], numel: int) -> torch.Tensor:
    itemsize = torch.empty((), dtype=dtype).element_size()
    _expect_size(body, numel * itemsize, f"{numel:,} {str(dtype).removeprefix('torch.')} values")
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(body), dtype=dtype).reshape(shape)


def pack(frames: list[bytes]) -> bytes:
    """Several frames (a crossing set of several tensors) as one payload: count, then each length and frame."""
    return varint(len(frames)) + b"".join(varint(len(f)) + f for f in frames)


def unpack_bytes(data: bytes, max_frames: int = 64) -> list[bytes]:
    """The byte strings ``pack`` bundled, without decoding them (for payloads that are not codec frames)."""
    reader = _Reader(bytes(data))
    count = reader.varint("frame count")
    if count > max_frames:
        raise PayloadError(f"payload declares {count} frames, the limit is {max_frames}")
    frames = [reader.take(reader.varint("frame length"), "frame") for _ in range(count)]
    if reader.pos != len(reader.data):
        raise PayloadError(f"payload corrupt: {len(reader.data) - reader.pos} bytes after the last frame")
    return frames


def unpack(data: bytes, limits: DecodeLimits = DecodeLimits(), max_frames: int = 64) -> list[torch.Tensor]:
    """The tensors ``pack`` bundled, decoded under ``limits`` all together (each frame gets what the others left)."""
    reader = _Reader(bytes(data))
    count = reader.varint("frame count")
    if count > max_frames:
        raise PayloadError(f"payload declares {count} tensors, the limit is {max_frames}")
    tensors: list[torch.Tensor] = []
    for _ in range(count):
        left = limits.max_decoded_bytes - sum(t.numel() * max(t.element_size(), 4) for t in tensors)
        frame = reader.take(reader.varint("frame length"), "frame")
        try:
            tensors.append(decode(frame, replace(limits, max_decoded_bytes=left)))
        except PayloadError as error:
            raise PayloadError(f"tensor {len(tensors) + 1} of {count}: {error}"
                               + (" (the limit left after the tensors before it)" if tensors else "")) from None
    if reader.pos != len(reader.data):
        raise PayloadError(f"payload corrupt: {len(reader.data) - reader.pos} bytes after the last frame")
    return tensors
