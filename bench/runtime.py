"""What does the runtime cost, and what does it buy? Three measurements through a real `edgesplit serve` process.

1. Framework overhead: the client's end-to-end time for one image (head, encode, HTTP, server, decode, tail, the
   answer back) minus what split inference cannot avoid — the head, the tail, and a raw TCP transfer of the same
   request and response bytes over the same loopback (linkemu's echo server). Target: at most 1 ms or 5%,
   whichever is larger. Also against a *bare split*: the head, a raw TCP socket to a process that runs the tail,
   and the answer's bytes back, as one request (the same work in the rhythm of a real request, no framework).
   Also (1b) the Ray Serve path's extra time per request over `edgesplit serve` (when Ray is installed).
2. Server throughput with dynamic batching (max batch 32, max wait 2 ms) against without (max batch 1), at 1, 8
   and 32 concurrent clients, both servers up at once, each cell in alternating blocks on each. The load
   generator is up to 4 processes, each holding several connections with one request in flight each, sending
   pre-encoded frames with fresh request ids (no torch per request). Target: at least 3× at 32 clients.
   (2b) A lone client's latency on each server, alternating blocks, raw keep-alive HTTP: never a loss.
3. End-to-end latency across uplink bandwidths: the adaptive client (follows the plan's switch table from its own
   bandwidth estimate) against every fixed route, all-device and all-server, through the real server. The link
   is a network namespace with a tbf rate limit when this machine allows it (root, ip, tc), else a throttled
   transport that paces the upload on loopback. The device is this host slowed down ×--device-slowdown (the head
   and the local model sleep for the extra time), as the plan assumes (``--device host/F``).

The model is the zoo's resnet8 with seeded random weights (speed does not depend on training). Each part prints
a table; everything goes to JSON (default bench/results/runtime.json).

    python bench/runtime.py [--quick] [--parts 1,2,3] [--threads 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from rich.console import Console
from rich.table import Table

from edgesplit.model.graph import trace
from edgesplit.model.intake import ModelRef, build_model, load_model, save_weights
from linkemu import EchoClient, EchoServer
from edgesplit.plan import plan_model
from edgesplit.plan.schema import PlanReport, SwitchRange
from edgesplit.profile import machine_info
from edgesplit.runtime.deployment import load_deployment
from edgesplit.runtime.wire import Request, Response, new_request_id

RESULTS = Path(__file__).parent / "results"
console = Console(width=None if sys.stdout.isatty() else 140)
TOKEN = "bench-token-" + "x" * 20


# ---- setup ---------------------------------------------------------------------------------------------------


def seeded_model(folder: Path, name: str = "resnet8") -> Path:
    from edgesplit.model.zoo import ZOO

    torch.manual_seed(0)
    shape = tuple(ZOO[name].input_shape)
    ref = ModelRef(name, {"in_channels": shape[1]})
    path = folder / f"{name}.safetensors"
    save_weights(build_model(ref).eval(), path, ref, shape)
    return path


def make_plan(weights: Path, name: str, device: str, routes: list[tuple[float, float, dict]] | None) -> PlanReport:
    """A real plan of the model; with ``routes``, its switch table replaced by those (low, high, fields) rows.

    The link is what the emulated one is: symmetric, no added delay; PNG/JPEG are costed on the bundled photos.
    """
    from edgesplit.model.data import sample_images

    loaded = load_model(name, weights=weights)
    traced = trace(loaded.module, loaded.example_input)
    photos = sample_images("photos", tuple(loaded.example_input.shape[1:]))
    plan = plan_model(traced, device=device, server="host", link="custom:up=10,down=10,rtt=0.2,tx=1,rx=1",
                      codec=["fp32", "int8", "int4+zstd"], samples=photos, name=name,
                      model_ref={**loaded.ref.to_json(), "weights": str(weights)}, host_runs=5, progress=False)
    if routes is None:
        return plan
    rows = [SwitchRange(low_mbps=low, high_mbps=high, label=fields["label"], kind=fields.get("kind", "split"),
                        position=None, cut_index=fields.get("cut_index"), head_nodes=None, codec=fields.get("codec"))
            for low, high, fields in routes]
    data = plan.model_dump()
    data["switch_table"] = [row.model_dump() for row in rows]
    return PlanReport.model_validate(data)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """`python -m edgesplit serve PLAN` in a subprocess on 127.0.0.1, ready when /readyz answers 200."""

    def __init__(self, plan_path: Path, folder: Path, *, max_batch: int, max_wait_ms: float = 2.0,
                 threads: int = 1, prefix: list[str] = (), host: str = "127.0.0.1", extra: list[str] = ()) -> None:
        token_file = folder / "token"
        if not token_file.exists():  # 0600 from the start: serve refuses a token file others can read
            os.close(os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            token_file.write_text(TOKEN)
        token_file.chmod(0o600)  # a token file others can read is refused
        self.port = free_port()
        self.url = f"http://{host}:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "edgesplit", "serve", str(plan_path), "--host",
                                      host, "--port", str(self.port), "--token-file", str(token_file),
                                      "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
                                      "--log-level", "warning", *extra],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"edgesplit serve exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("edgesplit serve did not become ready in 120 s")
            time.sleep(0.1)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def percentile_ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


def timed(action, repeats: int) -> list[float]:  # noqa: ANN001
    action()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return samples


# ---- 1. framework overhead -----------------------------------------------------------------------------------


_BARE_HEAD = struct.Struct("<III")  # route id, reply bytes, frame bytes


def bare_split_server(plan_path: Path, port_file: Path) -> None:
    """The least split inference can do, with no framework: read a length-prefixed frame from a raw TCP socket,
    run the route's tail (on tensors decoded once, before any request), write back as many bytes as edgesplit's
    answer has. Runs in its own process, like `edgesplit serve` (one torch thread)."""
    from edgesplit.plan.schema import load_plan

    torch.set_num_threads(1)
    deployment = load_deployment(load_plan(plan_path))
    x = torch.rand(1, *deployment.plan.input_shape[1:])
    tensors = {r.route_id: r.decode(r.encode(r.device_side(x)), _limits(), 64) for r in deployment.routes}
    listener = socket.create_server(("127.0.0.1", 0))
    port_file.write_text(str(listener.getsockname()[1]))
    with torch.no_grad():
        while True:
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with conn:
                while True:
                    head = _read_exactly(conn, _BARE_HEAD.size)
                    if head is None:
                        break
                    route_id, reply, size = _BARE_HEAD.unpack(head)
                    _read_exactly(conn, size)
                    deployment.route(route_id).server_side(tensors[route_id])
                    conn.sendall(bytes(reply))


def _read_exactly(conn: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


class BareSplit:
    """A client of ``bare_split_server``: the head here, the frame's bytes there, the tail there, the answer's
    bytes back — head + transfer + tail as one request, in the same rhythm as a real request."""

    def __init__(self, plan_path: Path, folder: Path, threads: int) -> None:
        port_file = folder / "bare-port"
        port_file.unlink(missing_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen([sys.executable, __file__, "--bare-server", str(plan_path), str(port_file)],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not port_file.exists() or not port_file.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the bare split server did not start: {self.proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        self.sock = socket.create_connection(("127.0.0.1", int(port_file.read_text())))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def request(self, route, x: torch.Tensor, frame: bytes, reply: int) -> None:  # noqa: ANN001
        with torch.no_grad():
            route.device_side(x)
        self.sock.sendall(_BARE_HEAD.pack(route.route_id, reply, len(frame)) + frame)
        _read_exactly(self.sock, reply)

    def close(self) -> None:
        self.sock.close()
        self.proc.terminate()
        self.proc.wait(30)


def overhead(deployment, url: str, repeats: int, bare: BareSplit | None = None) -> list[dict]:  # noqa: ANN001
    """Per route: the client's end-to-end time against head + tail + a raw TCP transfer of the same bytes, each
    timed alone (tight loops), and against ``bare`` — the same three done as one request over a raw socket."""
    from edgesplit.runtime.client import Client

    x = torch.rand(1, *deployment.plan.input_shape[1:], generator=torch.Generator().manual_seed(1))
    rows = []
    echo = EchoServer("127.0.0.1", 0)
    echo.start_thread()
    try:
        with EchoClient("127.0.0.1", echo.port) as raw:
            for route, stream in [(r, s) for r in deployment.routes for s in (False, True)]:
                with Client(deployment, url, TOKEN, fallback=False, route=route.label, stream=stream) as client:
                    client.infer(x)
                    end_to_end = timed(lambda: client.infer(x), repeats)
                tensors = route.device_side(x)
                frame = Request(new_request_id(), deployment.model_id, route.route_id, route.encode(tensors),
                                route.width).to_bytes()
                decoded = route.decode(route.encode(tensors), _limits(), 64)
                answer = httpx.post(url + "/v1/infer", content=frame, headers={"Authorization": f"Bearer {TOKEN}"})
                response_bytes = len(answer.content)
                head = timed(lambda: route.device_side(x), repeats)
                tail = timed(lambda: route.server_side(decoded), repeats)
                transfer = timed(lambda: raw.request(frame, response_bytes), repeats)
                unavoidable = median_ms(head) + median_ms(tail) + median_ms(transfer)
                total = median_ms(end_to_end)
                extra = total - unavoidable
                # The bars: WebSocket max(1 ms, 5%), HTTP 1.5 ms.
                target = 1.5 if not stream else max(1.0, 0.05 * unavoidable)
                row = {"route": route.label, "transport": "websocket" if stream else "http",
                       "request_bytes": len(frame), "response_bytes": response_bytes,
                       "end_to_end_ms": total, "head_ms": median_ms(head), "tail_ms": median_ms(tail),
                       "raw_transfer_ms": median_ms(transfer), "overhead_ms": extra,
                       "overhead_fraction": extra / unavoidable, "target_ms": target, "met": extra <= target}
                if bare is not None:
                    bare_ms = median_ms(timed(lambda: bare.request(route, x, frame, response_bytes), repeats))
                    # the same target, against head + transfer + tail done as one request with no framework
                    row |= {"bare_split_ms": bare_ms, "overhead_vs_bare_ms": total - bare_ms,
                            "target_vs_bare_ms": 1.5 if not stream else max(1.0, 0.05 * bare_ms)}
                    row["met_vs_bare"] = row["overhead_vs_bare_ms"] <= row["target_vs_bare_ms"]
                rows.append(row)
    finally:
        echo.shutdown()
        echo.server_close()
    return rows


def ray_serve_cost(deployment, plan_path: Path, url: str, repeats: int, rounds: int = 5) -> dict | None:  # noqa: ANN001
    """The extra time per request of the Ray Serve path (`edgesplit serve --ray`: Serve's proxy, then the same
    app and engine in a replica) over `edgesplit serve`, one client, HTTP, the whole model on the server; the two
    servers run at once and are timed in alternating blocks. None when Ray is not installed."""
    try:
        import ray
        from ray import serve
    except ImportError:
        return None
    from edgesplit.runtime import ray_serve
    from edgesplit.runtime.client import Client

    route = deployment.route_for_label("all on server (fp32 tensor)")
    x = torch.rand(1, *deployment.plan.input_shape[1:], generator=torch.Generator().manual_seed(4))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        started = time.perf_counter()
        app = ray_serve.run(plan_path, port=0, token=TOKEN, max_batch=32, log_level=None, blocking=False)
        start_s = time.perf_counter() - started
        samples: dict[str, list[float]] = {"serve": [], "ray": []}
        with Client(deployment, url, TOKEN, fallback=False, route=route.label) as plain, \
                Client(deployment, app.url, TOKEN, fallback=False, route=route.label, timeout_s=30) as served:
            for client in (plain, served):
                timed(lambda c=client: c.infer(x), 20)  # warm both
            for _ in range(rounds):
                for name, client in (("serve", plain), ("ray", served)):
                    samples[name] += timed(lambda c=client: c.infer(x), repeats // rounds)
        app.shutdown()
    finally:
        serve.shutdown()
        ray.shutdown()
    plain_ms, ray_ms = median_ms(samples["serve"]), median_ms(samples["ray"])
    return {"route": route.label, "transport": "http", "requests": len(samples["ray"]), "serve_ms": plain_ms,
            "ray_serve_ms": ray_ms, "extra_ms": ray_ms - plain_ms, "ray_start_s": start_s}


def _limits():  # noqa: ANN202
    from edgesplit.codecs import DecodeLimits
    return DecodeLimits()


# ---- 2. throughput with and without dynamic batching ---------------------------------------------------------


def _load_process(url: str, model_id: str, route_id: int, width: float | None, payload: bytes, names: list[int],
                  transport: str, seconds: float, out, go, start) -> None:  # noqa: ANN001
    """One load-generator process: a connection per client in ``names``, each with one request in flight.

    Frames are pre-encoded (only the 16-byte request id is fresh per request, no torch), HTTP is written and read
    by hand on asyncio streams (keep-alive, one write per request) and the WebSocket is websockets' asyncio
    client without compression, so that the generator costs far less per request than the server.
    """
    import websockets

    host, port = url.removeprefix("http://").rsplit(":", 1)
    latencies: list[float] = []
    batch_sizes: list[int] = []
    errors = 0
    auth = f"Bearer {TOKEN}"
    connected = 0

    async def started() -> float:
        """Once every connection of this process is open: tell the parent, wait for its start time."""
        nonlocal connected
        connected += 1
        if connected == len(names):
            out.put("ready")
        await asyncio.to_thread(go.wait, 120)
        await asyncio.sleep(max(start.value - time.time(), 0))
        return start.value

    async def http_client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        head = (f"POST /v1/infer HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: {auth}\r\n"
                f"Content-Type: application/x-edgesplit-frame\r\nContent-Length: ").encode()
        start_at = await started()
        while time.time() < start_at + seconds:
            frame = Request(new_request_id(), model_id, route_id, payload, width).to_bytes()
            began = time.perf_counter()
            writer.write(head + str(len(frame)).encode() + b"\r\n\r\n" + frame)
            status_line, _, rest = (await reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in rest.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            body = await reader.readexactly(length)
            if status_line.split()[1] != b"200":
                errors += 1
                continue
            latencies.append(time.perf_counter() - began)
            batch_sizes.append(Response.from_bytes(body).batch_size)
        writer.close()

    async def ws_client() -> None:
        nonlocal errors
        async with websockets.connect("ws" + url.removeprefix("http") + "/v1/stream", max_size=None,
                                      compression=None, additional_headers={"Authorization": auth}) as socket:
            start_at = await started()
            while time.time() < start_at + seconds:
                frame = Request(new_request_id(), model_id, route_id, payload, width).to_bytes()
                began = time.perf_counter()
                await socket.send(frame)
                response = Response.from_bytes(await socket.recv())
                if response.status != 0:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - began)
                batch_sizes.append(response.batch_size)

    async def main() -> None:
        client = http_client if transport == "http" else ws_client
        await asyncio.gather(*(client() for _ in names))

    try:
        asyncio.run(main())
        out.put({"latencies": latencies, "batch_sizes": batch_sizes, "errors": errors})
    except Exception as error:  # noqa: BLE001 - the parent reports it
        out.put({"latencies": latencies, "batch_sizes": batch_sizes, "errors": errors + 1,
                 "failure": f"{type(error).__name__}: {error}"})


def _load(url: str, model_id: str, route, payload: bytes, clients: int, seconds: float,  # noqa: ANN001
          transport: str, processes: int) -> dict:
    """``clients`` concurrent clients (one request in flight each) spread over up to ``processes`` processes."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch threads or state forked
    out, go, start = context.Queue(), context.Event(), context.Value("d", 0.0)
    count = max(1, min(processes, clients))
    groups = [list(range(clients))[i::count] for i in range(count)]
    workers = [context.Process(target=_load_process, args=(url, model_id, route.route_id, route.width, payload,
                                                           group, transport, seconds, out, go, start), daemon=True)
               for group in groups]
    for worker in workers:
        worker.start()
    for _ in workers:  # every process started and connected before the clock starts
        if out.get(timeout=120) != "ready":
            raise RuntimeError("a load-generator process failed before it connected")
    start.value = time.time() + 0.2
    go.set()
    parts = [out.get(timeout=seconds + 60) for _ in workers]
    for worker in workers:
        worker.join(10)
    latencies = [s for part in parts for s in part["latencies"]]
    batch_sizes = [s for part in parts for s in part["batch_sizes"]]
    failures = [part["failure"] for part in parts if "failure" in part]
    return {"clients": clients, "processes": count, "requests": len(latencies), "latencies": latencies,
            "errors": sum(part["errors"] for part in parts), "rps": len(latencies) / seconds,
            "p50_ms": percentile_ms(latencies, 0.5) if latencies else None,
            "p99_ms": percentile_ms(latencies, 0.99) if latencies else None,
            "mean_batch": statistics.fmean(batch_sizes) if batch_sizes else 0.0,
            **({"failures": failures} if failures else {})}


