"""The client's WebSocket mode: the same answers, errors and fallback as over HTTP, one socket for all frames."""

from __future__ import annotations

import pytest
import torch

from edgesplit.runtime.client import Client
from edgesplit.runtime.deployment import load_deployment
from edgesplit.runtime.engine import Engine
from edgesplit.runtime.errors import ServerRejectedError
from edgesplit.runtime.server import ServerThread
from runtime_plans import make_plan

TOKEN = "stream-token-0123456789"


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    return make_plan(tmp_path_factory.mktemp("stream"), "resnet8",
                     [(0.1, 10, {"cut_index": 10, "codec": "int8"}), (10, 1000, {"cut_index": 6})])


def test_stream_answers_equal_the_model_and_http(plan):
    served = load_deployment(plan)
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with ServerThread(Engine([served]), token=TOKEN) as server:
        route = served.routes[1]  # cut 6, fp32: two tensors cross, lossless
        with Client(plan, server.url, TOKEN, fallback=False, route=route.label, stream=True) as streamed, \
                Client(plan, server.url, TOKEN, fallback=False, route=route.label) as posted:
            for image in images:
                over_stream, over_http = streamed.infer(image), posted.infer(image)
                assert over_stream.where == "server" and over_stream.attempts == 1
                torch.testing.assert_close(over_stream.logits, over_http.logits, atol=0, rtol=0)
                torch.testing.assert_close(over_stream.logits, served.model(image[None]), atol=1e-5, rtol=1e-5)
            assert streamed._socket is not None  # one socket, kept open


def test_stream_with_a_wrong_token_is_refused_clearly(plan):
    served = load_deployment(plan)
    with ServerThread(Engine([served]), token=TOKEN) as server:
        with Client(plan, server.url, "wrong-token-0123456789", fallback=False, stream=True,
                    route=served.routes[0].label) as client:
            with pytest.raises(ServerRejectedError, match="refused"):
                client.infer(torch.rand(1, 3, 32, 32))


def test_stream_falls_back_when_the_server_stops_and_every_input_gets_one_answer(plan):
    served = load_deployment(plan)
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    server = ServerThread(Engine([served]), token=TOKEN).start()
    results = []
    with Client(plan, server.url, TOKEN, fallback=True, stream=True, route=served.routes[1].label, timeout_s=2,
                retries=1, backoff_s=0.01, probe_every_s=60) as client:
        for index, image in enumerate(images):
            if index == 4:
                server.stop()
            results.append(client.infer(image))
        assert [r.where for r in results] == ["server"] * 4 + ["device"] * 4
        assert client.stats.fallbacks >= 1 and len({r.request_id for r in results}) == len(images)
    for result, image in zip(results, images):
        torch.testing.assert_close(result.logits, served.model(image[None]), atol=1e-5, rtol=1e-5)
