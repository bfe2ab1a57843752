"""Codecs: round trips within each codec's promise, exact payload sizes, a decoder that meets untrusted bytes
with nothing but tensors or PayloadError, the spec parser, and compression on ReLU-like features.

Reference values (clipping ranges, quantization steps, tolerances) are computed here from the definitions, not
taken from the codec; frames for the decoder's refusals are built by hand from the layout documented in frame.py.
"""

from __future__ import annotations

import io
import json
import tracemalloc

import numpy as np
import pytest
import torch
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgesplit.codecs import (SPEC_HELP, Codec, CodecError, DecodeLimits, PayloadError, codec_from_json, decode,
                              decode_cost, pack, parse_codec, unpack)
from edgesplit.codecs.frame import read
from edgesplit.codecs.spec import channel_axis

# conftest's autouse seeding fixture is function-scoped; hypothesis only warns that it runs once per test
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FEW, SOME, MANY = (settings(max_examples=n, **SETTINGS) for n in (25, 60, 150))

FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
INTEGERS = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool]
NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.float32,
         torch.float64: np.float64, torch.uint8: np.uint8, torch.int8: np.int8, torch.int16: np.int16,
         torch.int32: np.int32, torch.int64: np.int64, torch.bool: np.bool_}
WIDTH = {np.float16: 16, np.float32: 32, np.float64: 64}
# round-to-nearest: relative error at most 2**-(significant bits); absolute error below the smallest normal
# at most half the smallest subnormal
REL = {torch.float32: 2.0**-24, torch.float64: 2.0**-53, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
TINY = {torch.float32: 2.0**-150, torch.float64: 0.0, torch.float16: 2.0**-25, torch.bfloat16: 2.0**-134}

shapes = st.lists(st.integers(0, 5), max_size=4).map(tuple)


@st.composite
def tensors(draw, dtypes=FLOATS + INTEGERS, shape=shapes, bound: float | None = None, specials: bool = True,
            min_numel: int = 0):
    """A tensor of one of ``dtypes``; floats within ±``bound`` (else any, NaN and ±inf when ``specials``)."""
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(shape) if isinstance(shape, st.SearchStrategy) else shape
    if int(np.prod(shape)) < min_numel:
        shape = (min_numel,)
    kind = NUMPY[dtype]
    if dtype.is_floating_point:
        width = WIDTH[kind]
        elements = (st.floats(-bound, bound, width=width) if bound is not None else
                    st.floats(width=width, allow_nan=specials, allow_infinity=specials))
        array = draw(hnp.arrays(kind, shape, elements=elements))
    else:
        array = draw(hnp.arrays(kind, shape))
    return torch.from_numpy(np.array(array)).to(dtype)


def raw_bits(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.numel() == 0:
        return torch.empty(0, dtype=torch.uint8)
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def assert_identical(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Same dtype, same shape, and the same bytes (NaN payloads and signed zeros included)."""
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert torch.equal(raw_bits(actual), raw_bits(expected))


def f64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float64).numpy()


# ---- handmade frames (layout from frame.py's docstring) ---------------------------------------------------------

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3, torch.uint8: 4}


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def handmade(dtype_code: int, shape: list[int], stages: list[bytes] = (), body: bytes = b"",
             version: int = 1, magic: bytes = b"ESC") -> bytes:
    return (magic + bytes([version, dtype_code, len(shape), len(stages)]) + b"".join(varint(d) for d in shape)
            + b"".join(stages) + body)


def zstd_stage(raw_size: int) -> bytes:
    return bytes([3]) + varint(raw_size)


def peak_allocation(action) -> int:
    """Peak bytes traced (Python objects and numpy buffers) while ``action`` runs."""
    tracemalloc.start()
    try:
        action()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def refuses(data: bytes, match: str | None = None, limits: DecodeLimits = DecodeLimits()) -> PayloadError:
    with pytest.raises(PayloadError, match=match) as caught:
        decode(data, limits)
    return caught.value


# ---- lossless codecs and casts ----------------------------------------------------------------------------------

@MANY
@given(x=tensors(), spec=st.sampled_from(["fp32", "zstd", "zstd:1", "fp32+zstd:19", "raw"]))
@example(x=torch.tensor(float("nan")), spec="fp32")
@example(x=torch.tensor([-0.0, float("inf"), -float("inf")]), spec="zstd")
def test_lossless_codecs_round_trip_bit_for_bit(x, spec):
    codec = parse_codec(spec)
    assert codec.is_lossless
    assert_identical(decode(codec.encode(x)), x)


@SOME
@given(x=tensors(INTEGERS), spec=st.sampled_from(["fp16", "bf16", "int1", "int4:channel", "int8+ans",
                                                    "int2+ans:adaptive", "int4+zstd", "fp16+zstd"]))
def test_integer_and_bool_tensors_cross_every_codec_unchanged(x, spec):
    assert_identical(decode(parse_codec(spec).encode(x)), x)


def cast_error_ok(x: torch.Tensor, y: torch.Tensor, cast: torch.dtype) -> None:
    """y is x rounded once to ``cast`` (and once more to x's own dtype); NaN stays NaN, ±inf stays ±inf."""
    assert y.dtype == x.dtype and y.shape == x.shape
    a, b = f64(x), f64(y)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    finite = np.isfinite(a)
    assert np.array_equal(a[~finite & ~np.isnan(a)], b[~finite & ~np.isnan(a)])  # infinities, signs included
    tolerance = (REL[cast] + REL[x.dtype]) * np.abs(a[finite]) + TINY[cast] + TINY[x.dtype]
    assert (np.abs(b[finite] - a[finite]) <= tolerance).all(), np.abs(b[finite] - a[finite]).max()


@MANY
@given(data=st.data(), spec=st.sampled_from(["fp16", "bf16", "fp16+zstd", "bf16+zstd:5"]))
def test_casts_round_to_the_cast_precision_and_carry_nan_and_inf(data, spec):
    codec = parse_codec(spec)
    cast = torch.float16 if spec.startswith("fp16") else torch.bfloat16
    x = data.draw(tensors(FLOATS, specials=False))
    fits = (65504.0 if cast == torch.float16 else 3.38e38) if x.dtype != torch.float16 else 65280.0
    x = torch.where(x.double().abs() <= fits, x, torch.zeros_like(x))  # overflow is tested below
    if x.numel():
        specials = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=x.dtype)
        flat = x.reshape(-1).clone()
        picks = data.draw(st.lists(st.integers(0, flat.numel() - 1), max_size=3))
        for pick, value in zip(picks, specials):
            flat[pick] = value
        x = flat.reshape(x.shape)
    cast_error_ok(x, decode(codec.encode(x)), cast)


def test_cast_keeps_values_that_fit_exactly_when_they_are_representable():
    x = torch.tensor([0.5, -2.0, 1024.0, 65504.0, 2.0**-24, -0.0])
    assert_identical(decode(parse_codec("fp16").encode(x)), x)
    assert decode(parse_codec("bf16").encode(torch.tensor([1.0 + 2**-9]))).item() == 1.0  # rounds, not passes


@pytest.mark.parametrize("spec, x, match", [
    ("fp16", torch.tensor([1.0, 70000.0]), "overflow float16"),
    ("fp16+zstd", torch.tensor([-1e5], dtype=torch.float64), "overflow float16"),
    ("fp16", torch.tensor([3e38], dtype=torch.bfloat16), "overflow float16"),
    ("bf16", torch.tensor([3.4e38]), "overflow bfloat16"),
    ("bf16", torch.tensor([1e300], dtype=torch.float64), "overflow bfloat16"),
    ("bf16", torch.tensor([65504.0], dtype=torch.float16), "overflow bfloat16"),  # rounds to 65536: inf in fp16
])
def test_cast_overflow_is_refused_not_turned_into_infinity(spec, x, match):
    with pytest.raises(CodecError, match=match):
        parse_codec(spec).encode(x)


def test_fp16_passes_infinities_that_were_already_there():
    x = torch.tensor([float("inf"), 1.0, -float("inf")])
    assert_identical(decode(parse_codec("fp16").encode(x)), x)


# ---- quantization -----------------------------------------------------------------------------------------------

QUANT_OPTIONS = {"": (None, None), ":minmax": (None, None), ":tensor": (None, None), ":p99": (None, 99.0),
                 ":p90": (None, 90.0), ":p98": (None, 98.0), ":channel": (1, None), ":axis=0": (0, None),
                 ":channel,p95": (1, 95.0), ":channel,p90": (1, 90.0), ":axis=2,minmax": (2, None)}


def reference_ranges(values: np.ndarray, axis: int | None, percentile: float | None) -> tuple[np.ndarray, ...]:
    """[low, high] per range, broadcastable against ``values``: min/max or the central percentile."""
    rows = 1 if axis is None else values.shape[axis]
    moved = (values if axis is None else np.moveaxis(values, axis, 0)).reshape(rows, values.size // max(rows, 1))
    if moved.shape[1] == 0:
        low = high = np.zeros(moved.shape[0])
    elif percentile is None:
        low, high = moved.min(axis=1), moved.max(axis=1)
    else:
        tail = (100 - percentile) / 2
        low, high = np.percentile(moved, [tail, 100 - tail], axis=1)
    low, high = low.astype(np.float32).astype(np.float64), high.astype(np.float32).astype(np.float64)
    view = [1] * values.ndim
    if axis is not None:
        view[axis] = values.shape[axis]
    return low.reshape(view), high.reshape(view)


def assert_within_half_step(x: torch.Tensor, y: torch.Tensor, low: np.ndarray, high: np.ndarray,
                            bits: int) -> None:
    """|y - clip(x)| <= step/2 (+ float32 rounding of ranges and values, + rounding to the output dtype)."""
    assert y.dtype == x.dtype and y.shape == x.shape
    a, b = f64(x), f64(y)
    step = (high - low) / (2**bits - 1)
    target = np.clip(a, low, high)
    magnitude = np.maximum(np.abs(low), np.abs(high))
    tolerance = step / 2 + 4 * REL[torch.float32] * magnitude + REL[x.dtype] * np.abs(b) + TINY[x.dtype]
    error = np.abs(b - target)
    assert (error <= tolerance).all(), f"error {error.max()} over {np.broadcast_to(tolerance, a.shape).min()}"
    inside = (a >= low) & (a <= high)  # for values in the range the promise is about x itself
    assert (np.abs(b - a)[inside] <= (tolerance + 2 * REL[torch.float32] * np.abs(a))[inside]).all()


def quantizable(option: str) -> st.SearchStrategy:
    axis = QUANT_OPTIONS[option][0]
    dims = st.lists(st.integers(0, 5), min_size=0 if axis is None else axis + 1, max_size=4).map(tuple)
    return tensors(FLOATS, shape=dims, bound=1e4)


@MANY
@given(data=st.data(), bits=st.integers(1, 8), option=st.sampled_from(sorted(QUANT_OPTIONS)))
def test_uncalibrated_quantization_is_within_half_a_step(data, bits, option):
    x = data.draw(quantizable(option))
    axis, percentile = QUANT_OPTIONS[option]
    axis = channel_axis(x.ndim) if "channel" in option else axis  # the last axis of [B, N, D] tokens
    codec = parse_codec(f"int{bits}{option}")
    assert not codec.is_lossless and codec.fixed_rate
    y = decode(codec.encode(x))
    low, high = reference_ranges(f64(x.float()), axis, percentile)
    assert_within_half_step(x, y, low, high, bits)


@MANY
@given(data=st.data(), bits=st.integers(1, 8), option=st.sampled_from(["", ":channel", ":p98", ":channel,p90"]),
       ans=st.sampled_from(["", "+ans:calibrated", "+ans", "+zstd"]))
def test_calibrated_quantization_clips_to_the_calibrated_range(data, bits, option, ans):
    axis, percentile = QUANT_OPTIONS[option]
    channels = data.draw(st.integers(1, 4))
    features = data.draw(tensors([torch.float32], shape=st.tuples(st.integers(1, 4), st.integers(1, 4),
                                                                   st.just(channels)), bound=10.0))
    x = data.draw(tensors(FLOATS, shape=st.tuples(st.integers(0, 3), st.integers(0, 4), st.just(channels)),
                          bound=50.0))  # wider than the calibration: values outside are clipped
    codec = parse_codec(f"int{bits}{option}{ans}").calibrate(features)
    y = decode(codec.encode(x))
    axis = None if axis is None else channel_axis(3)  # [B, N, D] tokens: channels are the last axis
    low, high = reference_ranges(f64(features), axis, percentile)
    assert_within_half_step(x, y, low, high, bits)


@SOME
@given(data=st.data(), bits=st.integers(1, 8), option=st.sampled_from(["", ":channel", ":p99"]),
       lossless=st.sampled_from(["+ans", "+ans:adaptive", "+zstd", "+zstd:1", "+zstd:22"]))
def test_entropy_stages_decode_to_exactly_what_plain_quantization_does(data, bits, option, lossless):
    x = data.draw(quantizable(option))
    plain, coded = parse_codec(f"int{bits}{option}"), parse_codec(f"int{bits}{option}{lossless}")
    assert not coded.fixed_rate
    assert_identical(decode(coded.encode(x)), decode(plain.encode(x)))


@FEW
@given(data=st.data(), bits=st.integers(1, 8), option=st.sampled_from(["", ":channel"]),
       lossless=st.sampled_from(["+ans:calibrated", "+ans", "+zstd"]))
def test_calibrated_entropy_stages_match_calibrated_plain_quantization(data, bits, option, lossless):
    features = data.draw(tensors([torch.float32], shape=(4, 3, 5, 2), bound=3.0))  # calibrated along axis 1
    x = data.draw(tensors(FLOATS, shape=st.tuples(st.integers(0, 2), st.just(3), st.integers(0, 6)), bound=5.0))
    plain = parse_codec(f"int{bits}{option}").calibrate(features)
    coded = parse_codec(f"int{bits}{option}{lossless}").calibrate(features)
    assert_identical(decode(coded.encode(x)), decode(plain.encode(x)))


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("spec", ["int{}+ans", "int{}+ans:calibrated", "int{}:channel+ans", "int{}+zstd"])
def test_entropy_coding_of_tensors_with_a_single_symbol(bits, spec):
    """Constant tensors, one-element tensors and tensors clipped to the top symbol use one symbol only."""
    codec = parse_codec(spec.format(bits)).calibrate(torch.randn(16, 3, 4, 2))  # ranges along axis 1
    # calibrated on randn: ±100 clip to the bottom and top symbols, every value the same symbol
    for x in (torch.zeros(2, 3, 4), torch.full((1, 3, 1), -7.25), torch.full((2, 3, 2), 100.0),
              torch.full((2, 3, 2), -100.0)):
        assert_identical(decode(codec.encode(x)), decode(replace_lossless(codec).encode(x)))
    uncalibrated = parse_codec(spec.format(bits).replace(":calibrated", ""))
    for x in (torch.zeros(5, 2), torch.full((1, 1), 3.0), torch.full((2, 3, 2), -0.125)):
        assert_identical(decode(uncalibrated.encode(x)), x)  # a zero-width range decodes exactly
    if ":channel" not in spec:
        assert_identical(decode(uncalibrated.encode(torch.tensor(1.5))), torch.tensor(1.5))


def replace_lossless(codec: Codec) -> Codec:
    """The same calibrated codec without its lossless stage."""
    from dataclasses import replace

    return replace(codec, lossless=None)


@pytest.mark.parametrize("spec", ["int8", "int4:channel", "int2+ans", "int4+zstd", "int3:p99",
                                  "int8+ans:calibrated"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_quantizing_codecs_refuse_nan_and_inf(spec, bad):
    x = torch.randn(2, 3, 4)
    x[1, 2, 3] = bad
    codec = parse_codec(spec)
    with pytest.raises(CodecError, match="NaN"):
        codec.calibrate(x)
    with pytest.raises(CodecError, match="NaN"):
        codec.calibrate(torch.randn(2, 3, 4)).encode(x)
    if not codec.needs_calibration:
        with pytest.raises(CodecError, match="NaN"):
            codec.encode(x)


def test_per_channel_quantization_needs_the_channel_axis():
    with pytest.raises(CodecError, match="axis 1"):
        parse_codec("int8:channel").encode(torch.randn(5))
    with pytest.raises(CodecError, match="axis 1"):
        parse_codec("int8:channel").payload_bytes((5,))
    with pytest.raises(CodecError, match="calibrated on 3 channels"):
        parse_codec("int4:channel").calibrate(torch.randn(8, 3, 2, 2)).encode(torch.randn(1, 4, 2, 2))


def test_per_channel_ranges_follow_each_channel():
    x = torch.stack([torch.linspace(0, 1, 50), torch.linspace(-1000, 1000, 50)])[None, :, :, None]  # 1×2×50×1
    y = decode(parse_codec("int8:channel").encode(x))
    step_small, step_big = 1 / 255, 2000 / 255
    assert (y[0, 0] - x[0, 0]).abs().max() <= step_small / 2 + 1e-6
    assert (y[0, 1] - x[0, 1]).abs().max() <= step_big / 2 + 1e-3
    per_tensor = decode(parse_codec("int8").encode(x))
    assert (per_tensor[0, 0] - x[0, 0]).abs().max() > 10 * step_small  # one range for both loses the small one


# ---- sizes -------------------------------------------------------------------------------------------------------

FIXED_RATE = ["fp32", "fp16", "bf16", "int1", "int3", "int7", "int8", "int5:channel", "int8:axis=0", "int4:p99",
              "int2:axis=3"]
ENTROPY = ["zstd", "fp16+zstd", "int4+ans", "int4+zstd", "int8+ans:calibrated", "int2:channel+ans"]


@MANY
@given(x=tensors(bound=1e4), spec=st.sampled_from(FIXED_RATE), calibrated=st.booleans())
def test_payload_bytes_is_the_exact_frame_size_for_fixed_rate_codecs(x, spec, calibrated):
    codec = parse_codec(spec)
    assert codec.fixed_rate
    try:
        expected = codec.payload_bytes(tuple(x.shape), x.dtype)
    except CodecError:  # a channel axis the tensor lacks: encode refuses it the same way
        with pytest.raises(CodecError, match="axis"):
            codec.encode(x)
        return
    if calibrated and x.dtype.is_floating_point and x.numel():
        codec = codec.calibrate(x)
    assert len(codec.encode(x)) == expected


@pytest.mark.parametrize("spec", ENTROPY)
def test_payload_bytes_is_none_for_entropy_coded_codecs(spec):
    codec = parse_codec(spec)
    assert not codec.fixed_rate
    assert codec.payload_bytes((1, 16, 8, 8)) is None


def test_compression_on_sparse_relu_features():
    x = torch.randn(8, 16, 7, 7).relu()
    size = {spec: len(parse_codec(spec).encode(x)) for spec in ("fp32", "int8", "int4", "int4+zstd", "int2",
                                                               "int2+ans")}
    assert size["int2+ans"] < size["int2"]
    assert size["int4+zstd"] < size["int4"]
    assert 3.9 < size["fp32"] / size["int8"] <= 4.0
    calibrated = parse_codec("int2+ans:calibrated").calibrate(torch.randn(32, 16, 7, 7).relu())
    assert len(calibrated.encode(x)) < size["int2"]


# ---- the decoder on untrusted bytes -----------------------------------------------------------------------------

def real_payloads() -> list[tuple[str, bytes]]:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 4, 5).relu()
    calibration = torch.randn(6, 3, 4, 5).relu()
    specs = ["fp32", "fp16", "bf16+zstd", "zstd", "int4:channel", "int3", "int2+ans", "int8+ans:calibrated",
             "int4+zstd", "int1:channel+ans", "int5:p99+ans"]
    payloads = [(s, parse_codec(s).calibrate(calibration).encode(x)) for s in specs]
    payloads.append(("zstd on int64", parse_codec("zstd").encode(torch.arange(40).reshape(5, 8))))
    payloads.append(("int2+ans, 0-d", parse_codec("int2+ans").encode(torch.tensor(3.0))))
    return payloads


REAL = real_payloads()


@pytest.mark.parametrize("spec, payload", REAL, ids=[s for s, _ in REAL])
def test_every_truncation_of_a_real_payload_is_refused(spec, payload):
    decode(payload)
    for length in range(len(payload)):
        with pytest.raises(PayloadError):
            decode(payload[:length])


@pytest.mark.parametrize("spec, payload", REAL, ids=[s for s, _ in REAL])
def test_trailing_bytes_are_refused(spec, payload):
    refuses(payload + b"\0")


def decoded_or_refused(data: bytes, limits: DecodeLimits = DecodeLimits()) -> torch.Tensor | None:
    """decode's only outcomes on bad bytes: a tensor, or PayloadError (anything else fails the test)."""
    try:
        tensor = decode(data, limits)
    except PayloadError:
        return None
    assert isinstance(tensor, torch.Tensor)
    return tensor


@MANY
@given(which=st.integers(0, len(REAL) - 1), position=st.integers(0, 10**6), byte=st.integers(1, 255))
def test_single_byte_corruptions_decode_or_raise_payload_error(which, position, byte):
    _, payload = REAL[which]
    position %= len(payload)
    corrupt = bytearray(payload)
    corrupt[position] ^= byte
    tensor = decoded_or_refused(bytes(corrupt))
    if position < 4:  # magic and version
        assert tensor is None


@MANY
@given(data=st.binary(max_size=300))
def test_random_bytes_decode_or_raise_payload_error(data):
    decoded_or_refused(data)
    decoded_or_refused(b"ESC\x01" + data)  # past the magic: the header fields are random


STAGE_FIELDS = st.one_of(
    st.tuples(st.just(1), st.integers(0, 12)).map(lambda t: bytes(t)),
    st.builds(lambda bits, axis, n, ranges: bytes([2, bits, axis]) + varint(n)
              + np.array(ranges, "<f4").tobytes(),
              st.integers(0, 9), st.sampled_from([0, 1, 2, 3, 255]), st.integers(0, 6),
              st.lists(st.floats(width=32), max_size=12)),
    st.builds(lambda size: bytes([3]) + varint(size), st.integers(0, 2**41)),
    st.builds(lambda model, first, counts, words: bytes([4, model]) + varint(first) + varint(len(counts))
              + np.array(counts, "<u2").tobytes() + varint(words),
              st.integers(0, 2), st.integers(0, 256), st.lists(st.integers(0, 65535), max_size=20),
              st.integers(0, 40)),
    st.integers(0, 255).map(lambda kind: bytes([kind])),
)


@MANY
@given(dtype=st.integers(0, 12), shape=st.lists(st.one_of(st.integers(0, 6), st.integers(0, 2**64)), max_size=9),
       stages=st.lists(STAGE_FIELDS, max_size=3), body=st.binary(max_size=200), compress=st.booleans())
def test_handmade_frames_decode_to_their_declared_shape_or_raise_payload_error(dtype, shape, stages, body,
                                                                               compress):
    if compress:
        body = zstandard.ZstdCompressor().compress(body)
    tensor = decoded_or_refused(handmade(dtype, shape, stages, body))
    if tensor is not None:
        assert list(tensor.shape) == shape


def test_wrong_magic_version_and_type_are_refused():
    payload = parse_codec("fp32").encode(torch.ones(3))
    refuses(b"XYZ" + payload[3:], match="magic")
    refuses(payload[:3] + bytes([2]) + payload[4:], match="version 2")
    refuses(payload[:3] + bytes([0]) + payload[4:], match="version 0")
    refuses(b"", match="truncated")
    with pytest.raises(PayloadError, match="bytes, not str"):
        decode("ESC")  # type: ignore[arg-type]
    assert_identical(decode(bytearray(payload)), torch.ones(3))
    assert_identical(decode(memoryview(payload)), torch.ones(3))


def test_the_handmade_layout_is_the_encoders_layout():
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    assert parse_codec("fp32").encode(x) == handmade(0, [2, 3], [], x.numpy().tobytes())
    assert_identical(decode(handmade(4, [300], [], bytes(range(256)) + bytes(44))),
                     torch.tensor(list(range(256)) + [0] * 44, dtype=torch.uint8))


def test_an_oversized_declared_shape_is_refused_before_allocating():
    two_to_40 = handmade(0, [2**20, 2**20], [], b"\0" * 16)  # 2**40 float32 elements, 16 bytes of body
    assert peak_allocation(lambda: refuses(two_to_40, match="over the decode limit")) < 2**20
    just_over = handmade(0, [(256 * 2**20) // 4 + 1], [], b"\0" * 16)  # one element past the default limit
    assert peak_allocation(lambda: refuses(just_over, match="over the decode limit")) < 2**20
    refuses(handmade(0, [2**64 - 1], []), match="over the decode limit")
    refuses(handmade(0, [0, 2**63]), match="over the decode limit")  # no elements, but torch cannot shape it
    refuses(handmade(0, [0, 2**40, 2**40]), match="over the decode limit")
    refuses(handmade(0, [1] * 9), match="9 dimensions")
    refuses(handmade(0, [2**80]), match="not a valid varint")
    assert decode(handmade(0, [0, 1000])).shape == (0, 1000)


def test_a_zstd_stage_declaring_more_than_the_limit_is_refused():
    small = zstandard.ZstdCompressor().compress(bytes(16))
    refuses(handmade(4, [16], [zstd_stage(2**40)], small), match="zstd stage declares")
    refuses(handmade(4, [16], [zstd_stage(1001)], small), match="zstd stage declares",
            limits=DecodeLimits(max_decoded_bytes=1000))
    refuses(handmade(4, [16], [zstd_stage(17)], small), match="decompress to 16 bytes")
    assert_identical(decode(handmade(4, [16], [zstd_stage(16)], small)), torch.zeros(16, dtype=torch.uint8))


def zstd_bomb(megabytes: int, declare_size: bool) -> bytes:
    """A zstd frame of ``megabytes`` MB of zeros, written in 1 MB pieces (the content size in its header or not)."""
    sink = io.BytesIO()
    size = megabytes * 2**20 if declare_size else -1
    with zstandard.ZstdCompressor(level=1).stream_writer(sink, size=size, closefd=False) as writer:
        chunk = bytes(2**20)
        for _ in range(megabytes):
            writer.write(chunk)
    return sink.getvalue()


@pytest.mark.parametrize("declare_size", [True, False])
def test_a_zstd_bomb_is_refused_without_inflating_it(declare_size):
    bomb = zstd_bomb(100, declare_size)
    assert len(bomb) < 50_000
    for frame in (handmade(4, [16], [zstd_stage(16)], bomb),  # a 16-byte tensor
                  handmade(0, [4, 4], [bytes([2, 8, 255]) + varint(1) + np.array([0, 1], "<f4").tobytes(),
                                       zstd_stage(16)], bomb)):  # int8 symbols
        assert peak_allocation(lambda: refuses(frame, match="decompress to")) < 4 * 2**20


def test_decode_limits_are_configurable():
    x = torch.randn(64, 64)  # 16,384 bytes of float32
    for spec in ("fp32", "zstd", "int8", "int4+zstd", "int4+ans"):
        payload = parse_codec(spec).encode(x)
        decode(payload)
        # what decoding holds at once: the tensor (quantized and zstd frames decode inside it), and for ANS the
        # coder's copy of its data (the frame's body: the ANS words)
        held = 16_384 + (len(read(payload, DecodeLimits()).body) if "ans" in spec else 0)
        assert decode_cost(payload).peak_bytes == held
        refuses(payload, match=f"decode limit of {held - 1:,}", limits=DecodeLimits(max_decoded_bytes=held - 1))
        decode(payload, DecodeLimits(max_decoded_bytes=held))
    refuses(parse_codec("fp32").encode(torch.ones(1, 2, 3)), match="3 dimensions, the limit is 2",
            limits=DecodeLimits(max_ndim=2))


def test_stages_in_an_impossible_order_are_refused():
    quant = bytes([2, 4, 255]) + varint(1) + np.array([0, 1], "<f4").tobytes()
    ans = bytes([4, 0]) + varint(0) + varint(2) + np.array([1, 1], "<u2").tobytes() + varint(0)
    refuses(handmade(4, [4], [quant], bytes(2)), match="not a valid pipeline")  # quantized uint8
    refuses(handmade(0, [4], [ans, quant], b""), match="not a valid pipeline")
    refuses(handmade(0, [4], [zstd_stage(2), quant]), match="not a valid pipeline")
    refuses(handmade(0, [4], [bytes([9])]), match="unknown stage id 9")
    refuses(handmade(0, [4], [bytes([2, 9, 255])]), match="9-bit")
    refuses(handmade(0, [4], [bytes([2, 4, 255]) + varint(1) + np.array([1, 0], "<f4").tobytes()]),
            match="not finite and ordered")


# ---- pack / unpack -----------------------------------------------------------------------------------------------

def test_pack_round_trips_several_tensors_with_different_codecs():
    tensors_ = [torch.randn(1, 8, 4, 4), torch.randn(1, 16).relu(), torch.arange(5), torch.tensor(2.0)]
    frames = [parse_codec(s).encode(t) for s, t in zip(["fp32", "int4+ans", "zstd", "fp16"], tensors_)]
    unpacked = unpack(pack(frames))
    assert len(unpacked) == 4
    for got, frame in zip(unpacked, frames):
        assert_identical(got, decode(frame))
    assert unpack(pack([])) == []


def test_unpack_refuses_truncation_trailing_bytes_and_too_many_frames():
    packed = pack([parse_codec("int2+ans").encode(torch.randn(3, 4)), parse_codec("fp16").encode(torch.ones(2))])
    for length in range(len(packed)):
        with pytest.raises(PayloadError):
            unpack(packed[:length])
    with pytest.raises(PayloadError, match="after the last frame"):
        unpack(packed + b"\0")
    with pytest.raises(PayloadError, match="3 tensors, the limit is 2"):
        unpack(pack([parse_codec("fp32").encode(torch.ones(1))] * 3), max_frames=2)
    with pytest.raises(PayloadError, match="magic"):
        unpack(pack([b"XYZ\x01"]))


def test_unpack_limits_the_tensors_together_not_each():
    frames = [parse_codec("fp32").encode(torch.ones(100_000))] * 3  # 400 kB each
    assert len(unpack(pack(frames), DecodeLimits(max_decoded_bytes=1_200_000))) == 3
    with pytest.raises(PayloadError, match="tensor 3 of 3"):
        unpack(pack(frames), DecodeLimits(max_decoded_bytes=1_000_000))


def test_a_pack_of_zstd_bombs_stays_within_the_limit():
    bomb = handmade(0, [2**19], [zstd_stage(2 * 2**20)], zstd_bomb(2, declare_size=True))  # 2 MB of float32
    with pytest.raises(PayloadError, match="tensor 5 of 64"):
        unpack(pack([bomb] * 64), DecodeLimits(max_decoded_bytes=8 * 2**20))


@SOME
@given(data=st.binary(max_size=300))
def test_unpack_of_random_bytes_returns_tensors_or_raises_payload_error(data):
    for candidate in (data, varint(2) + varint(len(data)) + data + varint(len(REAL[0][1])) + REAL[0][1]):
        try:
            result = unpack(candidate)
        except PayloadError:
            continue
        assert all(isinstance(t, torch.Tensor) for t in result)


# ---- the spec parser ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, match", [
    ("int9", "cannot read 'int9'"),
    ("int0", "cannot read 'int0'"),
    ("fp16+ans", "ans codes quantized symbols, so it follows an intB stage"),
    ("ans", "ans codes quantized symbols"),
    ("zstd:99", "zstd level '99' is not 1–22"),
    ("zstd:0", "zstd level '0' is not 1–22"),
    ("foo", "cannot read 'foo'"),
    ("int4:p40", "unknown quantization option 'p40'.*percentile above 50"),
    ("int4:bogus", "unknown quantization option 'bogus'"),
    ("", "empty codec spec"),
    ("   ", "empty codec spec"),
    ("int4+ans:magic", "ans model 'magic' does not exist"),
    ("int4+zstd+ans", "cannot read 'zstd'"),
    ("fp32+fp16", "cannot read 'fp16'"),
    ("fp16:2", "cannot read 'fp16:2'"),
])
def test_bad_specs_raise_codec_error_saying_what_is_wrong(spec, match):
    with pytest.raises(CodecError, match=match) as caught:
        parse_codec(spec)
    if "cannot read" in match or "empty" in match:
        assert SPEC_HELP in str(caught.value)  # and what would work


def test_a_spec_that_is_not_a_string_is_refused():
    with pytest.raises(CodecError, match="empty codec spec"):
        parse_codec(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("spec, fixed, lossless", [
    ("fp32", True, True), ("FP16", True, False), ("bf16+zstd:7", False, False), ("zstd", False, True),
    ("uint8", True, False), ("int4:channel,p99.9+zstd:5", False, False), ("int2+ans:calibrated", False, False),
    ("int1:axis=0,minmax", True, False), (" int3 + ans ", False, False),
])
def test_good_specs_parse(spec, fixed, lossless):
    codec = parse_codec(spec)
    assert (codec.fixed_rate, codec.is_lossless) == (fixed, lossless)
    x = torch.randn(2, 3)
    codec = codec.calibrate(x) if codec.needs_calibration else codec
    assert decode(codec.encode(x)).shape == (2, 3)


@pytest.mark.parametrize("spec", ["int4:channel+ans:calibrated", "int8:p99", "int2+zstd", "fp16", "int3+ans"])
def test_codec_json_round_trips_calibration(spec):
    features = torch.randn(16, 4, 3, 3).relu()
    codec = parse_codec(spec).calibrate(features)
    record = json.loads(json.dumps(codec.to_json()))
    again = codec_from_json(record)
    assert again == codec
    x = torch.randn(1, 4, 3, 3)
    assert again.encode(x) == codec.encode(x)
    if "int" in spec:
        assert "low" in record and len(record["low"]) == (4 if "channel" in spec else 1)
        assert again != parse_codec(spec)  # the calibration is what came back


@pytest.mark.parametrize("record, match", [
    ({}, "needs a 'spec' string"), ({"spec": 3}, "needs a 'spec' string"),
    ({"spec": "int4", "low": [0.0], "high": [1.0, 2.0]}, "equal length"),
    ({"spec": "int2+ans:calibrated", "low": [0.0], "high": [1.0], "counts": [1, 2]}, "2\\*\\*bits counts"),
    ({"spec": "int2+ans:calibrated", "counts": [0, 0, 0, 0]}, "not all zero"),
    ({"spec": "int9"}, "cannot read"),
])
def test_bad_codec_records_are_refused(record, match):
    with pytest.raises(CodecError, match=match):
        codec_from_json(record)


def test_calibrated_ans_without_calibration_says_to_calibrate():
    codec = parse_codec("int4+ans:calibrated")
    assert codec.needs_calibration
    with pytest.raises(CodecError, match="calibrat"):
        codec.encode(torch.randn(2, 3))
    assert not codec.calibrate(torch.randn(8, 3)).needs_calibration


def test_encode_refuses_what_it_cannot_encode():
    with pytest.raises(CodecError, match="torch.Tensor"):
        parse_codec("fp32").encode(np.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="complex"):
        parse_codec("fp32").encode(torch.zeros(3, dtype=torch.complex64))
    with pytest.raises(CodecError, match="9-dimensional"):
        parse_codec("fp32").encode(torch.zeros([1] * 9))