def _merged(parts: list[dict], seconds: float) -> dict:
    """Blocks of one (server, transport, clients) cell as one: requests/s over all of them, latency percentiles
    over every request (each block keeps its latencies for this)."""
    latencies = [s for part in parts for s in part.pop("latencies")]
    batches = [part["mean_batch"] * part["requests"] for part in parts]
    requests = sum(part["requests"] for part in parts)
    return {"clients": parts[0]["clients"], "processes": parts[0]["processes"], "blocks": len(parts),
            "requests": requests, "errors": sum(part["errors"] for part in parts), "rps": requests / seconds,
            "p50_ms": percentile_ms(latencies, 0.5) if latencies else None,
            "p99_ms": percentile_ms(latencies, 0.99) if latencies else None,
            "mean_batch": sum(batches) / requests if requests else 0.0,
            **({"failures": [f for part in parts for f in part.get("failures", [])]}
               if any("failures" in part for part in parts) else {})}


def throughput(plan_path: Path, folder: Path, deployment, route, concurrency: list[int], seconds: float,  # noqa: ANN001
               threads: int, processes: int = 4, rounds: int = 3) -> list[dict]:
    """Requests/s with dynamic batching (max 32, 2 ms) and without (max 1), side by side: both servers run at
    once and every (transport, clients) cell is measured in ``rounds`` alternating blocks on each."""
    x = torch.rand(1, *deployment.plan.input_shape[1:], generator=torch.Generator().manual_seed(2))
    payload = route.encode(route.device_side(x))
    rows = []
    most = str(2 * max(concurrency))  # every client its own slot: the per-client cap is not what is measured
    with ServeProcess(plan_path, folder, max_batch=32, threads=threads,
                      extra=["--client-concurrency", most]) as batching, \
            ServeProcess(plan_path, folder, max_batch=1, threads=threads,
                         extra=["--client-concurrency", most]) as single:
        servers = [("batching", batching), ("no batching", single)]
        for transport in ("websocket", "http"):
            for clients in concurrency:
                # Alternating blocks (AB, BA, AB): a drift of the shared machine during the cell hits both alike.
                blocks = {name: [] for name, _ in servers}
                for round_ in range(rounds):
                    for name, server in servers if round_ % 2 == 0 else servers[::-1]:
                        blocks[name].append(_load(server.url, deployment.model_id, route, payload, clients,
                                                  seconds / rounds, transport, processes))
                for name, _ in servers:
                    rows.append({"server": name, "transport": transport, "route": route.label,
                                 **_merged(blocks[name], seconds)})
    for row in rows:
        if row["server"] == "batching":
            without = next(r for r in rows if r["server"] == "no batching" and r["clients"] == row["clients"]
                           and r["transport"] == row["transport"])
            row["speedup"] = row["rps"] / max(without["rps"], 1e-9)
    return rows


