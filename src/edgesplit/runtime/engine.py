"""The server's work, apart from HTTP: check a request frame, batch it with others on its route, run the tail.

`Engine.handle(frame) -> Response` is all a transport needs (FastAPI, WebSocket, Ray Serve). Requests on the
same route that arrive within ``max_wait_ms`` of each other share one forward pass (dynamic batching); a
request id seen recently is answered from memory, so a client's retry never runs the tail twice.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import sys
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch.utils import _pytree as pytree

from edgesplit.codecs import DecodeLimits, pack, parse_codec
from edgesplit.codecs.frame import MAX_NDIM, header as frame_header
from edgesplit.runtime.deployment import Deployment, Route
from edgesplit.runtime.wire import REQUEST_MAGIC, Request, Response, Status, WireError

__all__ = ["Engine", "Observer", "RequestRecord", "ServerLimits", "peek_request_id", "run_batch"]

log = logging.getLogger("edgesplit.server")
_RESULT_CODEC = parse_codec("fp32")



# A pass over this many rows or more feeds the tail's 4-D float inputs in channels-last layout when warm_up found
# that faster for the route (oneDNN's NHWC convolutions: resnet8's whole tail, 1 thread, 0.55 → 0.45 ms a row at 16
# rows, 0.65 → 0.43 at 32; no gain at 1 row, so a lone request keeps the plain layout).
_CHANNELS_LAST_ROWS = 8
_CHANNELS_LAST_GAIN = 0.9  # adopted when a trial pass in channels-last takes at most this fraction of the plain one
_CHANNELS_LAST_TRIAL_MS = 10.0  # only tails whose 1-row warm pass is at most this fast get the trial (warm-up time)

_INLINE_DECODE_COST = 384 << 10  # ~0.15 ms of decoding here (0.4 ns a cost unit): a thread hop costs ~0.11 ms


def _decodes_fast(route: Route, payload: bytes) -> bool:
    """Whether decoding ``payload`` is cheap enough for the event loop (~0.15 ms here, a thread hop and a half: a
    hop would cost the request more than the loop loses), judged from what its headers declare
    (``Route.decode_cost``: the bytes it decodes to and how), never from its compressed size: a 100-byte frame may
    declare 64 MiB of ANS symbols. Anything dearer goes to a thread."""
    return route.decode_cost(payload) <= _INLINE_DECODE_COST


@dataclass(frozen=True)
class ServerLimits:
    """What one server accepts and how it batches."""

    max_request_bytes: int = 64 << 20  # a whole request frame
    decode: DecodeLimits = DecodeLimits()  # what a payload may decode to (codec limits)
    max_rows: int = 64  # inputs in one request
    max_batch: int = 32  # inputs in one forward pass; 1 turns dynamic batching off
    max_wait_ms: float = 2.0  # how long the first request of a batch waits for others
    dedup_entries: int = 4096  # recent responses kept for retried request ids


@dataclass(frozen=True)
class RequestRecord:
    """One answered (or refused) request, as metrics and logs see it; '-' where the frame did not say."""

    request_id: str  # hex, or "-"
    model_id: str  # a model this server serves, or "-"
    route: str  # the route's label, or "-"
    status: Status
    seconds: float
    bytes_in: int
    bytes_out: int
    batch_size: int = 0
    client: str | None = None


class Observer:
    """Hooks for metrics and logs; the default does nothing."""

    def batch(self, route: Route, requests: int, rows: int, seconds: float) -> None: ...

    def response(self, route_label: str, status: Status, seconds: float, bytes_in: int, bytes_out: int) -> None: ...

    def request(self, record: RequestRecord) -> None:
        """Every request, with its model, route and client (transports also report the ones they refuse)."""


@dataclass
class _Job:
    request: Request
    route: Route
    tensors: list[torch.Tensor]
    arrived: float
    done: asyncio.Future = field(repr=False)

    @property
    def rows(self) -> int:
        return self.tensors[0].shape[0]


class _Seen:
    """The request a remembered answer belongs to: its frame, until ``seal`` replaces it by the frame's digest."""

    __slots__ = ("frame", "digest")

    def __init__(self, frame: bytes) -> None:
        self.frame: bytes | None = frame
        self.digest: bytes | None = None

    def seal(self) -> None:
        if self.frame is not None:
            self.digest, self.frame = _digest(self.frame), None

    def matches(self, frame: bytes) -> bool:
        """Whether ``frame`` is the very request seen (a retry), byte for byte or by digest."""
        return self.frame == frame if self.frame is not None else self.digest == _digest(frame)


