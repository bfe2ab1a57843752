"""The device's numpy codecs against the torch codecs: the same bytes from the same values, the same values from the
same bytes (both ways), the same refusals with the same messages, and no torch anywhere in ``edgesplit.device``.

The reference is the torch codec itself (``edgesplit.codecs``): every frame the numpy encoder writes is compared
byte for byte with the one ``Codec.encode`` writes, and every frame is decoded by both decoders.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgesplit import device
from edgesplit.codecs import entropy, layout
from edgesplit.codecs import (CodecError, DecodeLimits, PayloadError, codec_from_json, decode, decode_cost, pack,
                              parse_codec, unpack, unpack_cost)
from edgesplit.codecs.layout import AnsRecord, Frame, QuantRecord

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FEW, SOME = (settings(max_examples=n, **SETTINGS) for n in (60, 150))

# The grammar, stage by stage: no transform, casts, every bit width, every range option, and both lossless stages
SPECS = ["fp32", "raw", "fp16", "bf16", "zstd", "fp32+zstd:1", "fp16+zstd", "bf16+zstd:19",
         "int1", "int2", "int3", "int4", "int5", "int6", "int7", "int8", "uint8",
         "int8:channel", "int4:token", "int6:axis=0", "int3:axis=2", "int8:p99.9", "int4:channel,p99", "int2:tensor",
         "int5:minmax", "int8+zstd", "int4:channel+zstd:7", "int2+ans", "int8+ans:adaptive", "int4:channel+ans",
         "int3:token,p99.5+ans", "int1+ans"]
QUANTIZING = [s for s in SPECS if s.startswith(("int", "uint"))]
CALIBRATED = QUANTIZING + ["int4+ans:calibrated", "int6:channel,p99.9+ans:calibrated", "int2:token+ans:calibrated"]
SHAPES = [(), (0,), (5,), (2, 3), (1, 3, 4, 4), (2, 4, 3, 5), (2, 0, 3, 3), (1, 6, 8), (2, 5, 3), (3, 4, 2, 2, 2)]


@st.composite
def arrays(draw, dtype=np.float32, shapes=SHAPES, finite: bool = False):
    """An array of ``dtype``: any floats (NaN and ±inf unless ``finite``), a constant, or values around a few
    magnitudes."""
    shape = draw(st.sampled_from(shapes))
    kind = draw(st.sampled_from(["any", "constant", "scaled", "specials"]))
    width = np.dtype(dtype).itemsize * 8
    if kind == "constant":
        value = draw(st.floats(width=width, allow_nan=not finite, allow_infinity=not finite))
        return np.full(shape, value, dtype=dtype)
    if kind == "specials" and not finite:  # values in every float's range, a few of them NaN (some signalling) or inf
        seed = draw(st.integers(0, 2**16))
        rng = np.random.default_rng(seed)
        values = np.asarray(rng.standard_normal(shape)).astype(np.float32)
        flat = values.reshape(-1)
        specials = np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0], np.float32)
        specials = np.concatenate([specials, np.array([0x7FA00001, 0xFF812345], np.uint32).view(np.float32)])
        picks = rng.random(flat.size) < 0.3
        flat[picks] = rng.choice(specials, int(picks.sum()))
        with np.errstate(invalid="ignore"):
            return values.astype(dtype)
    if kind == "scaled":
        scale = draw(st.sampled_from([1e-3, 1.0, 100.0, 6e4]))
        seed = draw(st.integers(0, 2**16))
        with np.errstate(over="ignore"):  # float16 overflows to ±inf, as it would on a device
            return np.asarray(np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)
    return draw(hnp.arrays(dtype, shape, elements=st.floats(width=width, allow_nan=not finite,
                                                            allow_infinity=not finite)))


def same_values(actual: np.ndarray, expected: torch.Tensor, nan_payloads: bool = True) -> None:
    """The numpy decoder's array holds the torch decoder's values: the same shape and bits (a bfloat16 tensor as
    the float32 values it stands for); NaN where torch has NaN, with the same payload unless ``nan_payloads`` is off."""
    if expected.dtype == torch.bfloat16:
        expected = expected.float()
    reference = expected.numpy()
    assert actual.dtype == reference.dtype and actual.shape == reference.shape
    if not nan_payloads and actual.dtype.kind == "f":
        nan = np.isnan(reference)
        assert np.array_equal(np.isnan(actual), nan)
        actual, reference = actual[~nan], reference[~nan]
    assert actual.tobytes() == reference.tobytes()


def both(action_torch, action_numpy):
    """The results of both actions, or the message of the CodecError both raise (the same one, or the test fails)."""
    try:
        expected = action_torch()
    except CodecError as error:
        with pytest.raises(CodecError) as caught:
            action_numpy()
        assert type(caught.value) is type(error) and str(caught.value) == str(error)
        return None
    return expected, action_numpy()


def check_frames_decode_alike(frame: bytes, nan_payloads: bool) -> None:
    """Both decoders read ``frame`` (torch-made or numpy-made) to the same values."""
    same_values(device.decode(frame), decode(frame), nan_payloads)


# ---- encoding: the same bytes ----------------------------------------------------------------------------------------

@SOME
@given(spec=st.sampled_from(SPECS), x=arrays())
@example(spec="fp16", x=np.array([np.nan, -np.nan, np.inf, -0.0, 65519.0, 1e-8, 3e-8], np.float32))
@example(spec="fp16", x=np.array([1.0, 65504.0, 65520.0], np.float32))  # refused: 65520 rounds to inf
@example(spec="bf16", x=np.array([np.nan, -np.nan, 3.38e38, -np.inf, 1e-40, 1.00390625], np.float32))
@example(spec="bf16", x=np.array([3.4028235e38], np.float32))  # refused: rounds to inf
@example(spec="int4:token", x=np.zeros((2, 3), np.float32))
@example(spec="int3:axis=2", x=np.zeros((4,), np.float32))
@example(spec="int8", x=np.array([1.0, np.nan], np.float32))
@example(spec="int2+ans", x=np.full((3, 3), 7.0, np.float32))
def test_numpy_encoder_writes_the_torch_encoders_bytes(spec, x):
    """Every spec, float32 arrays of every layout (N×C×H×W, N×T×D, vectors, empty, 0-d, 5-d), NaN, ±inf,
    overflowing and constant values: the same frame, or the same refusal."""
    x = x.copy()
    if x.size % 3 == 0:  # some NaNs signalling, with a payload
        x[np.isnan(x)] = np.array(0x7FA00001, np.uint32).view(np.float32)
    result = both(lambda: parse_codec(spec).encode(torch.from_numpy(x.copy())),
                  lambda: device.parse_codec(spec).encode(x))
    if result is not None:
        expected, actual = result
        assert actual == expected
        check_frames_decode_alike(expected, nan_payloads=not spec.startswith("fp16"))


@FEW
@given(spec=st.sampled_from(SPECS), dtype=st.sampled_from([np.float16, np.float64]), data=st.data())
def test_numpy_encoder_matches_on_float16_and_float64_arrays(spec, dtype, data):
    x = data.draw(arrays(dtype))
    result = both(lambda: parse_codec(spec).encode(torch.from_numpy(x.copy())),
                  lambda: device.parse_codec(spec).encode(x))
    if result is not None:
        expected, actual = result
        if dtype == np.float64 and spec.startswith("bf16") and np.isnan(x).any():
            # PyTorch writes a float64 NaN as bfloat16 0x7FC0 or 0xFFFF, by its position in a vector loop
            same_values(device.decode(actual), decode(expected), nan_payloads=False)
        else:
            assert actual == expected
        check_frames_decode_alike(expected, nan_payloads=dtype != np.float16 and not spec.startswith("fp16"))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("spec", ["fp16", "bf16", "bf16+zstd"])
def test_nan_inf_and_rounding_edges_cast_alike_from_every_float_dtype(spec, dtype):
    """Quiet and signalling NaNs of both signs, infinities, signed zeros, subnormals and ties: the same bytes
    (but for a float64 NaN cast to bf16, which PyTorch writes by its position in a vector loop)."""
    edges = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-8, 3e-8, 6e-5, 1.00048828125, 1.0009765625,
                      1.00390625, 1.01171875, -2.5, 2049.0, 60000.0] * 3, np.float64)  # ties, below float16's max
    x = edges.astype(dtype)
    signalling = (np.array([0x7C01, 0xFE01], np.uint16).view(np.float16) if dtype == np.float16 else
                  np.array([0x7FA00001, 0xFF812345], np.uint32).view(np.float32))
    with np.errstate(invalid="ignore"):
        x[:2] = signalling.astype(dtype)
    expected = parse_codec(spec).encode(torch.from_numpy(x.copy()))
    actual = device.parse_codec(spec).encode(x)
    if dtype == np.float64 and spec.startswith("bf16"):
        same_values(device.decode(actual), decode(expected), nan_payloads=False)
    else:
        assert actual == expected
    check_frames_decode_alike(expected, nan_payloads=spec.startswith("bf16") and dtype != np.float16)


@FEW
@given(spec=st.sampled_from(SPECS),
       dtype=st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.int64, np.bool_]), data=st.data())
def test_integer_and_bool_arrays_cross_every_codec_as_torch_sends_them(spec, dtype, data):
    x = data.draw(hnp.arrays(dtype, st.sampled_from(SHAPES)))
    expected = parse_codec(spec).encode(torch.from_numpy(x.copy()))
    assert device.parse_codec(spec).encode(x) == expected
    same_values(device.decode(expected), decode(expected))


def test_big_endian_and_strided_arrays_are_sent_as_their_values():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for view in (x.astype(">f4"), x[:, ::2, 1:], np.asfortranarray(x)):
        for spec in ("fp32", "fp16+zstd", "int4:channel"):
            assert device.parse_codec(spec).encode(view) == \
                parse_codec(spec).encode(torch.from_numpy(np.ascontiguousarray(view, dtype=np.float32)))


# ---- calibration: the same ranges and models, the same bytes ----------------------------------------------------------

@FEW
@given(spec=st.sampled_from(CALIBRATED), shape=st.sampled_from([(6, 3, 4, 4), (5, 7, 6), (8, 5)]),
       seed=st.integers(0, 2**16))
def test_calibrated_codecs_calibrate_and_encode_alike(spec, shape, seed):
    """Calibrated on the same sample, both codecs record the same ranges (and ANS counts); a numpy codec read from
    the torch codec's record encodes new values, some outside the ranges, to the same bytes."""
    rng = np.random.default_rng(seed)
    sample = (rng.standard_normal(shape) * rng.uniform(0.1, 3, shape[1])[None, :, *([None] * (len(shape) - 2))]
              ).astype(np.float32)
    result = both(lambda: parse_codec(spec).calibrate(torch.from_numpy(sample)),
                  lambda: device.parse_codec(spec).calibrate(sample))
    if result is None:
        return
    codec, numpy_codec = result
    assert numpy_codec.to_json() == codec.to_json()
    record = json.loads(json.dumps(codec.to_json()))  # as a manifest carries it
    from_record = device.codec_from_json(record)
    assert from_record == numpy_codec and codec_from_json(record) == codec
    x = (rng.standard_normal(shape) * 4).astype(np.float32)  # the same shape: int6:axis=0 ranges are per example
    frame = codec.encode(torch.from_numpy(x))
    assert from_record.encode(x) == frame
    check_frames_decode_alike(frame, nan_payloads=True)


