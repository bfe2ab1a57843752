"""Decoding stays within its own limit: ``DecodeLimits.max_decoded_bytes`` bounds the most a decode holds at once
(the tensor and every intermediate), measured for real, and a decode that costs more than a thread hop never runs
on the server's event loop, whatever the size of the frame that declares it.

Peaks are measured in a fresh process (VmHWM from /proc after resetting it through /proc/self/clear_refs, with
glibc's mmap threshold pinned so that freed buffers leave the resident set), which sees every allocation: numpy's,
torch's, zstd's and the ANS coder's.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import zstandard
from PIL import Image

from edgesplit.codecs import DecodeLimits, PayloadError, decode, decode_cost, pack, parse_codec, unpack, unpack_cost
from edgesplit.codecs.frame import unpack_bytes
from edgesplit.compress.pictures import decode_picture, encode_picture
from edgesplit.runtime.deployment import PictureCodec, load_deployment
from edgesplit.runtime.engine import Engine, ServerLimits, _decodes_fast
from edgesplit.runtime.server import ServerThread, decode_limits
from edgesplit.runtime.wire import Request, Response, WireError, new_request_id
from runtime_plans import make_plan

MiB = 1 << 20
LIMIT = 16 * MiB  # the limit the measured decodes run under
SLACK = MiB // 2  # what a decode may hold beyond its accounted buffers: runs of 8,192 values, the ANS model
_SPECS = ["fp32", "zstd", "fp16", "bf16+zstd", "int8:channel", "int3+zstd", "int4:channel+ans", "int2+ans"]


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def handmade(dtype_code: int, shape: list[int], stages: list[bytes] = (), body: bytes = b"") -> bytes:
    """A frame from the layout in docs/codecs.md (dtype 0 float32, 1 float16, 3 float64; stage 1 cast, 3 zstd)."""
    return (b"ESC" + bytes([1, dtype_code, len(shape), len(stages)]) + b"".join(varint(d) for d in shape)
            + b"".join(stages) + body)


def zstd_zeros(size: int) -> bytes:
    return zstandard.ZstdCompressor(level=1).compress(bytes(size))  # declares its size: a few kB for 64 MiB


# ---- what a decode holds, from the header ----------------------------------------------------------------------------

def test_the_cost_of_a_decode_is_read_from_the_header_and_counts_every_buffer():
    x = torch.randn(1, 8, 32, 32).relu()  # 32 KiB of float32
    for spec in ("fp32", "zstd", "fp16", "bf16+zstd", "int8", "int3:channel+zstd", "int4"):
        cost = decode_cost(parse_codec(spec).encode(x))  # quantized, cast and zstd data decode inside the tensor
        assert (cost.peak_bytes, cost.tensor_bytes, cost.ans_symbols) == (32768, 32768, 0), spec
        assert cost.converted_values == (0 if spec in ("fp32", "zstd") else 8192)
    frame = parse_codec("int4:channel+ans").encode(x)
    cost = decode_cost(frame)  # + the coder's copy of its data: the ANS words, the frame's body
    assert 32768 < cost.peak_bytes < 32768 + len(frame) and cost.ans_symbols == 8192
    # a float64 frame decoded into float32: the zstd output (8 bytes a value) no longer fits inside the tensor
    wide = parse_codec("zstd").encode(x.double())
    assert decode_cost(wide).peak_bytes == 65536
    assert decode_cost(wide, torch.float32).peak_bytes == 32768 + 65536
    assert decode_cost(parse_codec("fp32").encode(x.half()), torch.float32).peak_bytes == 32768
    # a pack: the tensors before a frame stay while it decodes
    both = pack([parse_codec("fp32").encode(x), frame])
    assert unpack_cost(both).peak_bytes == 32768 + cost.peak_bytes
    assert unpack_cost(both).tensor_bytes == 65536


def test_a_33_byte_frame_declaring_64_mib_is_refused_under_a_smaller_limit():
    frame = parse_codec("int2+ans").encode(torch.zeros(1, 1 << 24))  # 16 M symbols coded in no words at all
    assert len(frame) < 40
    assert decode_cost(frame, limits=DecodeLimits(1 << 30)).tensor_bytes == 64 * MiB
    with pytest.raises(PayloadError, match="over the decode limit of 16,777,216"):
        decode(frame, DecodeLimits(LIMIT))


@pytest.mark.parametrize("case", ["raw", "cast", "quantized", "zstd", "ans", "ans-copy", "float_dtype"])
def test_tiny_frames_declaring_more_than_the_limit_are_refused(case):
    limits = DecodeLimits(LIMIT)
    n = LIMIT // 4 + 1  # one float32 value too many
    quant = bytes([2, 4, 255]) + varint(1) + np.array([0, 1], "<f4").tobytes()
    frame, kwargs, match = {
        "raw": (handmade(0, [n], [], bytes(16)), {}, "over the decode limit"),
        "cast": (handmade(0, [n], [bytes([1, 1])], bytes(16)), {}, "over the decode limit"),
        "quantized": (handmade(0, [n], [quant], bytes(16)), {}, "over the decode limit"),
        "zstd": (handmade(0, [1 << 24], [bytes([3]) + varint(64 * MiB)], zstd_zeros(64 * MiB)), {},
                 "over the decode limit"),
        "ans": (parse_codec("int2+ans").encode(torch.zeros(1, n)), {}, "over the decode limit"),
        # the tensor alone fits; with the ANS coder's copy of the data it does not
        "ans-copy": (parse_codec("int8+ans").encode(torch.rand(1, 4, (LIMIT - 512) // 16)), {},
                     "for the ANS coder's copy of its data"),
        # a float16 frame fits as float16, not as the float32 the server decodes it into
        "float_dtype": (parse_codec("fp32").encode(torch.zeros(1, LIMIT // 2, dtype=torch.float16)),
                        {"float_dtype": torch.float32}, "float32 tensor"),
    }[case]
    with pytest.raises(PayloadError, match=match):
        decode(frame, limits, **kwargs)
    with pytest.raises(PayloadError, match=match):
        decode_cost(frame, limits=limits, **kwargs)


def test_a_cast_that_widens_is_refused_before_its_body_is_read():
    # a float16 tensor "cast" to float64: a body 4× the tensor (the old decoder took one twice the limit)
    n = LIMIT // 2
    frame = handmade(1, [n], [bytes([1, 3])], bytes(8 * n))
    with pytest.raises(PayloadError, match="casts only narrow"):
        decode(frame, DecodeLimits(LIMIT))
    # the legitimate direction: a float64 tensor sent as float16 decodes to float64, and that is what is counted
    x = torch.randn(1000, dtype=torch.float64)
    sent = parse_codec("fp16").encode(x)
    assert decode_cost(sent).peak_bytes == 8000
    with pytest.raises(PayloadError, match="over the decode limit of 7,999"):
        decode(sent, DecodeLimits(7999))
    torch.testing.assert_close(decode(sent, DecodeLimits(8000)), x.half().double(), rtol=0, atol=0)


def test_zstd_data_must_declare_their_size_and_decode_in_one_pass():
    x = torch.arange(4096, dtype=torch.float32)
    stage = bytes([3]) + varint(16384)
    undeclared = zstandard.ZstdCompressor(write_content_size=False).compress(x.numpy().tobytes())
    with pytest.raises(PayloadError, match="do not declare the size they decompress to"):
        decode(handmade(0, [4096], [stage], undeclared))
    # a frame that asks for a 128 MiB window and is cut short: zstd would buffer it; refused instead
    big_window = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters.from_level(
        3, window_log=27)).compress(x.numpy().tobytes())
    with pytest.raises(PayloadError, match="zstd"):
        decode(handmade(0, [4096], [stage], big_window[:-8]))
    torch.testing.assert_close(decode(handmade(0, [4096], [stage], big_window)), x, rtol=0, atol=0)
    second = zstandard.ZstdCompressor().compress(b"\0")  # a second zstd frame after the declared one
    with pytest.raises(PayloadError, match="more than the 16,384 bytes"):
        decode(handmade(0, [4096], [stage], big_window + second))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("spec", ["fp32", "zstd", "fp16", "bf16+zstd", "int4:channel", "int5+zstd", "int2+ans"])
def test_float_dtype_gives_what_a_cast_after_decoding_gives(dtype, spec):
    x = (torch.randn(2, 3, 50, 70) * 4).to(dtype)  # 21,000 values: several runs of the decoder
    frame = parse_codec(spec).encode(x)
    expected = decode(frame).float()
    got = decode(frame, float_dtype=torch.float32)
    assert got.dtype == torch.float32 and torch.equal(got.view(torch.int32), expected.view(torch.int32))
    got = unpack(pack([frame, frame]), float_dtype=torch.float32)
    assert all(torch.equal(t, expected) for t in got)


# Frames written by the encoder before decoding was reworked, and the float32 bytes the old decoder made of them
# (x = arange(24) / 7 - 1, shape 2×3×4): the encoder is unchanged, and old frames decode to the same values.
_WRITTEN_BEFORE = {
    "fp16": ("45534301000301020304010100bcdbbab7b992b8dbb692b492b0000092309234db369238b739db3a003c923c253db73d493edb"
             "3e6e3f004049409240",
             "000080bf00605bbf00e036bf004012bf0060dbbe004092be004012be000000000040123e0040923e0060db3e0040123f00e0363f"
             "00605b3f0000803f0040923f00a0a43f00e0b63f0020c93f0060db3f00c0ed3f000000400020094000401240"),
    "int4:axis=1+zstd": (  # written as int4:channel, whose axis for 3-D tensors is now the last
        "4553430100030202030402040103000080bfb66ddbbe2849123e2449923fb66ddb3f25491240030c28b52ffd200c610000012301230"
        "123cdefcdefcdef",
        "000080bfb76d5bbf6edb36bf254912bfb66ddbbe244992be244912be000000002849123e2649923eb96ddb3e2649123f6ddb363fb66d"
        "5b3fffff7f3f2449923f4892a43f6ddbb63f9224c93fb66ddb3fdcb6ed3f000000409324094025491240"),
    "int2+ans": ("455343010003020203040202ff01000080bf254912400400000404000800080004000364f717e19883052409000000",
                 "000080bf000080bf000080bf000080bf350cc33d350cc33d350cc33d350cc33d350cc33d350cc33d350cc33d350cc33d8761"
                 "983f8761983f8761983f8761983f8761983f8761983f8761983f8761983f25491240254912402549124025491240"),
    "bf16": ("45534301000301020304010280bf5bbf37bf12bfdbbe92be12be0000123e923edb3e123f373f5b3f803f923fa53fb73fc93fdb3f"
             "ee3f004009401240",
             "000080bf00005bbf000037bf000012bf0000dbbe000092be000012be000000000000123e0000923e0000db3e0000123f0000373f"
             "00005b3f0000803f0000923f0000a53f0000b73f0000c93f0000db3f0000ee3f000000400000094000001240"),
    "int3:axis=2": (
        "4553430100030102030402030204000080bfb76d5bbf6edb36bf244912bfdcb6ed3f0000004092240940254912400002496db924db6fff",
        "000080bfb76d5bbf6edb36bf244912bf9d8217bfa7e0e5be16bc9cbe022f27bea9e0653ee614bc3ebb9c023f062f273f8ef5213fd687"
        "463f1f1a6b3f35d6873f2a78b93f4ec1cb3f720ade3f9853f03fdcb6ed3f000000409224094025491240"),
}


@pytest.mark.parametrize("spec", list(_WRITTEN_BEFORE))
def test_frames_written_before_encode_and_decode_as_they_did(spec):
    frame, values = (bytes.fromhex(h) for h in _WRITTEN_BEFORE[spec])
    x = (torch.arange(24, dtype=torch.float32) / 7 - 1).reshape(2, 3, 4)
    assert parse_codec(spec).encode(x) == frame
    decoded = decode(frame)
    assert decoded.shape == (2, 3, 4) and decoded.numpy().tobytes() == values


# ---- what a decode really holds, measured ----------------------------------------------------------------------------

_MEASURE = r'''
import json, sys
import torch
torch.set_num_threads(1)
from edgesplit.codecs import DecodeLimits, decode, unpack
from edgesplit.runtime.deployment import PictureCodec

def field(key):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key))

def measure(action):
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak resident set starts again from the current one
    base = field("VmRSS")
    try:
        result, error = action(), None
    except Exception as caught:
        result, error = None, f"{type(caught).__name__}: {caught}"
    size = sum(t.numel() * t.element_size() for t in (result if isinstance(result, list) else [result])
               if isinstance(t, torch.Tensor))
    return {"growth": field("VmHWM") - base, "bytes": size, "error": error}

warm = open(sys.argv[2], "rb").read()  # every kind of frame, small: lazy imports and first-call set-up
unpack(warm), unpack(warm, float_dtype=torch.float32)
PictureCodec("png", ()).decode(open(sys.argv[3], "rb").read(), (2, 3, 16, 16), 64)
results = {}
for name, case in json.load(open(sys.argv[1])).items():
    data = open(case["file"], "rb").read()
    limits = DecodeLimits(case["limit"])
    float_dtype = getattr(torch, case["float_dtype"]) if case.get("float_dtype") else None
    if case["how"] == "decode":
        action = lambda: decode(data, limits, float_dtype)
    elif case["how"] == "unpack":
        action = lambda: unpack(data, limits, float_dtype=float_dtype)
    elif case["how"] == "clone":  # a decoder that holds twice what it returns: the measure must see it
        action = lambda: decode(data, limits).clone()
    else:
        action = lambda: PictureCodec("png", ()).decode(data, tuple(case["shape"]), 64, limits)
    results[name] = measure(action)
    del action
print(json.dumps(results))
'''


def _measure(tmp_path: Path, cases: dict[str, dict]) -> dict[str, dict]:
    """Decode each case in a fresh process and return its peak growth of the resident set, bytes and error."""
    spec = {}
    for name, case in cases.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(case.pop("data"))
        spec[name] = {**case, "file": str(path)}
    (tmp_path / "cases.json").write_text(json.dumps(spec))
    x = torch.randn(1, 4, 4096)
    warm, pictures = tmp_path / "warm.bin", tmp_path / "warm-pictures.bin"
    warm.write_bytes(pack([parse_codec(spec).encode(t) for spec in _SPECS for t in (x, x.half(), x.double())]))
    pictures.write_bytes(pack([encode_picture(torch.rand(3, 16, 16), {"format": "PNG"}),
                               encode_picture(torch.rand(3, 16, 16), {"format": "JPEG", "progressive": True})]))
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}  # freed buffers leave the RSS
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(tmp_path / "cases.json"), str(warm), str(pictures)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _at_limit(spec: str, dtype: torch.dtype = torch.float32, float_dtype: torch.dtype | None = None,
              fill: str = "randn") -> bytes:
    """A frame of ``spec`` whose decode holds as close to LIMIT as its codec allows, without going over."""
    out_size = (float_dtype or dtype).itemsize
    count = LIMIT // out_size // 64 * 64
    while True:
        x = torch.zeros(1, 64, count // 64) if fill == "zeros" else torch.randn(1, 64, count // 64).relu()
        frame = parse_codec(spec).encode(x.to(dtype))
        peak = decode_cost(frame, float_dtype, DecodeLimits(1 << 40)).peak_bytes
        if peak <= LIMIT:
            assert peak > 0.9 * LIMIT
            return frame
        count -= (peak - LIMIT) // out_size // 64 * 64 + 64 * 64


@pytest.mark.slow
def test_measured_peaks_stay_within_the_limit(tmp_path):
    """Every kind of frame at the limit decodes holding at most the limit (and a fixed slack), for real; the
    old decoder held 1.5–4.5× (a 33-byte int2+ans frame of 64 MiB peaked at 195 MiB)."""
    fp32 = _at_limit("fp32")
    legit = {
        "fp32": {"data": fp32, "how": "decode"},
        "zstd": {"data": _at_limit("zstd"), "how": "decode"},
        "fp16": {"data": _at_limit("fp16"), "how": "decode"},
        "int8:channel": {"data": _at_limit("int8:channel"), "how": "decode"},
        "int3+zstd": {"data": _at_limit("int3+zstd"), "how": "decode"},
        "int4:axis=1+ans": {"data": _at_limit("int4:axis=1+ans"), "how": "decode"},  # 64 ranges (channel: 1 a D)
        "int2+ans of zeros": {"data": _at_limit("int2+ans", fill="zeros"), "how": "decode"},  # a few dozen bytes
        "float64 sent as bf16+zstd": {"data": _at_limit("bf16+zstd", torch.float64), "how": "decode"},
        "float16 into float32": {"data": _at_limit("zstd", torch.float16, torch.float32), "how": "decode",
                                 "float_dtype": "float32"},
        "a pack of two": {"data": pack([parse_codec("int4").encode(torch.randn(1, 4, LIMIT // 32)),
                                        parse_codec("fp16").encode(torch.randn(1, 4, LIMIT // 32).half())]),
                          "how": "unpack", "float_dtype": "float32"},
        "control: decode then clone": {"data": fp32, "how": "clone"},
    }
    accounted = {name: (unpack_cost(case["data"], float_dtype=torch.float32) if case["how"] == "unpack" else
                        decode_cost(case["data"], getattr(torch, case.get("float_dtype", ""), None))).peak_bytes
                 for name, case in legit.items()}
    results = _measure(tmp_path, {name: {**case, "limit": LIMIT} for name, case in legit.items()})
    for name, result in results.items():
        assert result["error"] is None, (name, result)
        assert result["bytes"] > 0.85 * LIMIT, (name, result)
        assert result["growth"] > 0.85 * result["bytes"], (name, result)  # the measure sees the tensor itself
        if name.startswith("control"):
            assert result["growth"] > LIMIT + 4 * SLACK, result  # ... and a decoder that holds twice as much
        else:  # what the header said the decode would hold, and no more
            assert result["growth"] <= accounted[name] + SLACK, (name, accounted[name], result)
            assert accounted[name] <= LIMIT, name


@pytest.mark.slow
def test_hostile_frames_are_refused_before_allocating(tmp_path):
    n = LIMIT // 4  # a float32 tensor of exactly the limit
    window = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters.from_level(
        1, window_log=27)).compress(np.random.default_rng(0).integers(0, 4, 8 * MiB, dtype=np.uint8).tobytes())
    hostile = {
        "raw, truncated body": handmade(0, [n], [], bytes(16)),
        "zstd bomb declaring 64 MiB": handmade(0, [1 << 24], [bytes([3]) + varint(64 * MiB)], zstd_zeros(64 * MiB)),
        "zstd without a declared size": handmade(4, [8 * MiB], [bytes([3]) + varint(8 * MiB)],
                                                 zstandard.ZstdCompressor(write_content_size=False).compress(
                                                     bytes(8 * MiB))),
        "zstd with a 128 MiB window, cut short": handmade(4, [8 * MiB], [bytes([3]) + varint(8 * MiB)], window[:-64]),
        "ans declaring 64 MiB": parse_codec("int2+ans").encode(torch.zeros(1, 1 << 24)),
        "ans whose coder copy goes over": parse_codec("int8+ans").encode(torch.rand(1, 4, (LIMIT - 512) // 16)),
        "float16 cast to float64": handmade(1, [n], [bytes([1, 3])], bytes(8 * n)),
    }
    cases = {name: {"data": data, "how": "decode", "limit": LIMIT} for name, data in hostile.items()}
    results = _measure(tmp_path, cases)
    for name, result in results.items():
        assert result["error"] and result["error"].startswith("PayloadError"), (name, result)
        assert result["growth"] < SLACK, (name, result)


@pytest.mark.slow
def test_pictures_decode_within_the_limit_they_are_checked_against(tmp_path):
    rng = np.random.default_rng(0)
    photo = torch.from_numpy(rng.random((3, 768, 768), dtype=np.float32))
    shape = (4, 3, 768, 768)
    progressive = pack([encode_picture(photo, {"format": "JPEG", "quality": 90, "progressive": True})] * 4)
    rgba = io.BytesIO()  # a PNG in another mode than the model takes: Pillow converts it
    Image.fromarray((rng.random((768, 768, 4)) * 255).astype(np.uint8), "RGBA").save(rgba, format="PNG")
    pictures = {"progressive JPEG": progressive, "RGBA PNG": pack([rgba.getvalue()] * 4)}
    cases = {}
    for name, payload in pictures.items():
        held = PictureCodec.held_bytes(unpack_bytes(payload), shape)
        cases[name] = {"data": payload, "how": "pictures", "shape": list(shape), "limit": held}
    results = _measure(tmp_path, cases)
    for name, result in results.items():
        assert result["error"] is None, (name, result)
        assert result["bytes"] == 4 * 3 * 768 * 768 * 4
        assert result["bytes"] * 0.9 < result["growth"] <= cases[name]["limit"], (name, result)


# ---- pictures --------------------------------------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_a_png_with_inflating_metadata_is_refused_before_pillow_reads_it():
    plain = encode_picture(torch.rand(1, 32, 32), {"format": "PNG"})
    text = zlib.compress(bytes(MiB - 100), 9)  # Pillow would hold 60 MB of text for 60 kB of file
    bomb = plain[:33] + b"".join(_png_chunk(b"zTXt", b"k%d\0\0" % i + text) for i in range(60)) + plain[33:]
    assert len(bomb) < 100_000
    with pytest.raises(ValueError, match="compressed zTXt chunk"):
        decode_picture(bomb, (1, 32, 32))
    profile = plain[:33] + _png_chunk(b"iCCP", b"icc\0\0" + text) + plain[33:]
    with pytest.raises(ValueError, match="compressed iCCP chunk"):
        decode_picture(profile, (1, 32, 32))
    assert decode_picture(plain, (1, 32, 32)).shape == (1, 32, 32)


def test_pictures_over_the_decode_limit_are_refused_unopened():
    codec = PictureCodec("png", (("format", "PNG"),))
    images = torch.rand(3, 1, 64, 64)
    payload = codec.encode(images)
    held = PictureCodec.held_bytes(unpack_bytes(payload), (1, 1, 64, 64))
    assert held > 3 * 64 * 64 * 4
    with pytest.raises(WireError, match=f"over the decode limit of {held - 1:,}"):
        codec.decode(payload, (1, 1, 64, 64), 8, DecodeLimits(held - 1))
    torch.testing.assert_close(codec.decode(payload, (1, 1, 64, 64), 8, DecodeLimits(held)),
                               (images * 255).round() / 255, rtol=0, atol=1e-7)


# ---- the event loop --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    plan = make_plan(tmp_path_factory.mktemp("decode-limits"), "small_cnn", routes=[
        (1, 10, {"cut_index": 2, "codec": "int2+ans"}), (10, 100, {"cut_index": 3, "codec": "fp32"}),
        (100, 1000, {"kind": "all-server", "label": "all on server (png input)"})])
    return load_deployment(plan)


def _request(deployment, route, payload: bytes) -> Request:
    return Request(request_id=new_request_id(), model_id=deployment.model_id, route_id=route.route_id,
                   payload=payload, width=route.width)


def _on_the_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


@contextlib.contextmanager
def _recording(*routes) -> list[tuple[int, bool]]:
    """Record (route id, whether on an event loop's thread) for every decode of ``routes`` (``Route.decode`` and
    the engine's ``Route.decoding`` both decode through the call ``decoding`` returns)."""
    seen: list[tuple[int, bool]] = []

    def recorder(route):
        original = route.decoding

        def decoding(*args):
            cost, decode = original(*args)

            def recorded():
                seen.append((route.route_id, _on_the_loop()))
                return decode()
            return cost, recorded
        return decoding

    for route in routes:
        route.decoding = recorder(route)
    try:
        yield seen
    finally:
        for route in routes:
            del route.decoding


def _threads_that_decode(engine: Engine, deployment, route, payloads: list[bytes]) -> list[bool]:
    """For each payload, whether ``Engine.decoded`` decoded it on the event loop's own thread."""
    async def run() -> None:
        for payload in payloads:
            await engine.decoded(_request(deployment, route, payload), route)

    with _recording(route) as seen:
        asyncio.run(run())
    return [on_loop for _, on_loop in seen]


def test_a_small_frame_that_declares_an_expensive_decode_leaves_the_event_loop(deployment):
    ans, fp32, png = deployment.routes
    engine = Engine([deployment], ServerLimits(decode=decode_limits([deployment], 64)))
    # the attack: 64 rows of zeros through int2+ans, under 100 bytes, 64 × the ANS symbols of one row
    shape = ans.sent_shapes[0]
    one_row = ans.encode([torch.randn(1, *shape[1:]).relu()])
    expensive = ans.encode([torch.zeros(64, *shape[1:])])
    assert len(expensive) < 100 < len(one_row)
    assert ans.decode_cost(expensive) > 60 * ans.decode_cost(one_row)
    assert not _decodes_fast(ans, expensive)
    # a plain copy of one row's features is cheap, 64 rows of it are not
    rows = fp32.sent_shapes[0][1:]
    cheap, copies = fp32.encode([torch.randn(1, *rows)]), fp32.encode([torch.randn(64, *rows)])
    assert _decodes_fast(fp32, cheap) and not _decodes_fast(fp32, copies)
    assert _threads_that_decode(engine, deployment, fp32, [cheap, copies, cheap]) == [True, False, True]
    assert _threads_that_decode(engine, deployment, ans, [expensive]) == [False]
    # pictures: judged by the rows they declare, not by their bytes
    one = png.encode([torch.zeros(1, *png.sent_shapes[0][1:])])
    many = png.encode([torch.zeros(64, *png.sent_shapes[0][1:])])
    assert len(many) < 64 * len(one)
    assert _decodes_fast(png, one) and not _decodes_fast(png, many)
    # headers that do not parse cost nothing to refuse, so they are refused on the loop
    assert ans.decode_cost(b"\x01\x05ESC\x09") == 0 and _decodes_fast(ans, b"garbage")


def test_a_real_server_answers_the_attack_off_its_event_loop(deployment):
    ans, fp32, _ = deployment.routes
    engine = Engine([deployment], ServerLimits(decode=decode_limits([deployment], 64)))
    cheap = fp32.encode([torch.randn(1, *fp32.sent_shapes[0][1:])])
    expensive = ans.encode([torch.zeros(64, *ans.sent_shapes[0][1:])])  # under 100 bytes
    token = "decode-limits-token-0123456789"
    with _recording(ans, fp32) as seen, ServerThread(engine, token=token) as server, \
            httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        for route, payload in [(fp32, cheap), (ans, expensive), (fp32, cheap)]:
            reply = http.post("/v1/infer", content=_request(deployment, route, payload).to_bytes())
            assert reply.status_code == 200, reply.text
            response = Response.from_bytes(reply.content)
            assert unpack(response.payload)[0].shape[0] == (64 if route is ans else 1)
    assert seen == [(fp32.route_id, True), (ans.route_id, False), (fp32.route_id, True)]
