"""The codecs in numpy: the frames ``edgesplit.codecs`` writes, written and read without torch.

``parse_codec(spec)`` (or ``codec_from_json(record)`` for a calibrated codec from a manifest) gives a
``NumpyCodec``, whose ``encode(array)`` writes the same bytes as the torch codec's ``encode`` of the same values;
``decode(frame)`` reads any frame, whoever wrote it, into a numpy array. The grammar, the frame header, its checks
and the size limits are the torch codecs' own (``edgesplit.codecs.grammar``, ``layout``, ``quantize``,
``entropy``, none of which imports torch): only what turns values into bytes and back is here.

What "the same" means, value by value:

* encode: the same bytes for every input the torch encoder takes as the same numpy values (float32, float16,
  float64, the integer types and bool), NaN included: a cast to fp16 keeps a NaN's sign and top payload bits and
  sets its quiet bit, a cast of float32 to bf16 writes every NaN as 0xFFFF, as PyTorch 2.x's CPU casts do. One
  exception: a float64 NaN cast to bf16, which PyTorch writes as 0x7FC0 or 0xFFFF depending on where it falls in
  its vector loop (this encoder: 0x7FC0); the frame decodes to NaN there either way.
* decode: the same values, bit for bit, as the torch decoder's (then ``.numpy()``), except the payload of a NaN
  read from a float16 value (a frame sent as fp16): PyTorch's own conversion gives a quieted payload or
  0x7FFFFFFF depending on where the value falls in its vector loop, this decoder the quieted payload; it is NaN
  in both. numpy has no bfloat16: a frame of bfloat16 values is read as float32 (exactly) unless ``float_dtype``
  says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from edgesplit.codecs import entropy, layout, quantize
from edgesplit.codecs.grammar import (FP16_MAX, SPEC_HELP, Ans, Cast, CodecSpec, Quantize, Zstd, parse_spec,
                                      spec_from_json)
from edgesplit.codecs.layout import (MAX_NDIM, STEP, AnsRecord, CastRecord, CodecError, DecodeCost, DecodeLimits,
                                     Frame, PayloadError, QuantRecord, StageRecord, WireDType, ZstdRecord, pack)

__all__ = ["SPEC_HELP", "CodecError", "DecodeCost", "DecodeLimits", "NumpyCodec", "PayloadError", "codec_from_json",
           "decode", "decode_cost", "pack", "parse_codec", "quantized_frame", "unpack", "unpack_cost"]

WIRE = {dtype.name: dtype for dtype in layout.WIRE_DTYPES}
# numpy's type for each frame dtype; bfloat16 has none (its values are held as float32, which holds them exactly)
NUMPY = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "float64": np.dtype(np.float64),
         "uint8": np.dtype(np.uint8), "int8": np.dtype(np.int8), "int16": np.dtype(np.int16),
         "int32": np.dtype(np.int32), "int64": np.dtype(np.int64), "bool": np.dtype(np.bool_)}
_FRAME_DTYPE = {numpy: WIRE[name] for name, numpy in NUMPY.items()}


@dataclass(frozen=True)
class NumpyCodec(CodecSpec):
    """A codec (the same spec, stages and calibration as ``edgesplit.codecs.Codec``) that encodes numpy arrays."""

    def encode(self, array: np.ndarray) -> bytes:
        """One array as a frame: the bytes ``Codec.encode`` writes for a tensor holding the same values."""
        if not isinstance(array, np.ndarray):
            raise CodecError(f"a numpy codec encodes a numpy array, not {type(array).__name__}")
        native = array.dtype.newbyteorder("=")
        if native not in _FRAME_DTYPE:
            raise CodecError(f"cannot encode a {array.dtype} array; cast it to float32 first")
        if array.ndim > MAX_NDIM:
            raise CodecError(f"cannot encode a {array.ndim}-dimensional tensor: frames hold up to {MAX_NDIM} "
                             "dimensions; reshape it first")
        array = array.astype(native, order="C", copy=False)
        dtype = _FRAME_DTYPE[native]
        stages: list[StageRecord] = []
        symbols: np.ndarray | None = None
        quant: QuantRecord | None = None
        if isinstance(self.transform, Cast) and dtype.is_floating_point:
            body = _cast(array.reshape(-1), self.transform)
            stages.append(CastRecord(WIRE[self.transform.dtype_name]))
        elif isinstance(self.transform, Quantize) and dtype.is_floating_point:
            quant, symbols = _quantize(array, self.transform)
            stages.append(quant)
            body = quantize.pack_bits(symbols, quant.bits)
        else:
            body = _little_endian(array).tobytes()
        if isinstance(self.lossless, Zstd):
            stages.append(ZstdRecord(len(body)))
            body = entropy.zstd_compress(body, self.lossless.level)
        elif isinstance(self.lossless, Ans) and symbols is not None and quant is not None:
            if self.needs_calibration:
                raise CodecError(f"codec {self.spec} needs calibration first: call calibrate(sample features) "
                                 "or use ans:adaptive")
            if self.lossless.counts is not None:
                first, counts = 0, np.array(self.lossless.counts, dtype=np.uint16)
            else:
                first, counts = entropy.compact_counts(entropy.histogram(symbols, 1 << quant.bits), keep_all=False)
            body = entropy.ans_encode(symbols, first, counts)
            stages.append(AnsRecord(self.lossless.model, first, counts, len(body) // 4))
        return layout.write(Frame(dtype, tuple(array.shape), stages, body))

    def calibrate(self, features: np.ndarray) -> NumpyCodec:
        """This codec with its clipping ranges (and a calibrated ANS model) fitted to sample ``features``, as
        ``Codec.calibrate`` fits them."""
        transform, lossless = self.transform, self.lossless
        if not isinstance(transform, Quantize) or not np.issubdtype(features.dtype, np.floating):
            return self
        values = _finite_values(np.asarray(features, dtype=np.float32), self.spec)
        axis = transform.axis_for(values.ndim, self.spec)
        low, high = quantize.clip_ranges(values, axis, transform.percentile)
        transform = replace(transform, axis=axis, low=tuple(map(float, low)), high=tuple(map(float, high)))
        if isinstance(lossless, Ans) and lossless.model == "calibrated":
            symbols = quantize.quantize(values, low, high, transform.bits, axis)
            _, counts = entropy.compact_counts(entropy.histogram(symbols, 1 << transform.bits), keep_all=True)
            lossless = replace(lossless, counts=tuple(int(c) for c in counts))
        return replace(self, transform=transform, lossless=lossless)


def parse_codec(spec: str) -> NumpyCodec:
    """The codec a spec string names (the grammar of ``edgesplit.codecs.parse_codec``)."""
    return parse_spec(spec, NumpyCodec)


def codec_from_json(data: dict) -> NumpyCodec:
    """A codec a ``Codec.to_json`` record describes, calibration included (a manifest's codec records)."""
    return spec_from_json(data, NumpyCodec)


# ---- encoding ----------------------------------------------------------------------------------------------------

def _little_endian(array: np.ndarray) -> np.ndarray:
    return array.astype(array.dtype.newbyteorder("<"), copy=False)


def _float16_bits(values: np.ndarray) -> np.ndarray:
    """Float ``values`` rounded to float16 (to nearest, ties to even), as uint16 bits; a NaN keeps its sign and its
    payload's top bits and becomes quiet (what PyTorch's CPU cast writes; numpy keeps a signalling NaN signalling)."""
    if values.dtype == np.float16:
        return values.view(np.uint16).copy()
    with np.errstate(over="ignore", invalid="ignore"):
        bits = values.astype(np.float16).view(np.uint16)
        nan = np.isnan(values)
        if nan.any():
            single = values[nan].astype(np.float32).view(np.uint32)
            bits[nan] = ((single >> 16) & 0x8000 | 0x7E00 | (single >> 13) & 0x3FF).astype(np.uint16)
    return bits


def _bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """Float ``values`` rounded to bfloat16 (to nearest, ties to even; float64 through float32, as PyTorch rounds
    them), as uint16 bits. A NaN is 0xFFFF from float32 (PyTorch's vectorized cast) and 0x7FC0 from float16 and
    float64 (its scalar one; from float64, PyTorch itself writes 0xFFFF for some positions of its vector loop)."""
    with np.errstate(over="ignore", invalid="ignore"):
        single = values.astype(np.float32).view(np.uint32)
    bits = ((single + (0x7FFF + ((single >> 16) & 1))) >> 16).astype(np.uint16)
    bits[np.isnan(values)] = 0xFFFF if values.dtype == np.float32 else 0x7FC0
    return bits


def _bfloat16_values(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits as the float32 values they stand for (exactly: bfloat16 is float32's top half)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _cast(array: np.ndarray, cast: Cast) -> bytes:
    """The (flat) array in the cast's dtype; finite values the cast (or reading it back) makes infinite are refused."""
    if cast.dtype_name == "float16":
        bits = _float16_bits(array)
        back = bits.view(np.float16)
    else:
        bits = _bfloat16_bits(array)
        back = _bfloat16_values(bits)
        if array.dtype == np.float16:
            with np.errstate(over="ignore", invalid="ignore"):
                back = back.astype(np.float16)
    overflow = np.isinf(back) & np.isfinite(array)
    if overflow.any():
        largest = float(np.abs(array[np.isfinite(array)]).max())
        if cast.dtype_name == "float16":
            raise CodecError(f"values up to {largest:.3g} overflow float16 (max {FP16_MAX:g}); "
                             "use bf16 or an intB codec")
        where = " read back as float16 (max 65504)" if array.dtype == np.float16 else " (max 3.39e38)"
        raise CodecError(f"values up to {largest:.3g} overflow bfloat16{where}; use fp32 or an intB codec")
    return _little_endian(bits).tobytes()


def _finite_values(values: np.ndarray, spec: str) -> np.ndarray:
    if values.size and not np.isfinite(values).all():
        raise CodecError(f"codec {spec} quantizes, and the tensor holds NaN or inf; quantization needs finite "
                         "values (use fp32, fp16 or zstd to send them as they are)")
    return values


def _quantize(array: np.ndarray, spec: Quantize) -> tuple[QuantRecord, np.ndarray]:
    with np.errstate(over="ignore"):  # float64 values beyond float32 become ±inf, refused below (as torch does)
        values = _finite_values(array.astype(np.float32, copy=False), f"int{spec.bits}")
    axis = spec.axis_for(values.ndim, f"int{spec.bits}")
    if spec.calibrated:
        low, high = np.array(spec.low, np.float32), np.array(spec.high, np.float32)
        rows = 1 if axis is None else values.shape[axis]
        if len(low) != rows:
            raise CodecError(f"codec was calibrated on {len(low)} channels, this tensor has {rows}; "
                             "calibrate on features from the same cut")
    else:
        low, high = quantize.clip_ranges(values, axis, spec.percentile)
    symbols = quantize.quantize(values, low, high, spec.bits, axis)
    return QuantRecord(spec.bits, axis, low, high), symbols


def quantized_frame(symbols: np.ndarray, scale: float, zero_point: int) -> bytes:
    """The int8 codec's frame (8 bits, one range for the tensor) of uint8 ``symbols`` standing for
    ``(q - zero_point) * scale``, as an int8 head's last QuantizeLinear makes them: the frame's range is
    [-zero_point·scale, (255 - zero_point)·scale], so any int8 decoder's ``low + q·(high - low)/255`` gives what the
    head's DequantizeLinear would have (to float32 rounding), without dequantizing and quantizing again here. The
    bytes differ from ``encode``'s of the dequantized tensor (that range is the tensor's min/max); the size does not."""
    if not isinstance(symbols, np.ndarray) or symbols.dtype != np.uint8:
        raise CodecError("a quantized frame is written from the uint8 tensor of an int8 head")
    if symbols.ndim > MAX_NDIM:
        raise CodecError(f"cannot encode a {symbols.ndim}-dimensional tensor: frames hold up to {MAX_NDIM} dimensions")
    low = np.array([(0 - zero_point) * scale], np.float32)
    high = np.array([(255 - zero_point) * scale], np.float32)
    return layout.write(Frame(WIRE["float32"], tuple(symbols.shape), [QuantRecord(8, None, low, high)],
                              np.ascontiguousarray(symbols).tobytes()))


# ---- decoding ----------------------------------------------------------------------------------------------------

def _out_dtype(float_dtype: object) -> WireDType | None:
    if float_dtype is None:
        return None
    try:
        dtype = np.dtype(float_dtype)  # type: ignore[call-overload]
    except TypeError as error:
        raise CodecError(f"float_dtype must be a numpy floating-point dtype, not {float_dtype}") from error
    if dtype not in _FRAME_DTYPE or not np.issubdtype(dtype, np.floating):
        raise CodecError(f"float_dtype must be float16, float32 or float64, not {dtype}")
    return _FRAME_DTYPE[dtype]


def _read(data: bytes, limits: DecodeLimits, float_dtype: object) -> tuple[Frame, layout.Plan]:
    out = _out_dtype(float_dtype)
    frame = layout.read(data, limits)
    if out is None and frame.dtype.name == "bfloat16":
        out = WIRE["float32"]  # numpy holds bfloat16 values as float32
    return frame, layout.plan(frame, out, limits)


def decode_cost(data: bytes, float_dtype: object = None, limits: DecodeLimits = DecodeLimits()) -> DecodeCost:
    """What ``decode(data, limits, float_dtype)`` would hold and do, from the frame's header (as the torch
    decoder's ``decode_cost``, for the array this decoder makes)."""
    return _read(data, limits, float_dtype)[1].cost


def decode(data: bytes, limits: DecodeLimits = DecodeLimits(), float_dtype: object = None) -> np.ndarray:
    """The array a frame carries; raises ``PayloadError`` on anything malformed.

    The same checks as the torch decoder, before anything is allocated: everything the decode holds at once (the
    array, decompressed bytes, the ANS coder's copy of its data) is computed from the header and checked against
    ``limits.max_decoded_bytes``. A floating-point frame is decoded into ``float_dtype`` (float16, float32 or
    float64) when given.
    """
    frame, plan = _read(data, limits, float_dtype)
    try:
        return _decode(frame, plan)
    except ValueError as error:
        raise PayloadError(f"payload corrupt: {error}") from error


def _decode(frame: Frame, plan: layout.Plan) -> np.ndarray:
    out = np.empty(plan.numel, dtype=NUMPY[plan.out_dtype.name])
    buffer = out.view(np.uint8)
    transform, lossless = plan.transform, plan.lossless
    source = np.frombuffer(frame.body, dtype=np.uint8)
    if isinstance(lossless, ZstdRecord):
        size = lossless.raw_size
        target = np.empty(size, dtype=np.uint8) if plan.zstd_apart else buffer[len(buffer) - size:]
        entropy.zstd_decompress_into(frame.body, target)
        if transform is None and plan.out_dtype == frame.dtype:
            return _native(out, frame)  # decompressed straight into the array
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
            _store(out, start, values.values(start, symbols), frame.dtype)
            start += len(symbols)
        return out.reshape(frame.shape)
    if isinstance(transform, CastRecord):
        _convert(out, source, transform.dtype, frame.dtype)
    elif plan.out_dtype != frame.dtype:
        _convert(out, source, frame.dtype, frame.dtype)
    else:
        buffer[:] = source
        return _native(out, frame)
    return out.reshape(frame.shape)


def _native(out: np.ndarray, frame: Frame) -> np.ndarray:
    """An array that holds the frame's (little-endian) bytes as they came, in its shape; swapped on a big-endian
    machine."""
    if not np.little_endian:
        out.byteswap(inplace=True)
    return out.reshape(frame.shape)


def _held(values: np.ndarray, dtype: WireDType | np.dtype) -> np.ndarray:
    """Float ``values`` converted to ``dtype`` (a frame dtype, or the array's), as PyTorch converts them: rounded to
    nearest, ties to even; a bfloat16 held as the float32 it stands for; a float16 NaN widened as a quiet NaN."""
    name = dtype.name
    if name == "bfloat16":
        return _bfloat16_values(_bfloat16_bits(values))
    if name == "float16":
        return values if values.dtype == np.float16 else _float16_bits(values).view(np.float16)
    if values.dtype == np.float16:
        wide = values.astype(np.float32)
        nan = np.isnan(values)
        if nan.any():
            wide.view(np.uint32)[nan] |= np.uint32(0x00400000)
        values = wide
    return values.astype(NUMPY[name], copy=False)


def _store(out: np.ndarray, start: int, values: np.ndarray, dtype: WireDType) -> None:
    """float64 ``values`` into ``out[start:]`` as the torch decoder rounds them: to float32, then to the frame's
    ``dtype``, then to the array's."""
    end = start + len(values)
    with np.errstate(over="ignore", invalid="ignore"):  # out of a narrower type's range: ±inf, as in PyTorch
        if dtype.name == "float32" and out.dtype == np.float32:
            np.copyto(out[start:end], values, casting="same_kind")
            return
        out[start:end] = _held(_held(values.astype(np.float32), dtype), out.dtype)


def _convert(out: np.ndarray, source: np.ndarray, stored: WireDType, dtype: WireDType) -> None:
    """``source`` bytes holding values in ``stored`` dtype into ``out``, through the frame's ``dtype``, a run at a
    time; each run is read before the array's bytes are written, so ``source`` may lie at the array's end."""
    size = stored.itemsize
    for start in range(0, len(out), STEP):
        end = min(start + STEP, len(out))
        raw = source[start * size:end * size].copy()
        if stored.name == "bfloat16":
            run = _bfloat16_values(raw.view("<u2"))
        else:
            run = raw.view(NUMPY[stored.name].newbyteorder("<")).astype(NUMPY[stored.name])
        with np.errstate(over="ignore", invalid="ignore"):  # out of a narrower type's range: ±inf, as in PyTorch
            out[start:end] = _held(run if stored == dtype else _held(run, dtype), out.dtype)


# ---- several tensors -----------------------------------------------------------------------------------------------

def unpack(data: bytes, limits: DecodeLimits = DecodeLimits(), max_frames: int = 64,
           float_dtype: object = None) -> list[np.ndarray]:
    """The arrays ``pack`` bundled, decoded under ``limits`` all together, as the torch ``unpack`` does: each
    frame's decode gets what the arrays before it left. ``float_dtype`` as in ``decode``."""
    frames = layout.bundled(data, max_frames, "tensors")
    arrays: list[np.ndarray] = []
    for frame in frames:
        left = limits.max_decoded_bytes - sum(a.nbytes for a in arrays)
        try:
            arrays.append(decode(frame, DecodeLimits(left, limits.max_ndim), float_dtype))
        except PayloadError as error:
            raise PayloadError(f"tensor {len(arrays) + 1} of {len(frames)}: {error}"
                               + (" (the limit left after the tensors before it)" if arrays else "")) from error
    return arrays


def unpack_cost(data: bytes, max_frames: int = 64, float_dtype: object = None,
                limits: DecodeLimits = DecodeLimits()) -> DecodeCost:
    """What ``unpack(data, limits, max_frames, float_dtype)`` would hold and do, from the headers alone."""
    held = peak = converted = symbols = 0
    for number, frame in enumerate(layout.bundled(data, max_frames, "tensors"), 1):
        try:
            cost = decode_cost(frame, float_dtype, DecodeLimits(limits.max_decoded_bytes - held, limits.max_ndim))
        except PayloadError as error:
            raise PayloadError(f"tensor {number}: {error}") from error
        peak, held = max(peak, held + cost.peak_bytes), held + cost.tensor_bytes
        converted, symbols = converted + cost.converted_values, symbols + cost.ans_symbols
    return DecodeCost(peak, held, converted, symbols)
