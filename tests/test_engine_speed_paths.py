"""The engine's per-request savings keep its answers: a request's headers are parsed once (for the decode-cost
check and the decode together), result frames are written without building their headers each time, batched
answers equal lone ones, the GIL switch interval is lowered once the engine warms up, and PNG pictures travel as
standard PNGs that the server reads without Pillow (and any other PNG still through Pillow)."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import torch

from edgesplit.codecs import DecodeLimits, frame as frame_module, unpack
from edgesplit.compress import fastpng
from edgesplit.compress.pictures import decode_picture, encode_picture
from edgesplit.runtime import engine as engine_module
from edgesplit.runtime.deployment import load_deployment
from edgesplit.runtime.engine import Engine, ServerLimits
from edgesplit.runtime.wire import Request, Status, new_request_id
from runtime_plans import make_plan


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):  # noqa: ANN201
    plan = make_plan(tmp_path_factory.mktemp("speed"), "small_cnn",
                     routes=[(1, 10, {"cut_index": 3, "codec": "int8"}), (10, 100, {"cut_index": 3, "codec": "fp32"})],
                     shape=(1, 1, 8, 8))
    return load_deployment(plan)


def _frame(deployment, route, seed: int) -> bytes:  # noqa: ANN001
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return Request(new_request_id(), deployment.model_id, route.route_id, route.encode(route.device_side(x)),
                   route.width).to_bytes()


def test_a_request_frame_header_is_parsed_once(deployment, monkeypatch) -> None:
    int8 = next(r for r in deployment.routes if r.codecs and r.codecs[0].spec == "int8")
    reads, original = [], frame_module.read

    def counting(data, limits):  # noqa: ANN001, ANN202
        reads.append(len(data))
        return original(data, limits)

    async def main() -> list:
        engine = Engine([deployment], ServerLimits(max_batch=1))
        await engine.warm_up()
        reads.clear()
        monkeypatch.setattr(frame_module, "read", counting)
        try:
            return [await engine.handle(_frame(deployment, int8, seed)) for seed in range(3)]
        finally:
            await engine.close()

    responses = asyncio.run(main())
    assert [r.status for r in responses] == [Status.OK] * 3
    assert len(reads) == 3 * len(int8.codecs)  # one parse per frame: the cost check's headers are the decode's


def test_a_payload_over_the_limits_is_refused_with_the_decodes_message(deployment) -> None:
    fp32 = next(r for r in deployment.routes if r.codecs and r.codecs[0].spec == "fp32")
    payload = fp32.encode([torch.rand(4, *fp32.sent_shapes[0][1:])])
    small = DecodeLimits(max_decoded_bytes=64)
    cost, decode = fp32.decoding(payload, small, 64)
    assert cost == 0  # refused at once, on the event loop
    with pytest.raises(Exception) as refused:
        decode()
    with pytest.raises(Exception) as direct:
        fp32.decode(payload, small, 64)
    assert str(refused.value) == str(direct.value) and "decode limit" in str(refused.value)
    # within the limits: the cost decode_cost reports, and the tensors unpack gives
    cost, decode = fp32.decoding(payload, DecodeLimits(), 64)
    assert cost == fp32.decode_cost(payload) > 0
    assert torch.equal(decode()[0], unpack(payload, float_dtype=torch.float32)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.int64, torch.bool,
                                   torch.bfloat16])
def test_result_frames_are_the_fp32_codecs_bytes(dtype) -> None:
    for shape in [(1, 10), (20, 10), (3, 4, 5, 6), (0, 3), ()]:
        tensor = (torch.randn(shape) * 5).to(dtype)
        for variant in (tensor, tensor.transpose(0, -1) if tensor.dim() > 1 else tensor):
            assert engine_module._result_frame(variant) == engine_module._RESULT_CODEC.encode(variant.contiguous())


def test_batched_answers_equal_lone_answers_under_concurrent_clients(deployment) -> None:
    route = next(r for r in deployment.routes if r.codecs and r.codecs[0].spec == "fp32")
    frames = [_frame(deployment, route, seed) for seed in range(12)]

    async def main() -> tuple[list, list]:
        engine = Engine([deployment], ServerLimits(max_batch=32, max_wait_ms=50.0))
        await engine.warm_up()
        try:
            alone = [await engine.handle(f) for f in frames]
            retried = [Request.from_bytes(f) for f in frames]  # fresh ids: not answered from the dedup memory
            together = await asyncio.gather(*(engine.handle(Request(new_request_id(), r.model_id, r.route_id,
                                                                    r.payload, r.width).to_bytes())
                                              for r in retried))
            return alone, list(together)
        finally:
            await engine.close()

    alone, together = asyncio.run(main())
    assert {r.batch_size for r in alone} == {1}  # a lone request is never batched
    assert max(r.batch_size for r in together) > 1
    for one, many in zip(alone, together):
        assert one.status == many.status == Status.OK
        assert torch.allclose(unpack(one.payload)[0], unpack(many.payload)[0], rtol=1e-4, atol=1e-5)


# ---- PNG without Pillow ------------------------------------------------------------------------------------------


def _images(channels: int, height: int, width: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(channels * 1000 + height)
    noise = torch.rand(channels, height, width, generator=generator) * 1.4 - 0.2  # clipped at both ends
    ramp = torch.linspace(0, 1, height * width).reshape(1, height, width).expand(channels, -1, -1).contiguous()
    rows = torch.linspace(0, 1, height).reshape(1, height, 1).expand(channels, -1, width).contiguous()
    mixed = noise.clone()
    mixed[:, ::3] = torch.linspace(0, 1, width)
    mixed[:, 1::5] = 0.5
    return [noise, ramp, rows, mixed]


def _pixels(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28), (3, 17, 5), (1, 1, 1)])
def test_runtime_pngs_are_standard_and_read_without_pillow(shape, monkeypatch) -> None:
    from PIL import Image

    for image in _images(*shape):
        data = encode_picture(image, {"format": "PNG"})
        with Image.open(io.BytesIO(data), formats=("PNG",)) as opened:  # any PNG reader opens it
            read_back = np.asarray(opened.convert("L" if shape[0] == 1 else "RGB")).reshape(_pixels(image).shape)
        assert (read_back == _pixels(image)).all()
        expected = torch.from_numpy(_pixels(image).astype(np.float32) / 255).permute(2, 0, 1)
        with monkeypatch.context() as patched:  # the server's decode never opens Pillow for these
            patched.setattr(Image, "open", lambda *a, **k: pytest.fail("Pillow opened a runtime PNG"))
            assert torch.equal(decode_picture(data, shape), expected)


def test_other_pngs_still_decode_through_pillow_to_the_same_pixels() -> None:
    from PIL import Image

    for image in _images(3, 16, 16):
        pixels = _pixels(image)
        for options in ({}, {"optimize": True}, {"compress_level": 1}):
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG", **options)  # Pillow's filters: Paeth, Average too
            data = buffer.getvalue()
            got = fastpng.read_pixels(data, (3, 16, 16))
            assert got is None or (got == pixels).all()
            assert (_pixels(decode_picture(data, (3, 16, 16))) == pixels).all()
    good = encode_picture(_images(3, 16, 16)[0], {"format": "PNG"})
    data = bytearray(good)
    data[50] ^= 0xFF  # inside IDAT's data: its CRC no longer matches
    assert fastpng.read_pixels(bytes(data), (3, 16, 16)) is None
    assert fastpng.read_pixels(good[:-20], (3, 16, 16)) is None  # truncated: left to Pillow
    assert fastpng.read_pixels(good, (3, 16, 17)) is None  # another size: Pillow says which
    with pytest.raises(ValueError, match="picture is 16×16"):
        decode_picture(good, (3, 16, 17))


def test_runtime_pngs_stay_close_to_pillows_size_on_photos() -> None:
    from PIL import Image

    from edgesplit.model.data import sample_images

    photos = sample_images("photos", (3, 32, 32))
    ours = pillow = 0
    for photo in photos:
        buffer = io.BytesIO()
        Image.fromarray(_pixels(photo)).save(buffer, format="PNG")
        pillow += len(buffer.getvalue())
        ours += len(encode_picture(photo, {"format": "PNG"}))
    assert ours <= 1.08 * pillow  # measured: 36,179 against 34,479 bytes (+4.9%) on the 16 bundled photos
