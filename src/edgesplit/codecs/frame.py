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

The header, its checks and the bundling of frames are in ``layout`` (no torch there: the device client's numpy
decoder shares them); this module reads frames into torch tensors.
"""

from __future__ import annotations

import numpy as np
import torch

from edgesplit.codecs import entropy, layout, quantize
from edgesplit.codecs.layout import (MAX_NDIM, RANGE_BYTES, STEP, AnsRecord, CastRecord, CodecError, DecodeCost,
                                     DecodeLimits, Frame, PayloadError, QuantRecord, StageRecord, ZstdRecord,
                                     pack, pack_count, range_bytes, unpack_bytes)

__all__ = ["MAX_NDIM", "RANGE_BYTES", "AnsRecord", "CastRecord", "CodecError", "DecodeCost", "DecodeLimits", "Frame",
           "PayloadError", "QuantRecord", "StageRecord", "Unpacking", "ZstdRecord", "decode", "decode_cost", "header",
           "pack", "pack_count", "range_bytes", "read", "unpack", "unpack_bytes", "unpack_cost", "unpacking", "write"]

DTYPES: dict[int, torch.dtype] = {code: getattr(torch, name) for code, name in enumerate(layout.DTYPE_NAMES)}
DTYPE_CODES = {dtype: code for code, dtype in DTYPES.items()}
_TORCH = layout.DTypes(DTYPES)


def header(dtype: torch.dtype, shape: tuple[int, ...], stages: list[StageRecord]) -> bytes:
    return layout.header(dtype, shape, stages, _TORCH)


def write(frame: Frame) -> bytes:
    return layout.write(frame, _TORCH)


def read(data: bytes, limits: DecodeLimits) -> Frame:
    """Parse and check a frame's header; the body is returned as it is (dtypes as torch dtypes)."""
    return layout.read(data, limits, _TORCH)


def decode_cost(data: bytes, float_dtype: torch.dtype | None = None,
                limits: DecodeLimits = DecodeLimits()) -> DecodeCost:
    """What ``decode(data, limits, float_dtype)`` would hold and do, from the frame's header; the same
    ``PayloadError`` as decode for a header that is malformed, inconsistent with its body, or over ``limits``."""
    return layout.plan(read(data, limits), float_dtype, limits).cost


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
    plan = layout.plan(frame, float_dtype, limits)
    try:
        return _decode(frame, plan)
    except ValueError as error:
        raise PayloadError(f"payload corrupt: {error}") from error


def _decode(frame: Frame, plan: layout.Plan) -> torch.Tensor:
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


def _itemsize(dtype: torch.dtype) -> int:
    return dtype.itemsize


def unpack(data: bytes, limits: DecodeLimits = DecodeLimits(), max_frames: int = 64,
           float_dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """The tensors ``pack`` bundled, decoded under ``limits`` all together: each frame's decode gets what the
    tensors before it left, so the limit bounds the most the whole unpack holds at once. ``float_dtype`` as in
    ``decode``."""
    return unpacking(data, limits, max_frames, float_dtype).decode()


class Unpacking:
    """A payload whose headers have been read and checked (once): what decoding it holds and does (``cost``, as
    ``unpack_cost`` counts it) and ``decode()``, the tensors ``unpack`` gives. A server reads the cost to choose
    where to decode (the event loop or a thread), then decodes without parsing the headers again."""

    __slots__ = ("cost", "_frames")

    def __init__(self, frames: list[tuple[Frame, layout.Plan]], cost: DecodeCost) -> None:
        self._frames, self.cost = frames, cost

    def decode(self) -> list[torch.Tensor]:
        tensors = []
        for frame, plan in self._frames:
            try:
                tensors.append(_decode(frame, plan))
            except ValueError as error:
                raise PayloadError(f"tensor {len(tensors) + 1} of {len(self._frames)}: payload corrupt: {error}"
                                   + (" (the limit left after the tensors before it)" if tensors else "")) from error
        return tensors


def unpacking(data: bytes, limits: DecodeLimits = DecodeLimits(), max_frames: int = 64,
              float_dtype: torch.dtype | None = None) -> Unpacking:
    """``unpack``'s first half: every frame's header read and checked under ``limits`` as ``unpack`` does (the
    same ``PayloadError``s), nothing decoded yet."""
    if float_dtype is not None and not (isinstance(float_dtype, torch.dtype) and float_dtype.is_floating_point):
        raise CodecError(f"float_dtype must be a floating-point torch dtype, not {float_dtype}")
    frames = layout.bundled(data, max_frames, "tensors")
    planned: list[tuple[Frame, layout.Plan]] = []
    held = peak = converted = symbols = 0
    for data_ in frames:
        try:
            left = DecodeLimits(limits.max_decoded_bytes - held, limits.max_ndim)
            frame = read(data_, left)
            plan = layout.plan(frame, float_dtype, left)
        except PayloadError as error:
            raise PayloadError(f"tensor {len(planned) + 1} of {len(frames)}: {error}"
                               + (" (the limit left after the tensors before it)" if planned else "")) from error
        planned.append((frame, plan))
        cost = plan.cost
        peak, held = max(peak, held + cost.peak_bytes), held + cost.tensor_bytes
        converted, symbols = converted + cost.converted_values, symbols + cost.ans_symbols
    return Unpacking(planned, DecodeCost(peak, held, converted, symbols))


def unpack_cost(data: bytes, max_frames: int = 64, float_dtype: torch.dtype | None = None,
                limits: DecodeLimits = DecodeLimits()) -> DecodeCost:
    """What ``unpack(data, limits, max_frames, float_dtype)`` would hold and do, from the headers alone; the same
    ``PayloadError`` as unpack for headers that are malformed or over ``limits``."""
    held = peak = converted = symbols = 0
    for number, frame in enumerate(layout.bundled(data, max_frames, "tensors"), 1):
        try:
            cost = decode_cost(frame, float_dtype, DecodeLimits(limits.max_decoded_bytes - held, limits.max_ndim))
        except PayloadError as error:
            raise PayloadError(f"tensor {number}: {error}") from error
        peak, held = max(peak, held + cost.peak_bytes), held + cost.tensor_bytes
        converted, symbols = converted + cost.converted_values, symbols + cost.ans_symbols
    return DecodeCost(peak, held, converted, symbols)
