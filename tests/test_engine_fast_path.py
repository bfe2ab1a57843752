"""The engine's path for a lone request: no batch queue, no wait, a tiny tail on the event loop; batching resumes as
soon as requests overlap. In process (no HTTP): Engine.handle is what every transport calls."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from edgesplit.codecs import unpack
from edgesplit.runtime.deployment import load_deployment
from edgesplit.runtime.engine import Engine, ServerLimits
from edgesplit.runtime.wire import Request, Response, Status, new_request_id
from runtime_plans import make_plan


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):  # noqa: ANN201
    plan = make_plan(tmp_path_factory.mktemp("fast"), "small_cnn", routes=[(1, 100, {"cut_index": 3, "codec": "fp32"})],
                     shape=(1, 1, 8, 8))
    return load_deployment(plan)


def _frame(deployment, seed: int) -> bytes:  # noqa: ANN001
    route = deployment.routes[0]
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return Request(new_request_id(), deployment.model_id, route.route_id, route.encode(route.device_side(x)),
                   route.width).to_bytes()


def _threads_of_tail(route, monkeypatch, sleep_s: float = 0.0) -> list[str]:  # noqa: ANN001
    """Record the thread each forward pass of ``route`` runs on (optionally making it slow)."""
    seen, original = [], route.server_side

    def recording(tensors):  # noqa: ANN001, ANN202
        seen.append(threading.current_thread().name)
        time.sleep(sleep_s)
        return original(tensors)

    monkeypatch.setattr(route, "server_side", recording)
    return seen


def test_a_lone_request_never_waits_and_a_tiny_tail_runs_on_the_event_loop(deployment, monkeypatch) -> None:
    threads = _threads_of_tail(deployment.routes[0], monkeypatch)

    async def main() -> list[Response]:
        engine = Engine([deployment], ServerLimits(max_batch=32, max_wait_ms=300.0))
        await engine.warm_up()
        assert id(deployment.routes[0]) in engine._inline  # small_cnn's tail: well under inline_pass_ms
        threads.clear()
        try:
            return [await engine.handle(_frame(deployment, seed)) for seed in range(5)]
        finally:
            await engine.close()

    responses = asyncio.run(main())
    assert [r.status for r in responses] == [Status.OK] * 5 and [r.batch_size for r in responses] == [1] * 5
    assert max(r.server_ms for r in responses) < 150  # max_wait_ms is 300: nobody waited for company
    assert set(threads) == {threading.current_thread().name}  # the event loop's thread: no hand-off


def test_a_slow_tail_runs_alone_on_the_compute_thread(deployment, monkeypatch) -> None:
    threads = _threads_of_tail(deployment.routes[0], monkeypatch, sleep_s=0.02)

    async def main() -> Response:
        engine = Engine([deployment], ServerLimits(max_batch=32, max_wait_ms=300.0))
        await engine.warm_up()
        assert id(deployment.routes[0]) not in engine._inline  # 20 ms a pass: the event loop must stay free
        threads.clear()
        try:
            return await engine.handle(_frame(deployment, 0))
        finally:
            await engine.close()

    response = asyncio.run(main())
    assert response.status == Status.OK and response.batch_size == 1 and response.server_ms < 150
    assert threads and all(name.startswith("edgesplit-tail") for name in threads)


def test_a_tail_slow_only_while_the_server_started_moves_to_the_event_loop(deployment, monkeypatch) -> None:
    """warm_up saw 20 ms passes (a busy machine at start): lone requests hop to the compute thread until
    ``promote_after`` passes in a row were fast, then run on the event loop; a pass that is slow again resets the
    count before that."""
    route = deployment.routes[0]
    slow = [True]
    seen, original = [], route.server_side

    def recording(tensors):  # noqa: ANN001, ANN202
        seen.append(threading.current_thread().name)
        if slow[0]:
            time.sleep(0.02)
        return original(tensors)

    monkeypatch.setattr(route, "server_side", recording)

    async def main() -> list[Response]:
        engine = Engine([deployment], ServerLimits(max_batch=32, max_wait_ms=2.0))
        await engine.warm_up()
        assert id(route) not in engine._inline
        slow[0] = False
        seen.clear()
        try:
            responses = [await engine.handle(_frame(deployment, seed)) for seed in range(engine.promote_after - 1)]
            slow[0] = True  # one slow pass: the count starts again
            responses.append(await engine.handle(_frame(deployment, 100)))
            slow[0] = False
            responses += [await engine.handle(_frame(deployment, 200 + seed)) for seed in range(engine.promote_after)]
            assert id(route) in engine._inline
            responses += [await engine.handle(_frame(deployment, 300 + seed)) for seed in range(3)]
            return responses
        finally:
            await engine.close()

    responses = asyncio.run(main())
    assert all(r.status == Status.OK and r.batch_size == 1 for r in responses)
    loop_thread = threading.current_thread().name
    promote = len(responses) - 3
    assert all(name.startswith("edgesplit-tail") for name in seen[:promote]), seen
    assert seen[promote:] == [loop_thread] * 3, seen


def test_requests_that_arrive_together_share_a_pass_even_after_lone_ones(deployment, monkeypatch) -> None:
    counts = []

    async def main() -> tuple[list[Response], list[Response]]:
        engine = Engine([deployment], ServerLimits(max_batch=32, max_wait_ms=2.0))
        await engine.warm_up()
        original = engine.observer.batch
        monkeypatch.setattr(engine.observer, "batch", lambda route, n, rows, s: (counts.append(n),
                                                                                original(route, n, rows, s)))
        try:
            alone = [await engine.handle(_frame(deployment, seed)) for seed in range(3)]
            together = await asyncio.gather(*(engine.handle(_frame(deployment, 10 + i)) for i in range(8)))
            return alone, list(together)
        finally:
            await engine.close()

    alone, together = asyncio.run(main())
    assert [r.batch_size for r in alone] == [1, 1, 1]
    assert all(r.status == Status.OK for r in together)
    assert max(r.batch_size for r in together) > 1 and counts[3:] and max(counts[3:]) > 1, counts
    for seed, response in zip(range(10, 18), together):  # each gets its own answer
        x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(unpack(response.payload)[0], deployment.model(x), atol=1e-5, rtol=1e-5)
