"""Big batched passes feed the tail channels-last inputs where warm_up found that faster; the answers do not change,
a lone request keeps the plain layout, and a tail that cannot take the layout keeps the plain one."""

from __future__ import annotations

import asyncio

import pytest
import torch

from edgesplit.codecs import unpack
from edgesplit.runtime import engine as engine_module
from edgesplit.runtime.deployment import load_deployment
from edgesplit.runtime.engine import Engine, ServerLimits, run_batch
from runtime_plans import make_plan


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):  # noqa: ANN201
    plan = make_plan(tmp_path_factory.mktemp("nhwc"), "small_cnn", routes=[(1, 100, {"cut_index": 3, "codec": "fp32"})],
                     shape=(1, 1, 8, 8))
    return load_deployment(plan)


def _inputs(route, rows: int) -> list[list[torch.Tensor]]:  # noqa: ANN001
    generator = torch.Generator().manual_seed(rows)
    return [route.device_side(torch.rand(1, 1, 8, 8, generator=generator)) for _ in range(rows)]


def _layouts_seen(route, monkeypatch) -> list[bool]:  # noqa: ANN001
    """Record, per pass, whether the tail got its 4-D input in channels-last layout (and not plain)."""
    seen, original = [], route.server_side

    def recording(tensors):  # noqa: ANN001, ANN202
        x = tensors[0]
        seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return original(tensors)

    monkeypatch.setattr(route, "server_side", recording)
    return seen


def test_a_big_pass_in_channels_last_gives_the_same_answers_and_a_small_one_stays_plain(deployment,
                                                                                           monkeypatch) -> None:
    route = deployment.routes[0]
    assert route.sent_shapes[0][1] > 1  # several channels: channels-last strides differ from the plain ones
    seen = _layouts_seen(route, monkeypatch)
    rows = engine_module._CHANNELS_LAST_ROWS
    big = _inputs(route, rows + 3)
    plain, nhwc = run_batch(route, big, [0] * len(big)), run_batch(route, big, [0] * len(big), True)
    assert seen == [False, True]
    for a, b in zip(plain, nhwc):
        assert torch.allclose(unpack(a)[0], unpack(b)[0], rtol=1e-5, atol=1e-6)
    seen.clear()
    run_batch(route, _inputs(route, rows - 1), [0] * (rows - 1), True)  # under the threshold: plain
    run_batch(route, _inputs(route, 1), [3], True)  # a lone request: plain
    assert seen == [False, False]


class _FlatteningTail:
    """A tail that flattens with ``view``, which channels-last strides do not allow."""

    def server_side(self, tensors):  # noqa: ANN001, ANN201
        x = tensors[0]
        return x.view(x.shape[0], -1).sum(dim=1)


def test_a_tail_that_cannot_take_channels_last_keeps_the_plain_layout() -> None:
    zeros = [torch.zeros(1, 3, 4, 4)]
    assert not engine_module._channels_last_pays(_FlatteningTail(), zeros)  # no exception, just "no"
    assert not engine_module._channels_last_pays(_FlatteningTail(), [torch.zeros(1, 48)])  # no 4-D input


def test_warm_up_decides_per_route_and_batches_then_use_it(deployment, monkeypatch) -> None:
    route = deployment.routes[0]
    seen = _layouts_seen(route, monkeypatch)
    for pays in (False, True):
        monkeypatch.setattr(engine_module, "_channels_last_pays", lambda route, zeros, pays=pays: pays)

        async def main() -> bool:
            engine = Engine([deployment], ServerLimits(max_batch=32))
            await engine.warm_up()
            try:
                return id(route) in engine._channels_last
            finally:
                await engine.close()

        assert asyncio.run(main()) is pays
    seen.clear()
    rows = engine_module._CHANNELS_LAST_ROWS
    run_batch(route, _inputs(route, rows), [0] * rows, True)
    assert seen == [True]
