"""The runtime's fast paths keep the behaviour of the slow ones: a request id's answer is remembered by the frame
until the loop digests it (a reuse with another frame is a conflict either way), POST /v1/infer skips FastAPI's
stack but not the Host/Origin guard or the token, and the client's direct keep-alive POST answers like httpx's."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import torch

from edgesplit.runtime.client import Client
from edgesplit.runtime.deployment import load_deployment
from edgesplit.runtime.engine import Engine, ServerLimits
from edgesplit.runtime.server import ServerThread, decode_limits
from edgesplit.runtime.wire import Request, Status, new_request_id
from runtime_plans import make_plan, save_plan

TOKEN = "speed-token-" + "y" * 20


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    from edgesplit.plan.schema import load_plan

    folder = tmp_path_factory.mktemp("speed")
    plan = make_plan(folder, "small_cnn", routes=[(1, 100, {"cut_index": 2, "codec": "fp32"})])
    return load_deployment(load_plan(save_plan(plan, folder / "small.json")))


def _frame(deployment, request_id: bytes, seed: int) -> bytes:  # noqa: ANN001
    route = deployment.routes[0]
    x = torch.rand(1, *deployment.plan.input_shape[1:], generator=torch.Generator().manual_seed(seed))
    return Request(request_id, deployment.model_id, route.route_id, route.encode(route.device_side(x)),
                   route.width).to_bytes()


def test_a_reused_id_is_a_conflict_before_and_after_the_frame_is_digested(deployment):
    async def run() -> list:
        engine = Engine([deployment], ServerLimits(decode=decode_limits([deployment], 64)))
        try:
            first_id, second_id = new_request_id(), new_request_id()
            a, other = _frame(deployment, first_id, 1), _frame(deployment, first_id, 2)
            first = await engine.handle(a, "c")
            # still the same turn of the loop: the entry holds the frame itself, not yet its digest
            before = [await engine.handle(a, "c"), await engine.handle(other, "c")]
            await asyncio.sleep(0)  # the loop digests the frame
            after = [await engine.handle(a, "c"), await engine.handle(other, "c")]
            b = _frame(deployment, second_id, 3)
            fresh = await engine.handle(b, "c")
            return [first, *before, *after, fresh]
        finally:
            await engine.close()

    first, same, conflict, same_later, conflict_later, fresh = asyncio.run(run())
    assert first.status == Status.OK and fresh.status == Status.OK
    assert same == first and same_later == first  # a retry gets the very bytes of the first answer
    assert conflict.status == Status.CONFLICT and conflict_later.status == Status.CONFLICT
    assert fresh.payload != first.payload


def test_the_infer_fast_path_still_checks_host_origin_and_token(deployment):
    engine = Engine([deployment], ServerLimits(decode=decode_limits([deployment], 64)))
    with ServerThread(engine, token=TOKEN) as server:
        frame = _frame(deployment, new_request_id(), 1)
        auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-edgesplit-frame"}
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.post("/v1/infer", content=frame, headers=auth).status_code == 200
            rebound = http.post("/v1/infer", content=frame, headers={**auth, "Host": "evil.example"})
            assert rebound.status_code == 403 and "Host" in rebound.json()["error"]
            page = http.post("/v1/infer", content=frame, headers={**auth, "Origin": "https://evil.example"})
            assert page.status_code == 403
            assert http.post("/v1/infer", content=frame, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert http.get("/v1/infer", headers=auth).status_code == 405  # other methods take FastAPI's way


def test_the_clients_direct_post_answers_like_httpx(deployment):
    engine = Engine([deployment], ServerLimits(decode=decode_limits([deployment], 64)))
    x = torch.rand(1, *deployment.plan.input_shape[1:], generator=torch.Generator().manual_seed(5))
    with ServerThread(engine, token=TOKEN) as server:
        with Client(deployment, server.url, TOKEN, fallback=False) as direct, \
                Client(deployment, server.url, TOKEN, fallback=False, transport=httpx.HTTPTransport()) as through:
            assert direct._keepalive is not None and through._keepalive is None
            ours, theirs = direct.infer(x), through.infer(x)
            assert ours.where == theirs.where == "server"
            torch.testing.assert_close(ours.outputs, theirs.outputs)
        with Client(deployment, server.url, "wrong-token-" + "z" * 20, fallback=False) as refused:
            with pytest.raises(Exception, match="401"):
                refused.infer(x)
