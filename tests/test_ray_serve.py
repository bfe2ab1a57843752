"""The tail server as a Ray Serve app: the FastAPI server's API, exact results, Serve batching, errors, over HTTP.

One local Ray instance (2 CPUs, no dashboard) and one Serve app serve the whole module: starting them takes
10–15 s on two cores. The plan's routes are resnet8 cut inside a residual block (cut 6: two tensors cross) and
after it (cut 10), both fp32.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from edgesplit.codecs import unpack
from edgesplit.errors import EdgesplitError
from edgesplit.plan.schema import load_plan
from edgesplit.runtime import ray_serve
from edgesplit.runtime.deployment import load_deployment
from edgesplit.runtime.server import ServerError
from edgesplit.runtime.wire import MEDIA_TYPE, Request, Response, Status, new_request_id
from runtime_plans import make_plan, save_plan

pytestmark = pytest.mark.slow

TOKEN = "ray-serve-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):  # noqa: ANN201
    """A running Serve app for a two-route resnet8 plan, and the same plan's deployment in this process."""
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    folder = tmp_path_factory.mktemp("ray_serve")
    plan = make_plan(folder, "resnet8", routes=[(0.1, 10, {"cut_index": 6}), (10, 1000, {"cut_index": 10})])
    plan_path = save_plan(plan, folder / "plan.json")
    deployment = load_deployment(load_plan(plan_path), plan_dir=folder)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a shared cluster
    try:
        app = ray_serve.run(plan_path, port=0, token=TOKEN, max_batch=32, max_wait_ms=10.0, log_level=None,
                            blocking=False)
        yield app, deployment
        app.shutdown()
    finally:
        serve.shutdown()
        ray.shutdown()


def frame(deployment, route_id: int, x: torch.Tensor, **fields) -> bytes:  # noqa: ANN001
    route = deployment.routes[route_id]
    return Request(fields.pop("request_id", new_request_id()), fields.pop("model_id", deployment.model_id),
                   fields.pop("route", route_id), route.encode(route.device_side(x)), **fields).to_bytes()


def test_health_readiness_models_and_metrics_as_the_fastapi_server(served) -> None:
    app, deployment = served
    with httpx.Client(base_url=app.url, timeout=30) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"ready": True, "models": [deployment.model_id]}
        models = http.get("/v1/models", headers=AUTH)
        assert models.status_code == 200
        assert models.json() == {"models": [json.loads(json.dumps(deployment.describe()))]}
        assert http.get("/metrics", headers=AUTH).status_code == 200
        assert "edgesplit_requests" in http.get("/metrics", headers=AUTH).text


def test_results_equal_the_model_in_process_exactly(served) -> None:
    app, deployment = served
    assert len(deployment.routes[0].sent_shapes) == 2  # cut 6 is inside a residual block: two tensors cross
    x = torch.rand(3, *deployment.plan.input_shape[1:])
    expected = deployment.model(x)
    with httpx.Client(base_url=app.url, headers=AUTH, timeout=30) as http:
        for route in deployment.routes:
            request_id = new_request_id()
            answer = http.post("/v1/infer", content=frame(deployment, route.route_id, x, request_id=request_id))
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"] == MEDIA_TYPE
            response = Response.from_bytes(answer.content)
            assert response.status == Status.OK and response.request_id == request_id
            assert response.batch_size >= 1 and response.server_ms > 0
            assert torch.equal(unpack(response.payload)[0], expected), route.label


def test_concurrent_requests_are_right_and_share_serve_batches(served) -> None:
    app, deployment = served
    torch.manual_seed(1)
    inputs = [torch.rand(1, *deployment.plan.input_shape[1:]) for _ in range(96)]
    expected = deployment.model(torch.cat(inputs))

    def client(thread: int) -> list[tuple[int, int, Response]]:
        done = []
        with httpx.Client(base_url=app.url, headers=AUTH, timeout=60) as http:
            for i in range(thread, len(inputs), 16):
                route_id = thread % 2  # both routes at once: one Serve batch may hold both
                answer = http.post("/v1/infer", content=frame(deployment, route_id, inputs[i]))
                done.append((i, answer.status_code, Response.from_bytes(answer.content)))
        return done

    with ThreadPoolExecutor(16) as pool:
        results = [r for rs in pool.map(client, range(16)) for r in rs]
    assert len(results) == len(inputs) and all(code == 200 for _, code, _ in results)
    for i, _, response in results:  # a row's result may differ in the last bit with the batch it ran in
        torch.testing.assert_close(unpack(response.payload)[0], expected[i:i + 1], rtol=1e-5, atol=1e-6)
    sizes = [response.batch_size for _, _, response in results]
    assert max(sizes) > 1, sizes  # batch_size: the requests that shared the forward pass
    assert max(sizes) <= 16


