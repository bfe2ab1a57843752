"""The tail server as clients meet it: a real uvicorn on 127.0.0.1, real plans, real frames, real sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import TESTS
from edgesplit.codecs import pack, parse_codec, unpack
from edgesplit.model.graph import trace
from edgesplit.model.intake import load_model
from edgesplit.runtime.deployment import Deployment, Route, load_deployment
from edgesplit.runtime.engine import Engine, Observer, ServerLimits, run_batch
from edgesplit.runtime.server import ServerThread, decode_limits
from edgesplit.runtime.wire import MEDIA_TYPE, Request, Response, Status, new_request_id
from runtime_plans import make_plan, save_plan
from test_cli import assert_user_error, edgesplit, edgesplit_in_process

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 1 << 20  # the main server's request limit: 1 MiB


# ---- fixtures ---------------------------------------------------------------------------------------------------------


def _non_prefix_head() -> list[str]:
    """resnet8 up to its first block's output, plus the second block's skip branch only: closed, not a prefix."""
    loaded = load_model("resnet8")
    names = [n.name for n in trace(loaded.module, loaded.example_input).compute_nodes]
    head = names[:names.index("layers_0_relu") + 1] + ["layers_1_shortcut_0", "layers_1_shortcut_1"]
    assert names[:len(head)] != head
    return head


@pytest.fixture(scope="module")
def plans(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("plans")
    r8 = make_plan(folder, "resnet8", routes=[
        (1, 10, {"cut_index": 10, "codec": "int2+ans"}),   # one crossing tensor, entropy coded
        (10, 100, {"cut_index": 6, "codec": "fp32"}),      # inside a residual block: two crossing tensors
        (100, 1000, {"head_nodes": _non_prefix_head(), "codec": "fp32"})])  # a head that is not a prefix
    small = make_plan(folder, "small_cnn", routes=[(1, 10, {"cut_index": 3, "codec": "fp32"}),
                                                   (10, 100, {"cut_index": 2, "codec": "int2+ans"})])
    return {"resnet8": save_plan(r8, folder / "resnet8.json"), "small_cnn": save_plan(small, folder / "small.json")}


@pytest.fixture(scope="module")
def deployments(plans) -> dict[str, Deployment]:
    from edgesplit.plan.schema import load_plan
    return {name: load_deployment(load_plan(path)) for name, path in plans.items()}


def _engine(deployments: dict[str, Deployment], observer: Observer | None = None, **limits) -> Engine:
    models = list(deployments.values())
    settings_ = {"max_request_bytes": LIMIT, "decode": decode_limits(models, 64), "max_wait_ms": 5.0, **limits}
    return Engine(models, ServerLimits(**settings_), observer)


class Counting(Observer):
    def __init__(self) -> None:
        self.batches: list[int] = []

    def batch(self, route: Route, requests: int, rows: int, seconds: float) -> None:
        self.batches.append(requests)


@pytest.fixture(scope="module")
def server(deployments):
    counting = Counting()
    with ServerThread(_engine(deployments, counting), token=TOKEN) as srv:
        srv.counting = counting
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        yield client


def _frame(deployment: Deployment, route: Route, x: torch.Tensor, **fields) -> bytes:
    payload = fields.pop("payload", None)
    payload = route.encode(route.device_side(x)) if payload is None else payload
    values = {"request_id": new_request_id(), "model_id": deployment.model_id, "route_id": route.route_id,
              "payload": payload, "width": route.width, **fields}
    return Request(**values).to_bytes()


def _input(deployment: Deployment, rows: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(rows, *deployment.plan.input_shape[1:], generator=torch.Generator().manual_seed(seed))


def _result(reply: httpx.Response) -> tuple[Response, list[torch.Tensor]]:
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == MEDIA_TYPE
    response = Response.from_bytes(reply.content)
    assert response.status == Status.OK
    return response, unpack(response.payload)


def _local(route: Route, frame: bytes) -> torch.Tensor:
    """What the server should answer: the route's own decode and tail, run here."""
    request = Request.from_bytes(frame)
    return unpack(run_batch(route, [route.decode(request.payload, ServerLimits().decode, 64)], [0])[0])[0]


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``, from the Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def _good_request_works(http: httpx.Client, deployments: dict[str, Deployment]) -> None:
    small = deployments["small_cnn"]
    x = _input(small, 1, seed=99)
    _, (out,) = _result(http.post("/v1/infer", content=_frame(small, small.routes[0], x)))
    assert torch.allclose(out, small.model(x), atol=1e-5)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _raw_http(url: str, head: str, chunks: list[bytes], timeout: float = 20.0) -> tuple[int, dict]:
    """Send a request head and body chunks on a bare socket (no client library smoothing things); the reply."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.encode())
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        top, _, body = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in top.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += sock.recv(65536)
    return int(top.split(b" ")[1]), json.loads(body[:length])


# ---- results ----------------------------------------------------------------------------------------------------------


def test_every_route_answers_what_the_model_computes(http, deployments):
    checked = []
    for deployment in deployments.values():
        x = _input(deployment, rows=2)
        expected = deployment.model(x)
        for route in deployment.routes:
            frame = _frame(deployment, route, x)
            response, (out,) = _result(http.post("/v1/infer", content=frame))
            assert response.request_id == Request.from_bytes(frame).request_id and response.batch_size >= 1
            assert out.shape == expected.shape
            assert torch.equal(out, _local(route, frame))  # exactly what this route's decode and tail give
            if all(c.spec == "fp32" for c in route.codecs):
                assert (out - expected).abs().max().item() <= 1e-6, route.label
            else:  # 2-bit features: close to the model, not equal
                cosine = torch.nn.functional.cosine_similarity(out.flatten(), expected.flatten(), dim=0)
                assert cosine > 0.95 and (out - expected).abs().max() <= 0.3 * expected.abs().max(), route.label
            checked.append((deployment.model_id, route.split.cut.index, len(route.sent_shapes)))
    # a chain model, a cut inside a residual block (two tensors cross), and a non-prefix head
    assert ("small_cnn", 3, 1) in checked and ("resnet8", 6, 2) in checked and ("resnet8", -1, 2) in checked


def test_top_k_answers_the_largest_outputs(http, deployments):
    deployment = deployments["resnet8"]
    x = _input(deployment, rows=3, seed=1)
    _, (values, indices) = _result(http.post("/v1/infer", content=_frame(deployment, deployment.routes[1], x,
                                                                           top_k=3)))
    expected = deployment.model(x).topk(3, dim=-1)
    assert torch.allclose(values, expected.values, atol=1e-6) and torch.equal(indices, expected.indices)


def test_models_lists_every_route(http, deployments):
    listed = {m["model_id"]: m for m in http.get("/v1/models").json()["models"]}
    assert set(listed) == {"resnet8", "small_cnn"}
    routes = listed["resnet8"]["routes"]
    assert [r["label"] for r in routes] == [r.label for r in deployments["resnet8"].routes]
    assert routes[1]["sends"] == [[1, 16, 32, 32], [1, 16, 32, 32]] and routes[2]["head_nodes"]


# ---- bad input ----------------------------------------------------------------------------------------------------------


def _bad_frames(deployments: dict[str, Deployment]) -> dict[str, tuple[bytes, int, str]]:
    r8, small = deployments["resnet8"], deployments["small_cnn"]
    good = _frame(small, small.routes[0], _input(small, 1))
    wrong_version = bytearray(good)
    wrong_version[4] = 9
    huge = bytearray(good)
    length_at = struct.calcsize("<4sBBH16sBB") + len("small_cnn")
    huge[length_at:length_at + 4] = struct.pack("<I", 0xFFFFFFF0)
    wrong_shape = pack([parse_codec("fp32").encode(torch.rand(1, 3, 8, 8))])
    ints = pack([parse_codec("fp32").encode(torch.ones(1, *small.routes[0].sent_shapes[0][1:], dtype=torch.int64))])
    return {
        "truncated": (good[:-5], 400, "truncated"),
        "empty": (b"", 400, "truncated"),
        "garbage": (b"GET / HTTP/1.1 this is not a frame at all", 400, "bad magic"),
        "wrong version": (bytes(wrong_version), 400, "version 9 is not supported"),
        "huge declared payload": (bytes(huge), 413, "over this server's limit"),
        "bytes after the payload": (good + b"xx", 400, "after the payload"),
        "wrong tensor shape": (_frame(small, small.routes[0], None, payload=wrong_shape), 400, "takes tensors of shape"),
        "integer tensor": (_frame(small, small.routes[0], None, payload=ints), 400, "takes float32 tensors"),
        "corrupt payload": (_frame(small, small.routes[0], None, payload=b"\x01\x05ESC\x01\x00"), 400, "payload"),
        "two tensors for one": (_frame(r8, r8.routes[0], _input(r8, 1), payload=pack(
            [parse_codec("fp32").encode(torch.rand(1, 16, 32, 32))] * 2)), 400, "declares 2 tensors, the limit is 1"),
        "unknown model": (_frame(small, small.routes[0], _input(small, 1), model_id="resnet999"), 404,
                          "does not serve model 'resnet999'"),
        "unknown route": (_frame(small, small.routes[0], _input(small, 1), route_id=7), 404, "routes 0..1, not 7"),
        "width on a route without one": (_frame(small, small.routes[0], _input(small, 1), width=0.5), 400,
                                         "runs at width none, the request says 0.5"),
    }


def test_bad_frames_get_a_clear_4xx_and_the_server_goes_on(http, deployments):
    for name, (body, status, fragment) in _bad_frames(deployments).items():
        reply = http.post("/v1/infer", content=body)
        assert reply.status_code == status, (name, reply.text)
        assert fragment in reply.json()["error"], (name, reply.json())
    _good_request_works(http, deployments)


def test_tokens_are_checked(server, http, deployments):
    small = deployments["small_cnn"]
    frame = _frame(small, small.routes[0], _input(small, 1))
    missing = httpx.post(server.url + "/v1/infer", content=frame)
    assert missing.status_code == 401 and "missing bearer token" in missing.json()["error"]
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(server.url + "/v1/infer", content=frame, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401 and "wrong bearer token" in wrong.json()["error"]
    for path in ("/v1/models", "/metrics"):
        assert httpx.get(server.url + path).status_code == 401
    _good_request_works(http, deployments)


def test_oversized_bodies_are_refused_before_they_are_read(server, http, deployments):
    head = (f"POST /v1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: {MEDIA_TYPE}\r\n")
    # A declared length over the limit: answered at once, nothing sent but the head.
    status, body = _raw_http(server.url, head + "Content-Length: 100000000000\r\n\r\n", [])
    assert status == 413 and "over this server's limit" in body["error"]
    # No length, chunked: answered as soon as the limit is passed, without waiting for (or holding) the rest.
    chunk = os.urandom(64 << 10)
    chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (LIMIT // len(chunk) + 2)  # never sends the final 0-chunk
    status, body = _raw_http(server.url, head + "Transfer-Encoding: chunked\r\n\r\n", chunks)
    assert status == 413 and f"limit of {LIMIT:,} bytes" in body["error"]
    # Within the limit by Content-Length, but the client sends the bytes anyway: httpx's ordinary 413.
    assert http.post("/v1/infer", content=b"x" * (LIMIT + 1)).status_code == 413
    _good_request_works(http, deployments)


def test_fuzzed_frames_never_break_the_server(http, deployments):
    """Random bytes and mutations of valid frames: always 200 or a 4xx, never a 500; memory stays bounded."""
    _good_request_works(http, deployments)  # warm up before measuring memory
    rss = _rss_mb()
    small, r8 = deployments["small_cnn"], deployments["resnet8"]
    seeds = [_frame(small, small.routes[0], _input(small, 1)), _frame(small, small.routes[1], _input(small, 2)),
             _frame(r8, r8.routes[0], _input(r8, 1))]
    statuses: list[int] = []

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        kind = data.draw(st.sampled_from(["random", "flip", "cut", "splice"]))
        if kind == "random":
            body = data.draw(st.binary(max_size=4096))
        else:
            body = bytearray(data.draw(st.sampled_from(seeds)))
            if kind == "flip":
                for at, value in data.draw(st.lists(st.tuples(st.integers(0, len(body) - 1), st.integers(0, 255)),
                                                    min_size=1, max_size=8)):
                    body[at] = value
            elif kind == "cut":
                body = body[:data.draw(st.integers(0, len(body)))]
            else:
                at = data.draw(st.integers(0, len(body)))
                body = body[:at] + data.draw(st.binary(min_size=1, max_size=64)) + body[at:]
        reply = http.post("/v1/infer", content=bytes(body))
        assert reply.status_code == 200 or 400 <= reply.status_code < 500, reply.text
        if reply.status_code != 200:
            assert reply.json()["error"]
        statuses.append(reply.status_code)

    fuzz()
    print(f"\nfuzz: {len(statuses)} bodies, statuses {dict(sorted(Counter(statuses).items()))}")
    assert len(statuses) >= 100 and 400 in statuses
    _good_request_works(http, deployments)
    assert _rss_mb() - rss < 200


# ---- dedup, batching, limits, load ---------------------------------------------------------------------------------------


def test_a_retried_request_is_answered_from_memory(server, http, deployments):
    deployment = deployments["resnet8"]
    route = deployment.routes[1]
    frame = _frame(deployment, route, _input(deployment, 1, seed=5))
    runs = len(server.counting.batches)
    first = http.post("/v1/infer", content=frame)
    second = http.post("/v1/infer", content=frame)
    assert first.status_code == second.status_code == 200 and first.content == second.content
    assert len(server.counting.batches) == runs + 1  # the tail ran once
    # Retried while the first try is still running: both get the same bytes, still one forward pass.
    frame = _frame(deployment, route, _input(deployment, 1, seed=6))
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda _: http.post("/v1/infer", content=frame), range(2)))
    assert replies[0].content == replies[1].content and len(server.counting.batches) == runs + 2


def _concurrent(url: str, frames: list[bytes], clients: int) -> list[httpx.Response]:
    barrier = threading.Barrier(clients)

    def post(i: int) -> httpx.Response:
        with httpx.Client(headers={**AUTH, "X-Edgesplit-Client": f"client-{i}"}, timeout=60) as client:
            barrier.wait()
            return client.post(url + "/v1/infer", content=frames[i])

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(post, range(clients)))


@pytest.mark.parametrize("max_batch", [32, 1])
def test_concurrent_clients_share_forward_passes(deployments, max_batch, monkeypatch):
    deployment = deployments["small_cnn"]
    route = deployment.routes[0]
    original = route.server_side

    def slow_tail(tensors):  # noqa: ANN001, ANN202 - slower than 16 clients send, so that their requests overlap
        time.sleep(0.02)  # (a tiny tail keeps up with them one by one: alone, each request runs without waiting)
        return original(tensors)

    monkeypatch.setattr(route, "server_side", slow_tail)
    inputs = [_input(deployment, 1, seed=i) for i in range(16)]
    frames = [_frame(deployment, route, x) for x in inputs]
    with ServerThread(_engine(deployments, max_batch=max_batch, max_wait_ms=20.0), token=TOKEN) as srv:
        replies = _concurrent(srv.url, frames, 16)
    sizes = []
    for x, reply in zip(inputs, replies):
        response, (out,) = _result(reply)
        assert torch.allclose(out, deployment.model(x), atol=1e-5)  # each client gets its own answer
        sizes.append(response.batch_size)
    if max_batch == 1:
        assert sizes == [1] * 16
    else:
        assert max(sizes) > 1, sizes


def test_a_client_over_its_concurrency_limit_gets_429(deployments, monkeypatch):
    """A client is its address: naming itself another client in a header neither escapes its own limit (the
    attack: rotate names) nor counts against the one it names (the attack: get a victim refused)."""
    deployment = deployments["small_cnn"]
    frames = [_frame(deployment, deployment.routes[0], _input(deployment, 1, seed=i)) for i in range(4)]
    route, original = deployment.routes[0], deployment.routes[0].server_side

    def slow_tail(tensors):  # noqa: ANN001, ANN202 - keeps the first request in flight for a while
        time.sleep(0.5)
        return original(tensors)

    monkeypatch.setattr(route, "server_side", slow_tail)
    elsewhere = httpx.HTTPTransport(local_address="127.0.0.2")  # another machine, as far as the server can tell
    with ServerThread(_engine(deployments), token=TOKEN, client_concurrency=1) as srv, \
            httpx.Client(base_url=srv.url, headers={**AUTH, "X-Edgesplit-Client": "camera-1"}, timeout=60) as one, \
            httpx.Client(base_url=srv.url, headers={**AUTH, "X-Edgesplit-Client": "camera-1"}, timeout=60,
                         transport=elsewhere) as victim:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(one.post, "/v1/infer", content=frames[0])  # its tail takes 0.5 s
            deadline = time.monotonic() + 10
            while _metric(one.get("/metrics").text, "edgesplit_in_flight") < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            refused = one.post("/v1/infer", content=frames[1])
            rotated = one.post("/v1/infer", content=frames[3], headers={"X-Edgesplit-Client": "camera-9"})
            other = victim.post("/v1/infer", content=frames[2])  # names camera-1 too, from another address
            assert first.result().status_code == 200
        assert refused.status_code == 429 and "already has 1 requests in flight" in refused.json()["error"]
        assert refused.headers["retry-after"] == "1"
        assert rotated.status_code == 429  # a new name in the header is the same client
        assert other.status_code == 200  # another client is not held back, whatever name it sends
        assert one.post("/v1/infer", content=frames[1]).status_code == 200  # and once answered, camera-1 may go on
        text = one.get("/metrics").text
        assert _metric(text, "edgesplit_requests_total", status="429") == 2


def test_load_from_eight_clients(server, deployments):
    deployment = deployments["small_cnn"]
    frames = [[_frame(deployment, route, _input(deployment, 1, seed=i)) for route in deployment.routes]
              for i in range(8)]
    latencies: list[float] = []
    failures: list[str] = []
    stop = time.monotonic() + 3.0

    def client(i: int) -> None:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as http:
            n = 0
            while time.monotonic() < stop:
                body = frames[i][n % 2][:8] + new_request_id() + frames[i][n % 2][24:]  # a fresh id each time
                started = time.perf_counter()
                reply = http.post("/v1/infer", content=body)
                latencies.append(time.perf_counter() - started)
                if reply.status_code != 200:
                    failures.append(reply.text)
                n += 1

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(client, range(8)))
    latencies.sort()
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    print(f"\nload: {len(latencies)} requests from 8 clients in 3 s; p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms")
    assert not failures, failures[:3]
    assert len(latencies) >= 8 and p99 < 10.0


# ---- health, metrics, OpenAPI, logs ----------------------------------------------------------------------------------


def test_health_readiness_metrics_and_openapi(server, http, deployments):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "models": ["resnet8", "small_cnn"]}
    small = deployments["small_cnn"]
    labels = {"model": "small_cnn", "route": small.routes[0].label}
    before = http.get("/metrics").text
    _good_request_works(http, deployments)
    http.post("/v1/infer", content=b"junk")
    after = http.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    assert _metric(text, "edgesplit_requests_total", status="200", **labels) == \
        _metric(before, "edgesplit_requests_total", status="200", **labels) + 1
    assert _metric(text, "edgesplit_errors_total", status="400") == _metric(before, "edgesplit_errors_total",
                                                                             status="400") + 1
    assert _metric(text, "edgesplit_request_seconds_count", **labels) > _metric(before, "edgesplit_request_seconds_count",
                                                                              **labels)
    assert _metric(text, "edgesplit_batch_size_count", **labels) > _metric(before, "edgesplit_batch_size_count", **labels)
    assert _metric(text, "edgesplit_batch_rows_sum", **labels) > _metric(before, "edgesplit_batch_rows_sum", **labels)
    assert _metric(text, "edgesplit_bytes_in_total", **labels) > _metric(before, "edgesplit_bytes_in_total", **labels)
    assert _metric(text, "edgesplit_bytes_out_total", **labels) > _metric(before, "edgesplit_bytes_out_total", **labels)
    assert "edgesplit_in_flight 0.0" in text
    schema = httpx.get(server.url + "/openapi.json").json()
    infer = schema["paths"]["/v1/infer"]["post"]
    assert MEDIA_TYPE in infer["requestBody"]["content"] and MEDIA_TYPE in infer["responses"]["200"]["content"]
    assert {"413", "429", "401"} <= set(infer["responses"])
    assert {"/v1/models", "/metrics", "/healthz", "/readyz"} <= set(schema["paths"])


def test_each_request_is_one_structured_log_record(http, deployments, caplog):
    small = deployments["small_cnn"]
    frame = _frame(small, small.routes[0], _input(small, 1, seed=42))
    with caplog.at_level("INFO", logger="edgesplit.server"):
        http.post("/v1/infer", content=frame, headers={"X-Edgesplit-Client": "cam-7"})
    (record,) = [r for r in caplog.records if r.name == "edgesplit.server" and r.getMessage() == "request"]
    fields = record.fields
    # the client is its address, never the name it gives itself
    assert fields["request_id"] == Request.from_bytes(frame).request_id.hex() and fields["client"] == "127.0.0.1"
    assert fields["model"] == "small_cnn" and fields["route"] == small.routes[0].label and fields["status"] == 200
    assert fields["batch_size"] >= 1 and fields["ms"] > 0 and fields["bytes_in"] == len(frame)
    from edgesplit.runtime.server import JsonFormatter
    assert json.loads(JsonFormatter().format(record))["request_id"] == fields["request_id"]


def test_apps_in_one_process_keep_their_own_metrics(deployments, http):
    with ServerThread(_engine(deployments), token=TOKEN) as other:
        text = httpx.get(other.url + "/metrics", headers=AUTH).text
    assert _metric(text, "edgesplit_requests_total") == 0  # the module's server has answered many already


# ---- WebSocket stream ------------------------------------------------------------------------------------------------


def test_a_stream_of_frames_on_one_websocket(server, deployments):
    deployment = deployments["resnet8"]
    inputs = {}
    frames = []
    for i in range(20):
        route = deployment.routes[i % len(deployment.routes)]
        x = _input(deployment, 1, seed=100 + i)
        frame = _frame(deployment, route, x)
        inputs[Request.from_bytes(frame).request_id] = (route, frame, x)
        frames.append(frame)
    bad = bytearray(frames[0])
    bad[4] = 7  # wrong version: answered with an error frame carrying its request id
    url = server.url.replace("http://", "ws://") + "/v1/stream"
    with connect(url, additional_headers=AUTH, max_size=None) as ws:
        for frame in frames:  # pipelined: everything sent before anything is read
            ws.send(frame)
        ws.send(b"nonsense" * 8)
        ws.send(bytes(bad))
        replies = [Response.from_bytes(ws.recv(timeout=60)) for _ in range(22)]
        ws.send("text is not a frame")
        text_reply = Response.from_bytes(ws.recv(timeout=60))
    answered = {r.request_id: r for r in replies if r.status == Status.OK}
    assert set(answered) == set(inputs)
    for request_id, (route, frame, x) in inputs.items():
        # batched with the other frames on its route: equal up to float rounding
        assert torch.allclose(unpack(answered[request_id].payload)[0], _local(route, frame), atol=1e-6)
        assert answered[request_id].batch_size >= 1
    errors = [r for r in replies if r.status != Status.OK]
    assert sorted(r.status for r in errors) == [Status.BAD_REQUEST] * 2
    assert any("bad magic" in r.message for r in errors)
    assert any("version 7" in r.message and r.request_id == Request.from_bytes(frames[0]).request_id for r in errors)
    assert text_reply.status == Status.BAD_REQUEST and "binary" in text_reply.message


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-wrong-token"}])
def test_a_stream_without_the_token_is_closed(server, headers):
    url = server.url.replace("http://", "ws://") + "/v1/stream"
    with connect(url, additional_headers=headers) as ws, pytest.raises(ConnectionClosed) as closed:
        ws.send(b"anything")
        ws.recv(timeout=10)
    assert closed.value.rcvd.code == 1008 and "bearer token" in closed.value.rcvd.reason


def test_a_stream_message_over_the_limit_closes_the_stream(server, http, deployments):
    url = server.url.replace("http://", "ws://") + "/v1/stream"
    with connect(url, additional_headers=AUTH, max_size=None) as ws, pytest.raises(ConnectionClosed) as closed:
        ws.send(b"\0" * (LIMIT + 1))
        ws.recv(timeout=10)
    assert closed.value.rcvd.code == 1009  # message too big
    _good_request_works(http, deployments)


# ---- the CLI -------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_serve_user_errors(plans, tmp_path):
    assert_user_error(edgesplit("serve", str(tmp_path / "nowhere.json")), "not found")
    (tmp_path / "other.json").write_text('{"kind": "edgesplit.profile", "version": 1}')
    assert_user_error(edgesplit_in_process("serve", str(tmp_path / "other.json")), "is not an edgesplit plan")
    env_token = os.environ.pop("EDGESPLIT_TOKEN", None)
    try:
        assert_user_error(edgesplit_in_process("serve", str(plans["small_cnn"]), "--host", "0.0.0.0"),
                          "refusing to serve on 0.0.0.0 without a token")
    finally:
        if env_token is not None:
            os.environ["EDGESPLIT_TOKEN"] = env_token
    assert_user_error(edgesplit_in_process("serve", str(plans["small_cnn"]), "--token-file", str(tmp_path)),
                      "cannot read the token file")
    (tmp_path / "short").write_text("abc\n")
    (tmp_path / "short").chmod(0o600)
    assert_user_error(edgesplit_in_process("serve", str(plans["small_cnn"]), "--token-file", str(tmp_path / "short")),
                      "at least 16")


def test_serve_refuses_mismatched_weights_and_a_port_in_use(plans, tmp_path):
    r8_weights = plans["resnet8"].parent / "resnet8.safetensors"
    assert_user_error(edgesplit_in_process("serve", str(plans["small_cnn"]), "--weights", str(r8_weights)),
                      "do not match SmallCNN")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert_user_error(edgesplit_in_process("serve", str(plans["small_cnn"]), "--port", str(port)),
                          f"cannot listen on 127.0.0.1:{port}")


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_then_exits_0(plans, deployments, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "EDGESPLIT_TOKEN"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    stderr = open(tmp_path / "stderr.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "edgesplit", "serve", str(plans["small_cnn"]), "--port",
                                str(port), "--max-wait-ms", "1500"], stdout=subprocess.PIPE, stderr=stderr,
                               text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "stderr.log").read_text()
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        deployment = deployments["small_cnn"]
        inputs = [_input(deployment, 1, seed=i) for i in range(4)]
        frames = [_frame(deployment, deployment.routes[0], x) for x in inputs]
        signalled = threading.Event()

        def held_back(frame: bytes):  # noqa: ANN202 - half the body now, the rest once SIGTERM was sent
            yield frame[:len(frame) // 2]
            signalled.wait(30)
            yield frame[len(frame) // 2:]

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(httpx.post, url + "/v1/infer", content=held_back(f), timeout=60) for f in frames]
            deadline = time.monotonic() + 30
            while _metric(httpx.get(url + "/metrics").text, "edgesplit_in_flight") < 4:  # all four mid-upload
                assert time.monotonic() < deadline, "the four requests never were in flight together"
                time.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)  # the server has begun shutting down with the four uploads unfinished
            signalled.set()
            replies = [f.result() for f in futures]
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    for x, reply in zip(inputs, replies):
        _, (out,) = _result(reply)
        assert torch.allclose(out, deployment.model(x), atol=1e-5)
    summary = process.stdout.read()
    assert "small_cnn" in summary and "authentication is OFF" in summary and f"127.0.0.1:{port}" in summary
    assert deployment.routes[1].label in summary
    stderr.seek(0)
    records = [json.loads(line) for line in stderr.read().splitlines() if line.startswith("{")]
    requests = [r for r in records if r["event"] == "request" and r["status"] == 200]
    assert len(requests) >= 4 and all(r["batch_size"] >= 1 and r["model"] == "small_cnn" for r in requests[-4:])
    assert any(r["level"] == "warning" and "authentication is off" in r["event"] for r in records)
    assert any("shutting down" in r["event"] for r in records)