def test_a_given_range_encodes_alike():
    images = np.random.default_rng(1).random((2, 3, 8, 8)).astype(np.float32)
    for spec in ("uint8", "int4+zstd", "int8+ans"):
        codec, numpy_codec = parse_codec(spec).with_range(0.0, 1.0), device.parse_codec(spec).with_range(0.0, 1.0)
        assert numpy_codec.to_json() == codec.to_json()
        assert numpy_codec.encode(images) == codec.encode(torch.from_numpy(images))
    with pytest.raises(CodecError, match="takes no range"):
        device.parse_codec("int8:channel").with_range(0.0, 1.0)


def test_a_codec_calibrated_on_other_channels_is_refused_alike():
    codec = parse_codec("int8:channel").calibrate(torch.randn(4, 3, 2, 2))
    x = np.zeros((1, 5, 2, 2), np.float32)
    assert both(lambda: codec.encode(torch.from_numpy(x)), lambda: device.codec_from_json(codec.to_json()).encode(x)) \
        is None


# ---- decoding: torch-made frames, float_dtype, and untrusted bytes ------------------------------------------------------

@FEW
@given(spec=st.sampled_from(SPECS), frame_dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16,
                                                                 torch.float64]),
       out=st.sampled_from([None, np.float16, np.float32, np.float64]), data=st.data())