def test_each_request_in_a_batch_gets_its_own_answer(served) -> None:
    app, deployment = served
    x = torch.rand(2, *deployment.plan.input_shape[1:])
    good = frame(deployment, 0, x)
    wrong_shape = Request(new_request_id(), deployment.model_id, 0, deployment.routes[1].encode(
        deployment.routes[1].device_side(x))).to_bytes()  # cut 10's tensor sent to cut 6's route
    with httpx.Client(base_url=app.url, headers=AUTH, timeout=60) as http, ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda body: http.post("/v1/infer", content=body).status_code,
                              [good, wrong_shape] * 6))
    assert codes == [200, 400] * 6


def test_a_retried_request_id_is_answered_once(served) -> None:
    app, deployment = served
    body = frame(deployment, 1, torch.rand(1, *deployment.plan.input_shape[1:]))
    with httpx.Client(base_url=app.url, headers=AUTH, timeout=30) as http:
        first, again = http.post("/v1/infer", content=body), http.post("/v1/infer", content=body)
    assert first.status_code == again.status_code == 200
    assert first.content == again.content  # the remembered bytes, server time included: the tail ran once


def test_wrong_or_missing_token_is_401(served) -> None:
    app, deployment = served
    body = frame(deployment, 0, torch.rand(1, *deployment.plan.input_shape[1:]))
    with httpx.Client(base_url=app.url, timeout=30) as http:
        wrong = http.post("/v1/infer", content=body, headers={"Authorization": "Bearer not-the-token-at-all"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert wrong.json()["error"].startswith("wrong bearer token")
        missing = http.post("/v1/infer", content=body)
        assert missing.status_code == 401 and missing.json()["error"].startswith("missing bearer token")
        assert http.get("/v1/models").status_code == 401


def test_garbage_frame_is_400_and_the_app_still_serves(served) -> None:
    app, deployment = served
    x = torch.rand(1, *deployment.plan.input_shape[1:])
    with httpx.Client(base_url=app.url, headers=AUTH, timeout=30) as http:
        garbage = http.post("/v1/infer", content=b"\x00garbage" * 10)
        assert garbage.status_code == 400 and "bad magic" in garbage.json()["error"]
        assert http.post("/v1/infer", content=b"").status_code == 400
        after = http.post("/v1/infer", content=frame(deployment, 0, x))
    assert after.status_code == 200
    assert torch.equal(unpack(Response.from_bytes(after.content).payload)[0], deployment.model(x))


def test_unknown_route_or_model_is_404(served) -> None:
    app, deployment = served
    x = torch.rand(1, *deployment.plan.input_shape[1:])
    with httpx.Client(base_url=app.url, headers=AUTH, timeout=30) as http:
        route = http.post("/v1/infer", content=frame(deployment, 0, x, route=7))
        assert route.status_code == 404 and "routes 0..1, not 7" in route.json()["error"]
        model = http.post("/v1/infer", content=frame(deployment, 0, x, model_id="no-such-model"))
        assert model.status_code == 404 and "does not serve model 'no-such-model'" in model.json()["error"]


def test_websocket_stream_through_serve(served) -> None:
    from websockets.sync.client import connect

    app, deployment = served
    x = torch.rand(1, *deployment.plan.input_shape[1:])
    request_ids = [new_request_id() for _ in range(4)]
    with connect(app.url.replace("http", "ws") + "/v1/stream", additional_headers=AUTH, open_timeout=30) as ws:
        for request_id in request_ids:
            ws.send(frame(deployment, 1, x, request_id=request_id))
        answers = [Response.from_bytes(ws.recv(timeout=30)) for _ in request_ids]
    assert sorted(a.request_id for a in answers) == sorted(request_ids)
    for answer in answers:  # sent together, they may share a batch: equal up to the last bit
        assert answer.status == Status.OK
        torch.testing.assert_close(unpack(answer.payload)[0], deployment.model(x), rtol=1e-5, atol=1e-6)


def test_a_lone_request_takes_the_engines_fast_path_not_a_serve_batch(served) -> None:
    """Serve's batch makes a lone request wait its whole batch_wait_timeout (max_wait_ms = 10 here); the replica's
    engine runs a request that is alone at once, as `edgesplit serve` does."""
    app, deployment = served
    x = torch.rand(1, *deployment.plan.input_shape[1:])
    time.sleep(0.6)  # past the engine's crowd window after the concurrent tests above
    with httpx.Client(base_url=app.url, headers=AUTH, timeout=30) as http:
        answers = [Response.from_bytes(http.post("/v1/infer", content=frame(deployment, 1, x)).content)
                   for _ in range(6)]
    assert all(a.status == Status.OK and a.batch_size == 1 for a in answers)
    assert min(a.server_ms for a in answers) < 10.0, [a.server_ms for a in answers]


# ---- refusals before Ray starts ---------------------------------------------------------------------------------


def test_refuses_a_public_address_without_a_token(tmp_path) -> None:
    with pytest.raises(ServerError, match="without a token"):
        ray_serve.run(tmp_path / "plan.json", host="0.0.0.0", blocking=False)


def test_without_ray_says_how_to_install_it(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.serve", None)
    with pytest.raises(EdgesplitError, match=r"pip install 'edgesplit\[ray\]'"):
        ray_serve.run(tmp_path / "plan.json", blocking=False)