def lone_client(plan_path: Path, folder: Path, deployment, route, threads: int, rounds: int = 10,  # noqa: ANN001
                requests: int = 200) -> list[dict]:
    """One client, one request at a time, against the batching server and the one without, in alternating blocks
    (AB, BA, ...), half of the rounds with each server started first: does batching cost a lone client anything?
    HTTP over a raw keep-alive socket (one write per request, no client library) and a pre-encoded frame, so that
    only the servers differ."""
    x = torch.rand(1, *deployment.plan.input_shape[1:], generator=torch.Generator().manual_seed(3))
    payload = route.encode(route.device_side(x))

    def connect(url: str) -> tuple[socket.socket, bytes]:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        sock = socket.create_connection((host, int(port)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, f"POST /v1/infer HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {TOKEN}\r\n".encode()

    def one(sock: socket.socket, head: bytes, server_ms: list[float] | None = None) -> None:
        frame = Request(new_request_id(), deployment.model_id, route.route_id, payload, route.width).to_bytes()
        sock.sendall(head + f"Content-Length: {len(frame)}\r\n\r\n".encode() + frame)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        top, _, body = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in top.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += sock.recv(65536)
        if not top.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"the server answered {top.splitlines()[0]!r}")
        if server_ms is not None:  # the server's own time for it (the same engine path on both servers)
            server_ms.append(Response.from_bytes(body).server_ms)

    samples: dict[str, list[float]] = {"batching": [], "no batching": []}
    server_ms: dict[str, list[float]] = {"batching": [], "no batching": []}
    # In one run with both servers at max batch 32, the one started first was 9% slower (its place on the 2 cores,
    # not batching): half the rounds with each start order, pooled, so that the order favours neither.
    for order in (("batching", "no batching"), ("no batching", "batching")):
        servers = {}
        try:
            for name in order:
                servers[name] = ServeProcess(plan_path, folder, max_batch=32 if name == "batching" else 1,
                                             threads=threads)
            sockets = {name: connect(server.url) for name, server in servers.items()}
            for round_ in range(max(rounds // 2, 1)):
                for name in order if round_ % 2 == 0 else order[::-1]:
                    for _ in range(20):  # warm: the other server ran last
                        one(*sockets[name])
                    samples[name] += timed(lambda: one(*sockets[name], server_ms[name]), requests)
            for sock, _ in sockets.values():
                sock.close()
        finally:
            for server in servers.values():
                server.close()
    rows = [{"server": name, "transport": "http", "route": route.label, "requests": len(values),
             "median_ms": median_ms(values), "mean_ms": statistics.fmean(values) * 1e3,
             "server_ms_median": statistics.median(server_ms[name])} for name, values in samples.items()]
    rows[0]["ratio_vs_no_batching"] = rows[0]["median_ms"] / rows[1]["median_ms"]
    return rows


# ---- 3. adaptive client against fixed plans across bandwidths ------------------------------------------------


class Slowed(torch.nn.Module):
    """A module that takes ``factor`` times as long as it does on this host (it sleeps for the difference)."""

    def __init__(self, inner: torch.nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, *inputs):  # noqa: ANN002, ANN201
        start = time.perf_counter()
        result = self.inner(*inputs)
        time.sleep((self.factor - 1) * (time.perf_counter() - start))
        return result


def slowed_deployment(plan: PlanReport, factor: float):  # noqa: ANN201
    deployment = load_deployment(plan)
    for route in deployment.routes:
        route.split.head = Slowed(route.split.head, factor)
        if route.bottleneck is not None:
            raise SystemExit("part 3 does not slow bottleneck encoders; use plain codecs")
    deployment.model = Slowed(deployment.model, factor)
    return deployment


def adaptive(plan_path: Path, folder: Path, plan: PlanReport, bandwidths: list[float], factor: float,
             requests: int, threads: int) -> tuple[list[dict], str]:
    """Median latency per plan at each uplink rate: every fixed plan, all-device, and the adaptive client."""
    from linkemu import RateLimitedLink, link_emulation_unavailable
    from edgesplit.runtime.client import Client

    images = torch.rand(requests, 1, *plan.input_shape[1:], generator=torch.Generator().manual_seed(3))
    images = (images * 255).round() / 255
    labels = [row.label for row in plan.switch_table]
    labels = list(dict.fromkeys(labels + ["all on device"]))
    reason = link_emulation_unavailable()
    kind = "netns-tbf" if reason is None else f"throttled transport ({reason})"
    rows = []
    for mbps in bandwidths:
        link = RateLimitedLink(mbps) if reason is None else None
        try:
            host = link.server_ip if link else "127.0.0.1"
            prefix = [link._ip, "netns", "exec", link.netns] if link else []
            transport = None if link else ThrottledTransport(mbps)
            with ServeProcess(plan_path, folder, max_batch=1, threads=threads, prefix=prefix, host=host) as server:
                for label in labels + ["adaptive"]:
                    deployment = slowed_deployment(plan, factor)
                    with Client(deployment, server.url, TOKEN, fallback=False, transport=transport,
                                route=None if label == "adaptive" else label) as client:
                        latencies, used = [], []
                        for image in images:
                            result = client.infer(image)
                            latencies.append(result.latency_ms)
                            used.append(result.label)
                        settled = latencies[len(latencies) // 2:]  # after the estimate has converged
                        rows.append({"mbps": mbps, "plan": label, "median_ms": statistics.median(settled),
                                     "mean_ms": statistics.fmean(latencies),
                                     "switches": len(client.stats.switches),
                                     "last_plan": used[-1], "estimate_mbps": client.mbps})
        finally:
            if link:
                link.close()
    return rows, kind


def adaptive_verdict(rows: list[dict]) -> list[dict]:
    """Per uplink rate: the best fixed plan's median, the adaptive client's, and whether it is within 5% of it."""
    verdict = []
    for mbps in dict.fromkeys(row["mbps"] for row in rows):
        fixed = [row for row in rows if row["mbps"] == mbps and row["plan"] != "adaptive"]
        best = min(fixed, key=lambda row: row["median_ms"])
        mine = next(row for row in rows if row["mbps"] == mbps and row["plan"] == "adaptive")
        ratio = mine["median_ms"] / best["median_ms"]
        verdict.append({"mbps": mbps, "best_fixed": best["plan"], "best_fixed_ms": best["median_ms"],
                        "adaptive_ms": mine["median_ms"], "adaptive_plan": mine["last_plan"],
                        "switches": mine["switches"], "ratio": ratio, "within_5pct": ratio <= 1.05})
    return verdict


class ThrottledTransport(httpx.HTTPTransport):
    """Loopback with the upload paced to ``mbps`` (sleeps for the request body's airtime)."""

    def __init__(self, mbps: float) -> None:
        super().__init__()
        self.mbps = mbps

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        time.sleep(len(body) * 8 / (self.mbps * 1e6))
        return super().handle_request(request)


# ---- main ----------------------------------------------------------------------------------------------------


def main() -> None:
    if sys.argv[1:2] == ["--bare-server"]:  # the baseline server of part 1, started by BareSplit
        bare_split_server(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, shorter loads, two bandwidths")
    parser.add_argument("--parts", default="1,2,3")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the server and the client")
    parser.add_argument("--device-slowdown", type=float, default=8.0, help="part 3: the device is this host ×F slower")
    parser.add_argument("--json", type=Path, default=RESULTS / "runtime.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = {int(p) for p in args.parts.split(",")}
    results: dict = {"machine": machine_info(), "threads": args.threads, "quick": args.quick}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        weights = seeded_model(folder)
        fixed = make_plan(weights, "resnet8", "host", [
            (0.1, 5, {"label": "cut 10 [int8]", "cut_index": 10, "codec": "int8"}),
            (5, 50, {"label": "cut 6 inside block 1 [fp32]", "cut_index": 6, "codec": "fp32"}),
            (50, 200, {"label": "all on server (png input)", "kind": "all-server"}),
            (200, 1000, {"label": "all on server (fp32 tensor)", "kind": "all-server"})])
        fixed_path = folder / "fixed-plan.json"
        fixed_path.write_text(fixed.model_dump_json())
        deployment = load_deployment(fixed)
        if 1 in parts:
            bare = BareSplit(fixed_path, folder, args.threads)
            try:
                with ServeProcess(fixed_path, folder, max_batch=1, threads=args.threads) as server:
                    rows = overhead(deployment, server.url, 50 if args.quick else 300, bare)
                    ray_row = ray_serve_cost(deployment, fixed_path, server.url, 100 if args.quick else 500)
            finally:
                bare.close()
            results["overhead"] = rows
            results["ray_serve"] = ray_row
            show("1. framework overhead (medians, ms)", rows,
                 ["route", "transport", "request_bytes", "end_to_end_ms", "head_ms", "tail_ms", "raw_transfer_ms",
                  "overhead_ms", "met", "bare_split_ms", "overhead_vs_bare_ms", "met_vs_bare"])
            if ray_row is not None:
                show("1b. the Ray Serve path's extra cost per request (medians, ms)", [ray_row],
                     ["route", "transport", "requests", "serve_ms", "ray_serve_ms", "extra_ms", "ray_start_s"])
        if 2 in parts:
            # the whole model on the server: the most work per request
            whole_model = deployment.route_for_label("all on server (fp32 tensor)")
            rows = throughput(fixed_path, folder, deployment, whole_model, [1, 8, 32], 2.0 if args.quick else 6.0,
                              args.threads)
            results["throughput"] = rows
            show(f"2. server throughput ({whole_model.label}), dynamic batching vs none", rows,
                 ["server", "transport", "clients", "requests", "errors", "rps", "p50_ms", "p99_ms", "mean_batch",
                  "speedup"])
            lone = lone_client(fixed_path, folder, deployment, whole_model, args.threads,
                               rounds=4 if args.quick else 10)
            results["lone_client"] = lone
            show("2b. one client, one request at a time: batching server vs none (alternating blocks, ms)", lone,
                 ["server", "transport", "requests", "median_ms", "mean_ms", "server_ms_median", "ratio_vs_no_batching"])
        if 3 in parts:
            slow = f"host/{args.device_slowdown:g}"
            planned = make_plan(weights, "resnet8", slow, None)
            data = planned.model_dump()
            planned_path = folder / "adaptive-plan.json"
            planned_path.write_text(planned.model_dump_json())
            bandwidths = [1.0, 20.0] if args.quick else [0.5, 2.0, 8.0, 30.0, 100.0]
            rows, kind = adaptive(planned_path, folder, planned, bandwidths, args.device_slowdown,
                                  20 if args.quick else 60, args.threads)
            verdict = adaptive_verdict(rows)
            results["adaptive"] = {"link": kind, "device": slow, "switch_table": data["switch_table"], "rows": rows,
                                   "verdict": verdict}
            show(f"3. median latency per plan (ms), device {slow}, link: {kind}", rows,
                 ["mbps", "plan", "median_ms", "mean_ms", "switches", "last_plan", "estimate_mbps"])
            show("3. adaptive client against the best fixed plan (target: within 5%)", verdict,
                 ["mbps", "best_fixed", "best_fixed_ms", "adaptive_plan", "adaptive_ms", "switches", "ratio",
                  "within_5pct"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str))
    console.print(f"results written to {args.json}")


def show(title: str, rows: list[dict], columns: list[str]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in ("route", "server", "transport", "plan", "last_plan")
                         else "right")
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console.print(table)


def _cell(value) -> str:  # noqa: ANN001
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return "" if value is None else str(value)


if __name__ == "__main__":
    main()
