"""Attacks on a real server on 127.0.0.1, each refused: confused answers, exhaustion, web pages, careless tokens.

Each test performs what docs/threat-model.md ("The runtime's guarantees") says the server withstands.
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest
import torch
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from edgesplit.codecs import unpack
from edgesplit.runtime.auth import bearer_matches
from edgesplit.runtime.server import Guards, ServerError, ServerThread, check_tls, request_limit
from edgesplit.runtime.wire import Response, Status, new_request_id
from test_cli import assert_user_error, edgesplit, edgesplit_in_process
from test_server import AUTH, TOKEN, _engine, _frame, _input, deployments, plans  # noqa: F401 - fixtures

FAST = Guards(header_timeout_s=0.5, body_timeout_s=0.5, stream_idle_s=0.5, max_connections=8)


def _reply(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (or ``timeout`` passes)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, socket.timeout):
        pass
    except ConnectionResetError:
        pass
    return data


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# ---- a request id names one request -------------------------------------------------------------------------------


def test_a_reused_request_id_never_returns_another_requests_answer(deployments):
    small = deployments["small_cnn"]
    route = small.routes[0]
    request_id = new_request_id()
    first_x, other_x = _input(small, 1, seed=1), _input(small, 1, seed=2)
    first = _frame(small, route, first_x, request_id=request_id)
    with ServerThread(_engine(deployments), token=TOKEN) as srv, \
            httpx.Client(base_url=srv.url, headers=AUTH, timeout=30) as http:
        answer = http.post("/v1/infer", content=first)
        assert answer.status_code == 200
        assert http.post("/v1/infer", content=first).content == answer.content  # a true retry: the same bytes
        for changed in (_frame(small, route, other_x, request_id=request_id),  # another image
                        _frame(small, small.routes[1], other_x, request_id=request_id),  # another route
                        _frame(small, route, _input(small, 3, seed=1), request_id=request_id),  # other rows
                        _frame(small, route, first_x, request_id=request_id, top_k=3)):  # another top-k
            reply = http.post("/v1/infer", content=changed)
            assert reply.status_code == 409, reply.text
            assert "already used for another request" in reply.json()["error"]
        # The same id from another client (another address) is that client's own request: its own answer.
        with httpx.Client(base_url=srv.url, headers=AUTH, timeout=30,
                          transport=httpx.HTTPTransport(local_address="127.0.0.2")) as elsewhere:
            theirs = elsewhere.post("/v1/infer", content=_frame(small, route, other_x, request_id=request_id))
        assert theirs.status_code == 200
        (out,) = unpack(Response.from_bytes(theirs.content).payload)
        assert torch.allclose(out, small.model(other_x), atol=1e-5)
        # Over the WebSocket too: the conflict is a response frame with its own status.
        with connect(srv.url.replace("http", "ws") + "/v1/stream", additional_headers=AUTH) as ws:
            ws.send(_frame(small, route, other_x, request_id=request_id))
            response = Response.from_bytes(ws.recv(timeout=10))
        assert response.status == Status.CONFLICT and response.request_id == request_id


# ---- exhaustion ------------------------------------------------------------------------------------------------------


def test_slowloris_sockets_and_slow_uploads_are_cut_off(deployments):
    small = deployments["small_cnn"]
    frame = _frame(small, small.routes[0], _input(small, 1))
    with ServerThread(_engine(deployments), token=TOKEN, guards=FAST, client_concurrency=1) as srv:
        port = _port(srv.url)
        silent = socket.create_connection(("127.0.0.1", port))  # connects, never says a word
        trickle = socket.create_connection(("127.0.0.1", port))  # sends its headers a byte at a time
        started = time.monotonic()
        trickle.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for _ in range(8):
            try:
                trickle.sendall(b"X")
            except OSError:
                break
            time.sleep(0.1)
        assert b" 408 " in _reply(trickle, 3)[:20]
        assert b" 408 " in _reply(silent, 3)[:20]
        assert time.monotonic() - started < 4
        # A body that trickles in holds its client's only slot for at most the body deadline.
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall((f"POST /v1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                      f"Content-Length: {len(frame)}\r\n\r\n").encode() + frame[:10])
        started = time.monotonic()
        data = _reply(slow, 5)
        assert b" 408 " in data[:20] and b"did not arrive within 0.5 s" in data
        assert time.monotonic() - started < 3
        with httpx.Client(base_url=srv.url, headers=AUTH, timeout=10) as http:  # the slot is free again
            assert http.post("/v1/infer", content=frame).status_code == 200
        for sock in (silent, trickle, slow):
            sock.close()


def test_connections_beyond_the_cap_are_refused_at_once(deployments):
    small = deployments["small_cnn"]
    guards = Guards(max_connections=8, header_timeout_s=30)
    with ServerThread(_engine(deployments), token=TOKEN, guards=guards) as srv:
        held = [socket.create_connection(("127.0.0.1", _port(srv.url))) for _ in range(8)]
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", _port(srv.url)))
        started = time.monotonic()
        data = _reply(extra, 5)
        assert b" 503 " in data[:20] and b"holds 8 connections" in data and time.monotonic() - started < 2
        for sock in held + [extra]:
            sock.close()
        time.sleep(0.2)
        with httpx.Client(base_url=srv.url, headers=AUTH, timeout=10) as http:  # capacity comes back
            assert http.post("/v1/infer", content=_frame(small, small.routes[0], _input(small, 1))).status_code == 200


def test_bodies_are_capped_by_the_largest_valid_request_of_the_plan(deployments):
    small = deployments["small_cnn"]
    limit = request_limit([small], 64)
    largest = max(sum(torch.Size(s[1:]).numel() for s in r.sent_shapes) for r in small.routes)
    assert limit == largest * 64 * 4 + (64 << 10) and limit < (4 << 20)  # not 64 MiB
    with ServerThread(_engine(deployments, max_request_bytes=limit), token=TOKEN) as srv, \
            httpx.Client(base_url=srv.url, headers=AUTH, timeout=30) as http:
        for route in small.routes:  # the largest valid request of every route still fits
            reply = http.post("/v1/infer", content=_frame(small, route, _input(small, 64, seed=3)))
            assert reply.status_code == 200, reply.text
        assert http.post("/v1/infer", content=b"\0" * (limit + 1)).status_code == 413
        with connect(srv.url.replace("http", "ws") + "/v1/stream", additional_headers=AUTH) as ws:
            with pytest.raises(ConnectionClosed) as closed:  # over the WebSocket's message cap: closed
                ws.send(b"\0" * (limit + 1))  # (the close may already interrupt the send)
                ws.recv(timeout=10)
        assert closed.value.rcvd is None or closed.value.rcvd.code == 1009


def test_an_idle_or_trickling_websocket_is_closed(deployments):
    with ServerThread(_engine(deployments), token=TOKEN, guards=FAST) as srv:
        started = time.monotonic()
        with connect(srv.url.replace("http", "ws") + "/v1/stream", additional_headers=AUTH) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert time.monotonic() - started < 5


# ---- web pages ------------------------------------------------------------------------------------------------------


def test_a_tokenless_loopback_server_refuses_web_pages_and_rebound_hosts(deployments):
    small = deployments["small_cnn"]
    frame = _frame(small, small.routes[0], _input(small, 1))
    with ServerThread(_engine(deployments), token=None) as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
        # CSRF: a page elsewhere POSTs a "simple" text/plain request (no preflight).
        csrf = http.post("/v1/infer", content=frame, headers={"Origin": "http://evil.example",
                                                              "Content-Type": "text/plain"})
        assert csrf.status_code == 403 and "--allow-origin http://evil.example" in csrf.json()["error"]
        # DNS rebinding: evil.example now resolves to 127.0.0.1, so the browser sends its name as Host.
        rebound = http.get("/v1/models", headers={"Host": f"evil.example:{_port(srv.url)}"})
        assert rebound.status_code == 403 and "not this server's" in rebound.json()["error"]
        # A cross-origin WebSocket (browsers send Origin; CORS does not apply to WebSockets).
        with pytest.raises(InvalidStatus) as refused:
            connect(srv.url.replace("http", "ws") + "/v1/stream", origin="http://evil.example")
        assert refused.value.response.status_code == 403
        # Programs (no Origin), the server's own pages (same origin) and loopback names are served.
        assert http.post("/v1/infer", content=frame).status_code == 200
        assert http.get("/v1/models", headers={"Origin": srv.url}).status_code == 200
        assert http.get("/v1/models", headers={"Host": f"localhost:{_port(srv.url)}"}).status_code == 200
        with connect(srv.url.replace("http", "ws") + "/v1/stream", origin=srv.url) as ws:
            ws.send(frame)
            assert Response.from_bytes(ws.recv(timeout=10)).status == Status.OK


def test_allowed_origins_get_cors_answers(deployments):
    small = deployments["small_cnn"]
    page = "https://app.example"
    guards = Guards(allow_origins=(page,))
    with ServerThread(_engine(deployments), token=TOKEN, guards=guards) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as http:
        preflight = http.options("/v1/infer", headers={"Origin": page, "Access-Control-Request-Method": "POST",
                                                       "Access-Control-Request-Headers": "authorization"})
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == page
        reply = http.post("/v1/infer", content=_frame(small, small.routes[0], _input(small, 1)),
                          headers={**AUTH, "Origin": page})
        assert reply.status_code == 200 and reply.headers["access-control-allow-origin"] == page
        assert http.get("/v1/models", headers={**AUTH, "Origin": "https://other.example"}).status_code == 403


# ---- tokens ---------------------------------------------------------------------------------------------------------


def test_a_token_file_others_can_read_is_refused(plans, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    for command in (("serve", str(plans["small_cnn"]), "--token-file", str(token_file), "--port", "0"),
                    ("infer", str(plans["small_cnn"]), "--server", "http://127.0.0.1:9", "--token-file",
                     str(token_file))):
        assert_user_error(edgesplit_in_process(*command), f"chmod 600 {token_file}")


def test_the_bearer_scheme_is_case_insensitive_and_the_token_is_not(deployments):
    assert bearer_matches(f"bearer {TOKEN}", TOKEN) and bearer_matches(f"BEARER  {TOKEN}", TOKEN)
    assert not bearer_matches(f"Bearer {TOKEN.upper()}", TOKEN) and not bearer_matches(f"Basic {TOKEN}", TOKEN)
    small = deployments["small_cnn"]
    with ServerThread(_engine(deployments), token=TOKEN) as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
        frame = _frame(small, small.routes[0], _input(small, 1))
        assert http.post("/v1/infer", content=frame, headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
        assert http.post("/v1/infer", content=frame, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401


def test_serve_refuses_tls_files_that_do_not_load(plans, tmp_path):
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    with pytest.raises(ServerError, match="needs both --tls-cert"):
        check_tls(tmp_path / "cert.pem", None)
    with pytest.raises(ServerError, match="cannot read"):
        check_tls(tmp_path / "none.pem", tmp_path / "key.pem")
    assert_user_error(edgesplit("serve", str(plans["small_cnn"]), "--tls-cert", str(tmp_path / "cert.pem"),
                                "--tls-key", str(tmp_path / "key.pem")), "do not load as a PEM certificate")