def _digest(frame: bytes) -> bytes:
    return hashlib.blake2b(frame, digest_size=16).digest()


class Engine:
    """Holds the deployments and answers request frames; one forward pass at a time, batched per route.

    A request alone in the engine (nothing else in flight, no pass running) skips the batch queue; if its tail
    took at most ``inline_pass_ms`` in ``warm_up``, it even runs on the event loop, saving two thread hand-offs.
    """

    inline_pass_ms = 5.0  # a lone request's pass runs on the event loop when the tail's warm pass took ≤ this
    crowd_window_s = 0.5  # after two requests overlapped, every request goes through the batch queue this long
    promote_after = 8  # lone passes in a row within inline_pass_ms (hand-offs included) that move a tail to the loop

    def __init__(self, deployments: list[Deployment], limits: ServerLimits = ServerLimits(),
                 observer: Observer | None = None) -> None:
        self.models = {d.model_id: d for d in deployments}
        self.limits = limits
        self.observer = observer or Observer()
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgesplit-tail")
        self._queues: dict[tuple[str, int], asyncio.Queue[_Job]] = {}
        self._workers: list[asyncio.Task] = []
        # (client, model, request id) -> (the request frame until it is digested, else its digest; its answer)
        self._recent: OrderedDict[tuple[str | None, str, bytes], tuple[_Seen, Response]] = OrderedDict()
        # (client, model, request id) -> (the request frame, the future of the first try)
        self._pending: dict[tuple[str | None, str, bytes], tuple[bytes, asyncio.Future]] = {}
        self._in_flight = 0
        self._coming: dict[tuple[str, int], int] = {}  # requests per route being decoded (not yet queued)
        self._passes = 0  # forward passes running (on the compute thread or the event loop)
        self._crowd_until = -math.inf  # until when requests are batched even when one is alone
        self._inline: set[int] = set()  # id() of the routes whose tail a lone request runs on the event loop
        self._fast_passes: dict[int, int] = {}  # id() of a route not inline -> its lone passes in a row ≤ the bound
        self._channels_last: set[int] = set()  # id() of the routes whose big passes run in channels-last layout
        self._idle = asyncio.Event()
        self._idle.set()

    # ---- the one entry point ----------------------------------------------------------------------------------

    async def handle(self, frame: bytes, client: str | None = None) -> Response:
        """The response to one request frame; never raises for anything the frame contains.

        ``client`` (who sent it, as the transport knows them) only goes to the observer's request record.
        """
        started = time.perf_counter()
        self._in_flight += 1
        self._idle.clear()
        request_id, known_id, model_id, label = peek_request_id(frame), "-", "-", "-"
        try:
            request = Request.from_bytes(frame, self.limits.max_request_bytes)
            request_id, known_id = request.request_id, request.request_id.hex()
            if request.model_id not in self.models:
                self._unknown_model(request.model_id)
            model_id = request.model_id
            route = self.models[model_id].route(request.route_id)
            label = route.label
            response = await self._answer_once(request, route, started, frame, client)
        except WireError as error:
            response = _timed(Response.error(request_id, error.status, str(error)), started)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
        seconds, bytes_out = time.perf_counter() - started, len(response.payload) + 32
        self.observer.response(label, response.status, seconds, len(frame), bytes_out)
        self.observer.request(RequestRecord(known_id, model_id, label, response.status, seconds, len(frame),
                                            bytes_out, response.batch_size, client))
        return response

    def _unknown_model(self, model_id: str) -> None:
        known = ", ".join(sorted(self.models)) or "none"
        raise WireError(f"this server does not serve model '{model_id}' (it serves: {known})", Status.NOT_FOUND)

    async def _answer_once(self, request: Request, route: Route, started: float, frame: bytes,
                           client: str | None) -> Response:
        """The answer to ``request``, computed once per (client, model, request id): a retry of the same frame
        gets the first try's bytes; the same id with any other frame (image, route, rows, top-k) is a conflict."""
        key = (client, request.model_id, request.request_id)
        if key in self._recent:
            known, response = self._recent[key]
            if not known.matches(frame):
                return _conflict(request)
            self._recent.move_to_end(key)
            return response
        if key in self._pending:  # the same request retried while the first try still runs
            known, waiter = self._pending[key]
            if known != frame:
                return _conflict(request)
            return await asyncio.shield(waiter)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._pending[key] = (frame, waiter)
        response = None
        try:
            response = await self._answer(request, route, started)
        except WireError as error:
            response = Response.error(request.request_id, error.status, str(error))
        except Exception as error:  # noqa: BLE001 - a bug in a tail must not take the server down
            log.exception("request %s failed on %s", request.request_id.hex(), route.label)
            response = Response.error(request.request_id, Status.INTERNAL, f"the server failed on this request: {error}")
        finally:
            self._pending.pop(key, None)
            if response is None:  # cancelled: a retry waiting on this try must not wait forever
                waiter.cancel()
            else:  # a retry gets these very bytes, server time included
                response = _timed(response, started)
                waiter.set_result(response)
        if response.status == Status.OK:
            # The frame is digested after this answer has gone out (the next turn of the loop), not before it: a
            # 128 KiB frame takes 0.15 ms to digest. Until then the entry holds the frame and compares it whole.
            seen = _Seen(frame)
            self._recent[key] = (seen, response)
            loop.call_soon(seen.seal)
            while len(self._recent) > self.limits.dedup_entries:
                self._recent.popitem(last=False)
        return response

    async def _answer(self, request: Request, route: Route, started: float) -> Response:
        key = (request.model_id, route.route_id)
        self._coming[key] = self._coming.get(key, 0) + 1
        try:
            tensors = await self.decoded(request, route)
        finally:
            self._coming[key] -= 1
        if await self._lone():
            return await self._pass_alone(request, route, tensors)
        job = _Job(request, route, tensors, started, asyncio.get_running_loop().create_future())
        self._queue(request.model_id, route).put_nowait(job)
        return await job.done

    async def _lone(self) -> bool:
        """Whether this request runs alone, without the batch queue (see ``_alone``); first yields once, so that
        requests read in the same loop iteration reach the engine before it decides."""
        if not self._alone():
            return False
        await asyncio.sleep(0)
        return self._alone()

    def _alone(self) -> bool:
        """Whether this request has nothing to be batched with: it is the only one in the engine, no pass runs,
        and none of that happened within ``crowd_window_s`` (a lone pass on the event loop hides the requests
        that arrive meanwhile, so under load the engine must not fall back to it between two batches)."""
        now = time.monotonic()
        if self._in_flight > 1 or self._passes:
            self._crowd_until = now + self.crowd_window_s
            return False
        return now >= self._crowd_until

    async def _pass_alone(self, request: Request, route: Route, tensors: list[torch.Tensor]) -> Response:
        """A lone request's forward pass, without the batch queue: on the event loop itself when the route's tail
        is tiny (a pass costs less than the two thread hand-offs would add), else on the compute thread."""
        started = time.perf_counter()
        self._passes += 1
        inline = id(route) in self._inline
        try:
            layout = id(route) in self._channels_last
            if inline:
                payloads = run_batch(route, [tensors], [request.top_k], layout)
            else:
                payloads = await asyncio.get_running_loop().run_in_executor(
                    self._compute, run_batch, route, [tensors], [request.top_k], layout)
        finally:
            self._passes -= 1
        seconds = time.perf_counter() - started
        if not inline:
            self._promote(route, seconds)
        self.observer.batch(route, 1, tensors[0].shape[0], seconds)
        return Response(request.request_id, Status.OK, payloads[0], 0.0, 1)

    def _promote(self, route: Route, seconds: float) -> None:
        """A tail that ``warm_up`` found slow (a busy machine while the server started) moves to the event loop once
        ``promote_after`` lone passes in a row, thread hand-offs included, took at most ``inline_pass_ms``."""
        key = id(route)
        fast = self._fast_passes.get(key, 0) + 1 if seconds * 1e3 <= self.inline_pass_ms else 0
        self._fast_passes[key] = fast
        if fast >= self.promote_after:
            self._inline.add(key)

    async def decoded(self, request: Request, route: Route) -> list[torch.Tensor]:
        """The request's tensors for ``route``, its width checked; decoded inline when that beats a thread hop."""
        if (request.width is None) != (route.width is None) or (
                route.width is not None and abs(request.width - route.width) > 1e-3):
            raise WireError(f"route {route.route_id} ({route.label}) runs at width "
                            f"{route.width if route.width is not None else 'none'}, the request says "
                            f"{request.width if request.width is not None else 'none'}")
        decoding = getattr(route, "decoding", None)  # a Route reads the headers once for the cost and the decode
        if decoding is None:
            cost, decode = route.decode_cost(request.payload), functools.partial(
                route.decode, request.payload, self.limits.decode, self.limits.max_rows)
        else:
            cost, decode = decoding(request.payload, self.limits.decode, self.limits.max_rows)
        if cost <= _INLINE_DECODE_COST:
            return decode()
        return await asyncio.get_running_loop().run_in_executor(None, decode)

    # ---- batching ---------------------------------------------------------------------------------------------

    def _queue(self, model_id: str, route: Route) -> asyncio.Queue:
        key = (model_id, route.route_id)
        if key not in self._queues:
            self._queues[key] = asyncio.Queue()
            self._workers.append(asyncio.create_task(self._batch_loop(key, self._queues[key])))
        return self._queues[key]

    async def _batch_loop(self, key: tuple[str, int], queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await queue.get()]
            rows = jobs[0].rows
            deadline = loop.time() + self.limits.max_wait_ms / 1e3
            # Take every job queued; wait (up to max_wait_ms) only while requests for this route are still being
            # decoded: a lone request runs at once, and a pass never waits for answers already on their way out.
            while rows < self.limits.max_batch:
                if not queue.empty():
                    job = queue.get_nowait()
                elif not self._coming.get(key, 0):
                    break
                else:
                    try:
                        job = await asyncio.wait_for(queue.get(), max(deadline - loop.time(), 0))
                    except asyncio.TimeoutError:
                        break
                if rows + job.rows > self.limits.max_batch:
                    await self._run(loop, jobs)
                    jobs, rows = [job], job.rows
                    deadline = loop.time() + self.limits.max_wait_ms / 1e3
                    continue
                jobs.append(job)
                rows += job.rows
            await self._run(loop, jobs)

    async def _run(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        self._passes += 1
        try:
            route = jobs[0].route
            payloads = await loop.run_in_executor(self._compute, run_batch, route, [j.tensors for j in jobs],
                                                  [j.request.top_k for j in jobs], id(route) in self._channels_last)
        except Exception as error:  # noqa: BLE001 - every waiting request gets the error, the loop goes on
            log.exception("forward pass failed on %s", jobs[0].route.label)
            for job in jobs:
                if not job.done.done():
                    job.done.set_exception(error)
            return
        finally:
            self._passes -= 1
        self.observer.batch(jobs[0].route, len(jobs), sum(j.rows for j in jobs), time.perf_counter() - started)
        for job, payload in zip(jobs, payloads):
            if not job.done.done():
                job.done.set_result(Response(job.request.request_id, Status.OK, payload, 0.0, len(jobs)))

    # ---- lifecycle --------------------------------------------------------------------------------------------

    async def warm_up(self, passes: int = 3) -> None:
        """Run every tail a few times before the server reports ready, so the first requests do not pay for lazy
        initialisation (the first forward pass of a module is several × slower); note which tails are tiny enough
        (a pass ≤ ``inline_pass_ms``) for a lone request to run on the event loop instead of the compute thread."""
        loop = asyncio.get_running_loop()
        for deployment in self.models.values():
            for route in deployment.routes:
                zeros = route.warm_inputs()  # of the dtypes the tail takes: float features, int64 token ids
                for _ in range(passes):
                    await loop.run_in_executor(self._compute, run_batch, route, [zeros], [0])
                times = []
                for _ in range(2 * passes):  # on this thread too: it has lazy state of its own
                    started = time.perf_counter()
                    run_batch(route, [zeros], [0])
                    times.append(time.perf_counter() - started)
                if min(times) * 1e3 <= self.inline_pass_ms:
                    self._inline.add(id(route))
                if isinstance(route, Route) and min(times) * 1e3 <= _CHANNELS_LAST_TRIAL_MS \
                        and await loop.run_in_executor(self._compute, _channels_last_pays, route, zeros):
                    self._channels_last.add(id(route))

    async def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until no request is in flight (graceful shutdown); False if ``timeout_s`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        self._queues.clear()
        self._compute.shutdown(wait=True)


def _conflict(request: Request) -> Response:
    return Response.error(request.request_id, Status.CONFLICT,
                          f"request id {request.request_id.hex()} was already used for another request (other "
                          "image, route, rows or top-k); give every new request a fresh id and resend a retry's "
                          "frame unchanged")


def peek_request_id(frame: bytes) -> bytes:
    """The request id of a frame that may not parse (best effort), so an error reply still names it; else zeros."""
    if len(frame) >= 24 and frame[:4] == REQUEST_MAGIC:
        return bytes(frame[8:24])
    return b"\0" * 16


def _timed(response: Response, started: float) -> Response:
    """``response`` with the time from the frame's arrival until now."""
    return Response(response.request_id, response.status, response.payload, (time.perf_counter() - started) * 1e3,
                    response.batch_size)  # not dataclasses.replace: a few µs less per request


def _channels_last_input(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The 4-D floating-point tensors of a pass in channels-last layout (same values, NHWC strides); others as is."""
    return [t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 and t.is_floating_point() else t
            for t in tensors]


def _channels_last_pays(route: Route, zeros: list[torch.Tensor], rows: int = 16, passes: int = 3) -> bool:
    """Whether ``route``'s tail runs a pass of ``rows`` rows faster with channels-last inputs (at most
    ``_CHANNELS_LAST_GAIN`` of the time) and gives the same outputs; False for tails without 4-D float inputs, or
    that fail on that layout (a ``view`` that needs the plain strides)."""
    if not any(t.dim() == 4 and t.is_floating_point() for t in zeros):
        return False
    generator = torch.Generator().manual_seed(0)
    try:
        plain = [torch.rand((rows, *t.shape[1:]), generator=generator) if t.is_floating_point()
                 else t[:1].expand(rows, *t.shape[1:]).contiguous() for t in zeros]
        nhwc = _channels_last_input(plain)
        with torch.no_grad():
            expected, got = route.server_side(plain), route.server_side(nhwc)
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(passes):
                for layout, tensors in ((False, plain), (True, nhwc)):
                    started = time.perf_counter()
                    route.server_side(tensors)
                    times[layout].append(time.perf_counter() - started)
    except Exception:  # noqa: BLE001 - a tail that cannot take the layout keeps the plain one
        return False
    want = [leaf for leaf in pytree.tree_leaves(expected) if isinstance(leaf, torch.Tensor)]
    have = [leaf for leaf in pytree.tree_leaves(got) if isinstance(leaf, torch.Tensor)]
    same = len(want) == len(have) and all(
        a.shape == b.shape and a.dtype == b.dtype and (torch.equal(a, b) if not a.is_floating_point()
                                                       else torch.allclose(a, b, rtol=1e-4, atol=1e-5))
        for a, b in zip(want, have))
    return same and min(times[True]) <= _CHANNELS_LAST_GAIN * min(times[False])


@torch.no_grad()
def run_batch(route: Route, inputs: list[list[torch.Tensor]], top_ks: list[int],
              channels_last: bool = False) -> list[bytes]:
    """One forward pass of ``route``'s tail over several requests' tensors; each request's result payload.

    ``channels_last``: a pass of ``_CHANNELS_LAST_ROWS`` rows or more gets its 4-D float inputs in that layout
    (``Engine.warm_up`` decides per route)."""
    joined = [torch.cat(parts) if len(inputs) > 1 else parts[0] for parts in zip(*inputs)]
    if channels_last and joined[0].dim() and joined[0].shape[0] >= _CHANNELS_LAST_ROWS:
        joined = _channels_last_input(joined)
    output = route.server_side(joined)
    leaves = [leaf for leaf in pytree.tree_leaves(output) if isinstance(leaf, torch.Tensor)]
    payloads, start = [], 0
    for tensors, top_k in zip(inputs, top_ks):
        rows = tensors[0].shape[0]
        mine = [leaf[start:start + rows] for leaf in leaves]
        start += rows
        payloads.append(result_payload(mine, top_k))
    return payloads


def result_payload(outputs: list[torch.Tensor], top_k: int) -> bytes:
    """The tail's outputs as packed fp32 frames, or (``top_k`` > 0) the top-k values and indices of the first."""
    if top_k:
        values, indices = outputs[0].float().topk(min(top_k, outputs[0].shape[-1]), dim=-1)
        outputs = [values, indices]
    return pack([_result_frame(t) for t in outputs])


_FRAME_HEADERS: dict[tuple[torch.dtype, tuple[int, ...]], bytes] = {}  # (dtype, shape) -> an fp32 frame's header
_RAW_DTYPES = frozenset({torch.float32, torch.float16, torch.float64, torch.uint8, torch.int8, torch.int16,
                         torch.int32, torch.int64, torch.bool}) if sys.byteorder == "little" else frozenset()


def _result_frame(tensor: torch.Tensor) -> bytes:
    """What ``_RESULT_CODEC.encode(tensor)`` writes (the fp32 codec sends a tensor as it is: its header, then its
    bytes), with the header looked up rather than built: a pass answers each of its requests with one."""
    if tensor.dtype not in _RAW_DTYPES or tensor.dim() > MAX_NDIM or tensor.requires_grad \
            or tensor.device.type != "cpu":
        return _RESULT_CODEC.encode(tensor)
    key = (tensor.dtype, tuple(tensor.shape))
    head = _FRAME_HEADERS.get(key)
    if head is None:
        head = frame_header(tensor.dtype, key[1], [])
        if len(_FRAME_HEADERS) < 4096:
            _FRAME_HEADERS[key] = head
    return head + tensor.contiguous().numpy().tobytes()