def test_torch_frames_of_every_float_dtype_decode_alike_into_every_float_dtype(spec, frame_dtype, out, data):
    """Frames only torch can write (bfloat16 tensors) and decodes into another float dtype: the torch decoder's
    values, a bfloat16 tensor read as the float32 values it holds."""
    x = data.draw(arrays(np.float64, finite=spec.startswith(("int", "uint"))))
    try:
        frame = parse_codec(spec).encode(torch.from_numpy(x).to(frame_dtype))
    except CodecError:
        return
    torch_out = None if out is None else getattr(torch, np.dtype(out).name)
    expected = decode(frame, float_dtype=torch_out)
    if out is None and frame_dtype == torch.bfloat16:
        out = np.float32  # numpy has no bfloat16
    through_half = frame_dtype == torch.float16 or spec.startswith("fp16") or out == np.float16
    same_values(device.decode(frame, float_dtype=out), expected if out is None else expected.to(torch_out),
                nan_payloads=not through_half)
    numpy_cost, torch_cost = device.decode_cost(frame, out), decode_cost(frame, torch_out)
    if frame_dtype != torch.bfloat16 or torch_out is not None:
        assert numpy_cost == torch_cost


def frames() -> list[bytes]:
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((2, 4, 3, 3)).astype(np.float32))
    return [parse_codec(spec).encode(x) for spec in ("fp32", "fp16+zstd", "int4:channel", "int8+zstd", "int3+ans")]


