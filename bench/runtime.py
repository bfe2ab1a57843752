"""What does the runtime cost, and what does it buy? Three measurements through a real `edgesplit serve` process.

1. Framework overhead: the client's end-to-end time for one image (head, encode, HTTP, server, decode, tail, the
   answer back) minus what split inference cannot avoid — the head, the tail, and a raw TCP transfer of the same
   request and response bytes over the same loopback (linkemu's echo server). Target: at most 1 ms or 5%,
   whichever is larger.
2. Server throughput with dynamic batching (max batch 32, max wait 2 ms) against without (max batch 1), at 1, 8
   and 32 concurrent clients (asyncio + httpx, one request in flight per client, fresh request ids), side by side
   in one run. Target: at least 3× at 32 clients for a small model.
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from rich.console import Console
from rich.table import Table

from edgesplit.codecs import unpack
from edgesplit.graph import trace
from edgesplit.intake import ModelRef, build_model, load_model, save_weights
from edgesplit.linkemu import EchoClient, EchoServer
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
    from edgesplit.zoo import ZOO

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
    from edgesplit.data import sample_images

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
                 threads: int = 1, prefix: list[str] = (), host: str = "127.0.0.1") -> None:
        token_file = folder / "token"
        token_file.write_text(TOKEN)
        self.port = free_port()
        self.url = f"http://{host}:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "edgesplit", "serve", str(plan_path), "--host",
                                      host, "--port", str(self.port), "--token-file", str(token_file),
                                      "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
                                      "--log-level", "warning"],
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


def overhead(deployment, url: str, repeats: int) -> list[dict]:  # noqa: ANN001
    """Per route: the client's end-to-end time against head + tail + a raw TCP transfer of the same bytes."""
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
                target = max(1.0, 0.05 * unavoidable)
                rows.append({"route": route.label, "transport": "websocket" if stream else "http", "request_bytes": len(frame), "response_bytes": response_bytes,
                             "end_to_end_ms": total, "head_ms": median_ms(head), "tail_ms": median_ms(tail),
                             "raw_transfer_ms": median_ms(transfer), "overhead_ms": extra,
                             "overhead_fraction": extra / unavoidable, "target_ms": target, "met": extra <= target})
    finally:
        echo.shutdown()
        echo.server_close()
    return rows


def _limits():  # noqa: ANN202
    from edgesplit.codecs import DecodeLimits
    return DecodeLimits()


# ---- 2. throughput with and without dynamic batching ---------------------------------------------------------


async def _load(url: str, model_id: str, route, payload: bytes, clients: int, seconds: float,  # noqa: ANN001
                transport: str) -> dict:
    """``clients`` concurrent clients, each with one request in flight, for ``seconds``; each its own client id."""
    import websockets

    latencies: list[float] = []
    errors = 0
    batch_sizes: list[int] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, limits=limits, timeout=30) as http:
        stop = time.perf_counter() + seconds

        async def exchange_http(frame: bytes, number: int) -> Response | None:
            answer = await http.post(url + "/v1/infer", content=frame, headers={"X-Edgesplit-Client": f"c{number}"})
            return Response.from_bytes(answer.content) if answer.status_code == 200 else None

        async def worker(number: int) -> None:
            nonlocal errors
            socket = None
            if transport == "websocket":
                socket = await websockets.connect("ws" + url.removeprefix("http") + "/v1/stream", max_size=None,
                                                  additional_headers={"Authorization": f"Bearer {TOKEN}",
                                                                      "X-Edgesplit-Client": f"c{number}"})
            try:
                while time.perf_counter() < stop:
                    frame = Request(new_request_id(), model_id, route.route_id, payload, route.width).to_bytes()
                    start = time.perf_counter()
                    if socket is None:
                        response = await exchange_http(frame, number)
                    else:
                        await socket.send(frame)
                        response = Response.from_bytes(await socket.recv())
                    if response is None or response.status != 0:
                        errors += 1
                        continue
                    latencies.append(time.perf_counter() - start)
                    batch_sizes.append(response.batch_size)
            finally:
                if socket is not None:
                    await socket.close()

        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(clients)))
        elapsed = time.perf_counter() - started
    return {"clients": clients, "requests": len(latencies), "errors": errors, "rps": len(latencies) / elapsed,
            "p50_ms": percentile_ms(latencies, 0.5), "p99_ms": percentile_ms(latencies, 0.99),
            "mean_batch": statistics.fmean(batch_sizes) if batch_sizes else 0.0}


def throughput(plan_path: Path, folder: Path, deployment, route, concurrency: list[int], seconds: float,  # noqa: ANN001
               threads: int) -> list[dict]:
    x = torch.rand(1, *deployment.plan.input_shape[1:], generator=torch.Generator().manual_seed(2))
    payload = route.encode(route.device_side(x))
    rows = []
    for name, max_batch in (("batching", 32), ("no batching", 1)):
        with ServeProcess(plan_path, folder, max_batch=max_batch, threads=threads) as server:
            for transport in ("http", "websocket"):
                for clients in concurrency:
                    result = asyncio.run(_load(server.url, deployment.model_id, route, payload, clients, seconds,
                                               transport))
                    rows.append({"server": name, "transport": transport, "route": route.label, **result})
    for row in rows:
        if row["server"] == "batching":
            without = next(r for r in rows if r["server"] == "no batching" and r["clients"] == row["clients"]
                           and r["transport"] == row["transport"])
            row["speedup"] = row["rps"] / max(without["rps"], 1e-9)
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
    from edgesplit.linkemu import RateLimitedLink, link_emulation_unavailable
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
            with ServeProcess(fixed_path, folder, max_batch=1, threads=args.threads) as server:
                rows = overhead(deployment, server.url, 50 if args.quick else 300)
            results["overhead"] = rows
            show("1. framework overhead (medians, ms)", rows,
                 ["route", "transport", "request_bytes", "end_to_end_ms", "head_ms", "tail_ms", "raw_transfer_ms", "overhead_ms",
                  "overhead_fraction", "target_ms", "met"])
        if 2 in parts:
            whole_model = deployment.routes[-1]  # the whole model on the server: the most work per request
            rows = throughput(fixed_path, folder, deployment, whole_model, [1, 8, 32], 2.0 if args.quick else 6.0,
                              args.threads)
            results["throughput"] = rows
            show(f"2. server throughput ({whole_model.label}), dynamic batching vs none", rows,
                 ["server", "transport", "clients", "requests", "errors", "rps", "p50_ms", "p99_ms", "mean_batch",
                  "speedup"])
        if 3 in parts:
            slow = f"host/{args.device_slowdown:g}"
            planned = make_plan(weights, "resnet8", slow, None)
            data = planned.model_dump()
            planned_path = folder / "adaptive-plan.json"
            planned_path.write_text(planned.model_dump_json())
            bandwidths = [1.0, 20.0] if args.quick else [0.5, 2.0, 8.0, 30.0, 100.0]
            rows, kind = adaptive(planned_path, folder, planned, bandwidths, args.device_slowdown,
                                  20 if args.quick else 60, args.threads)
            results["adaptive"] = {"link": kind, "device": slow, "switch_table": data["switch_table"], "rows": rows}
            show(f"3. median latency per plan (ms), device {slow}, link: {kind}", rows,
                 ["mbps", "plan", "median_ms", "mean_ms", "switches", "last_plan", "estimate_mbps"])
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
