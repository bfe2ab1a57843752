"""The runtime's frames and routes without a server: round trips, every malformed field, picture inputs."""

from __future__ import annotations

import io
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from edgesplit.codecs import DecodeLimits
from edgesplit.model.data import sample_images
from edgesplit.runtime.deployment import load_deployment
from edgesplit.runtime.wire import (Request, Response, Status, WireError, check_model_id, model_id_for,
                                    new_request_id)
from runtime_plans import make_plan

model_ids = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(model_id=model_ids, route_id=st.integers(0, 0xFFFF), payload=st.binary(max_size=300),
       width=st.none() | st.integers(1, 1000).map(lambda t: t / 1000), top_k=st.integers(0, 255))
def test_request_round_trips(model_id, route_id, payload, width, top_k):
    request = Request(new_request_id(), model_id, route_id, payload, width, top_k)
    assert Request.from_bytes(request.to_bytes()) == request


@settings(max_examples=100, deadline=None)
@given(status=st.sampled_from(list(Status)), payload=st.binary(max_size=300), batch=st.integers(0, 0xFFFF))
def test_response_round_trips(status, payload, batch):
    response = Response(new_request_id(), status, payload, 1.5, batch)
    parsed = Response.from_bytes(response.to_bytes())
    assert (parsed.request_id, parsed.status, parsed.payload, parsed.batch_size) == (
        response.request_id, status, payload, batch)
    assert parsed.server_ms == pytest.approx(1.5)


def _frame(**changes) -> bytes:
    return Request(b"r" * 16, "resnet8", 3, b"payload", **changes).to_bytes()


@pytest.mark.parametrize("mutate, message", [
    (lambda f: f[:10], "truncated"),
    (lambda f: b"XXXX" + f[4:], "bad magic"),
    (lambda f: f[:4] + b"\x09" + f[5:], "version 9 is not supported"),
    (lambda f: f[:5] + b"\x80" + f[6:], "unknown flags"),
    (lambda f: f + b"extra", "after the payload"),
    (lambda f: f[:-3], "truncated in the payload"),
    (lambda f: f[:25] + b"\x00" + f[26:], "model id ''"),
    (lambda f: f[:26] + b"res net" + f[33:], "model id 'res net'"),
])
def test_malformed_requests_are_refused_with_the_reason(mutate, message):
    with pytest.raises(WireError, match=message) as caught:
        Request.from_bytes(mutate(_frame()))
    assert caught.value.status == Status.BAD_REQUEST


def test_a_huge_declared_payload_is_refused_before_reading_it():
    frame = _frame()
    huge = frame[:-len(b"payload") - 4] + struct.pack("<I", 2**32 - 1)
    with pytest.raises(WireError, match="over this server's limit") as caught:
        Request.from_bytes(huge, max_payload=1 << 20)
    assert caught.value.status == Status.TOO_LARGE and caught.value.status.http == 413


def test_widths_and_ids_are_checked():
    assert Request.from_bytes(_frame(width=0.25)).width == 0.25
    with pytest.raises(WireError, match="outside"):
        _frame(width=1.5)
    with pytest.raises(WireError, match="letters, digits"):
        check_model_id("a/b")
    assert model_id_for("tests.modelfactories:branchy") == "tests.modelfactories_branchy"


@pytest.fixture(scope="module")
def picture_deployment(tmp_path_factory):
    plan = make_plan(tmp_path_factory.mktemp("pictures"), "resnet8", [
        (0.1, 1, {"kind": "all-server", "label": "all on server (jpeg input)"}),
        (1, 20, {"kind": "all-server", "label": "all on server (png input)"}),
        (20, 1000, {"kind": "all-server", "label": "all on server (uint8 input)"})])
    return load_deployment(plan)


def test_all_server_routes_send_the_input_as_planned(picture_deployment):
    images = (sample_images("photos", (3, 32, 32))[:3] * 255).round() / 255  # real photo crops, 8-bit
    expected = picture_deployment.model(images)
    sizes = {}
    for route in picture_deployment.routes:
        payload = route.encode(route.device_side(images))
        (received,) = route.decode(payload, DecodeLimits(), max_batch=8)
        sizes[route.describe()["codecs"][0]] = len(payload)
        output = route.server_side([received])
        if route.picture is None or route.picture.spec == "png":  # lossless: the same pixels, the same logits
            torch.testing.assert_close(received, images, atol=1e-6, rtol=0)
            torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
        else:  # JPEG q90 on photos: a few levels off on average
            assert (received - images).abs().mean() < 0.03
    assert set(sizes) == {"jpeg q90", "png", "uint8"}
    assert sizes["jpeg q90"] < sizes["png"]


def test_a_picture_bomb_is_refused_before_decoding(picture_deployment):
    route = next(r for r in picture_deployment.routes if r.picture is not None and r.picture.spec == "png")
    buffer = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buffer, format="PNG")  # 400 MB of pixels in a few hundred kB
    small = io.BytesIO()
    Image.new("L", (3000, 3000)).save(small, format="PNG")  # under Pillow's own bomb limit
    from edgesplit.codecs import pack
    for picture in (buffer, small):
        with pytest.raises(WireError, match="the model takes 32×32"):
            route.decode(pack([picture.getvalue()]), DecodeLimits(), max_batch=8)
    with pytest.raises(WireError, match="not a PNG or JPEG"):
        route.decode(pack([b"GIF89a not this"]), DecodeLimits(), max_batch=8)
    with pytest.raises(WireError, match="declares 3 frames, the limit is 2"):
        image = route.encode([torch.zeros(3, 3, 32, 32)])
        route.decode(image, DecodeLimits(), max_batch=2)


def test_a_plan_that_never_sends_anything_is_refused_with_the_reason(tmp_path):
    from edgesplit.plan.schema import PlanReport
    from edgesplit.runtime.deployment import DeploymentError

    plan = make_plan(tmp_path, "small_cnn", [(0.1, 1000, {"kind": "all-device"})])
    data = plan.model_dump()
    data["chosen"] = data["all_device"]
    with pytest.raises(DeploymentError, match="nothing to serve; plan for a slower device"):
        load_deployment(PlanReport.model_validate(data))