@SOME
@given(which=st.integers(0, 4), position=st.integers(0, 400), byte=st.integers(0, 255), cut=st.integers(0, 400),
       limit=st.sampled_from([64, 400, 2**20]))
def test_corrupt_frames_are_refused_with_the_torch_decoders_message(which, position, byte, cut, limit):
    """The same header checks, size checks and limits: a corrupt or truncated frame gives both decoders the same
    PayloadError, or both the same values."""
    frame = bytearray(frames()[which])
    frame[position % len(frame)] = byte
    data = bytes(frame[:max(cut, 3)]) if cut < len(frame) else bytes(frame)
    limits = DecodeLimits(limit)
    into = torch.float32 if len(data) > 4 and data[4] == 2 else None  # numpy reads bfloat16 frames as float32
    try:
        expected = decode(data, limits, into)
    except PayloadError as error:
        with pytest.raises(PayloadError) as caught:
            device.decode(data, limits)
        assert str(caught.value) == str(error)
        return
    same_values(device.decode(data, limits), expected, nan_payloads=which != 1)
    assert device.decode_cost(data, limits=limits) == decode_cost(data, into, limits)


def test_ans_symbols_beyond_the_bit_width_are_refused_alike():
    """A frame whose ANS model codes symbols a 3-bit quantizer cannot have made (written from the layout)."""
    symbols = np.array([1, 2, 12, 3], np.uint8)
    counts = np.ones(16, np.uint16)
    body = entropy.ans_encode(symbols, 0, counts)
    stages = [QuantRecord(3, None, np.zeros(1, np.float32), np.ones(1, np.float32)),
              AnsRecord("adaptive", 0, counts, len(body) // 4)]
    data = layout.write(Frame(layout.WIRE_DTYPES[0], (4,), stages, body))
    with pytest.raises(PayloadError, match="symbols exceed 3 bits") as torch_caught:
        decode(data)
    with pytest.raises(PayloadError) as caught:
        device.decode(data)
    assert str(caught.value) == str(torch_caught.value)


def test_oversized_declarations_are_refused_before_allocating():
    """A header declaring a huge tensor or zstd output is refused by its header alone, as torch refuses it."""
    x = np.zeros((4, 4), np.float32)
    for spec in ("fp32", "fp32+zstd", "int8:channel+zstd", "int4+ans"):
        frame = device.parse_codec(spec).encode(x)
        with pytest.raises(PayloadError, match="over the decode limit") as caught:
            device.decode(frame, DecodeLimits(32))
        with pytest.raises(PayloadError) as torch_caught:
            decode(frame, DecodeLimits(32))
        assert str(caught.value) == str(torch_caught.value)
    with pytest.raises(CodecError, match="float_dtype"):
        device.decode(frames()[0], float_dtype=np.int32)


# ---- several tensors -----------------------------------------------------------------------------------------------

def test_pack_and_unpack_bundle_alike():
    rng = np.random.default_rng(3)
    tensors = [rng.standard_normal((1, 4, 3, 3)).astype(np.float32), rng.standard_normal((1, 6, 8)).astype(np.float32),
               np.arange(5, dtype=np.int64)]
    specs = ["int4:channel+ans", "fp16+zstd", "fp32"]
    numpy_payload = device.pack([device.parse_codec(s).encode(t) for s, t in zip(specs, tensors, strict=True)])
    torch_payload = pack([parse_codec(s).encode(torch.from_numpy(t)) for s, t in zip(specs, tensors, strict=True)])
    assert numpy_payload == torch_payload
    for actual, expected in zip(device.unpack(torch_payload), unpack(torch_payload), strict=True):
        same_values(actual, expected)
    assert device.unpack_cost(torch_payload) == unpack_cost(torch_payload)
    for limits, max_frames in ((DecodeLimits(300), 64), (DecodeLimits(), 2)):
        with pytest.raises(PayloadError) as torch_caught:
            unpack(torch_payload, limits, max_frames)
        with pytest.raises(PayloadError) as caught:
            device.unpack(torch_payload, limits, max_frames)
        assert str(caught.value) == str(torch_caught.value)


# ---- no torch ------------------------------------------------------------------------------------------------------

BLOCKED = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None

sys.meta_path.insert(0, NoTorch())
import numpy as np
import edgesplit.device as device

x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
for spec in SPECS:
    codec = device.parse_codec(spec)
    if codec.needs_calibration:
        codec = codec.calibrate(x)
    y = device.decode(codec.encode(x))
    assert y.shape == x.shape and y.dtype == np.float32, spec
    if spec in ("fp32", "zstd"):
        assert np.array_equal(y, x)
assert [a.shape for a in device.unpack(device.pack([device.parse_codec("fp16").encode(x)] * 2))] == [x.shape] * 2
print(sorted(m for m in sys.modules if m.startswith(("torch", "edgesplit"))))
"""


def test_the_device_package_imports_and_codes_without_torch():
    """In a fresh interpreter where ``import torch`` raises, ``edgesplit.device`` imports, encodes and decodes every
    spec; nothing of torch and none of edgesplit's torch modules gets loaded."""
    script = f"SPECS = {CALIBRATED!r}\n" + BLOCKED
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().replace("'", '"'))
    assert not [m for m in loaded if m.startswith("torch")]
    assert set(loaded) <= {"edgesplit", "edgesplit.errors", "edgesplit.codecs", "edgesplit.codecs.layout",
                           "edgesplit.codecs.grammar", "edgesplit.codecs.quantize", "edgesplit.codecs.entropy",
                           "edgesplit.device", "edgesplit.device.codecs"}, loaded


def test_the_blocker_blocks():
    """The import blocker above does make ``import torch`` fail (so the test above can fail)."""
    script = BLOCKED.split("import numpy")[0] + "import torch\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "torch is blocked" in done.stderr
