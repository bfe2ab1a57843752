"""Serving a chain plan: device → tier 1 relay → tier 2 on loopback, real uvicorn servers, real frames."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from edgesplit.model.graph import trace
from edgesplit.model.intake import load_model
from edgesplit.plan.schema import (ChainEntry, ChainPlanReport, Constraints, HopCost, LinkSummary, MachineSummary,
                                   SentTensor, TierStage, load_chain_plan)
from edgesplit.codecs import unpack
from edgesplit.runtime.client import Client
from edgesplit.runtime.engine import ServerLimits
from edgesplit.runtime.errors import ClientError, ServerRejectedError
from edgesplit.runtime.relay import ChainClient, NextHop, RelayEngine, load_chain_deployment
from edgesplit.runtime.server import ServerThread, decode_limits, request_limit
from edgesplit.runtime.wire import MEDIA_TYPE, Request, Response, Status, new_request_id
from runtime_plans import write_model
from test_cli import assert_user_error, edgesplit_in_process

TOKENS = ["tier1-token-0123456789abcdef", "tier2-token-0123456789abcdef"]
# resnet8 on three tiers: the device runs the stem and block 0; tier 1 only block 1's residual branch; tier 2 the
# rest. Block 0's output (layers_0_relu) feeds block 1's shortcut on tier 2, so tier 1 forwards it untouched.
TIER1 = {"layers_1_conv1_0", "layers_1_conv1_1", "layers_1_conv1_2", "layers_1_conv2_0", "layers_1_conv2_1"}


def chain_plan(folder: Path, codec: str = "fp32") -> tuple[ChainPlanReport, Path]:
    """A chain plan of seeded resnet8 over rpi4 > wifi > host/4 > ethernet > edge-gpu with the placement above (the
    costs are placeholders: serving reads the placement, the crossing tensors and the codec)."""
    weights, _ = write_model(folder, "resnet8")
    loaded = load_model("resnet8", weights=weights)
    traced = trace(loaded.module, loaded.example_input)
    names = [n.name for n in traced.compute_nodes]
    first = names.index("layers_1_conv1_0")
    assignment = {name: 0 if i < first else 1 if name in TIER1 else 2 for i, name in enumerate(names)}
    partition = traced.partition(assignment, stages=3)
    machines = [MachineSummary(spec=spec, kind="cpu", model_ms=1.0, memory_bytes=None, active_w=None, idle_w=None,
                               source="test") for spec in ("rpi4", "host/4", "edge-gpu")]
    links = [LinkSummary(spec=spec, uplink_mbps=mbps, downlink_mbps=mbps, rtt_ms=1.0, tx_w=0.0, rx_w=0.0,
                         source="test") for spec, mbps in (("wifi", 50.0), ("ethernet", 1000.0))]
    hops = [HopCost(link=links[i].spec, crossing=[SentTensor(**t.model_dump(), payload_bytes=t.nbytes + 16)
                                                  for t in stage.outputs],
                    payload_bytes=0, transfer_ms=0.0, rtt_ms=0.0, overhead_ms=0.0, result_ms=0.0)
            for i, stage in enumerate(partition.stages[:2])]
    stages = [TierStage(tier=i, machine=machines[i].spec, nodes=len(s.nodes), first=s.nodes[0], last=s.nodes[-1],
                        compute_ms=0.0, decode_ms=0.0, encode_ms=0.0, memory_bytes=0, weight_bytes=0)
              for i, s in enumerate(partition.stages)]
    chosen = ChainEntry(label="min-cut", method="min-cut", last_tier=2, assignment=assignment, stages=stages, hops=hops,
                        latency_ms=1.0, throughput_fps=1.0, bottleneck="tier 0", energy_mj=None, objective=1.0,
                        feasible=True, violations=[])
    plan = ChainPlanReport(model="resnet8", model_ref={**loaded.ref.to_json(), "weights": str(weights)},
                           fingerprint=traced.fingerprint, input_shape=list(loaded.example_input.shape),
                           topology="rpi4 > wifi > host/4 > ethernet > edge-gpu", machines=machines, links=links,
                           hop_ms=1.0, codec=codec, objective="latency", constraints=Constraints(), chosen=chosen,
                           baselines=[], switch_table=[], min_cut_exact=True, planner_ms=1.0)
    path = folder / "chain.json"
    path.write_text(plan.model_dump_json(indent=2))
    return load_chain_plan(path), path


def start_tier(plan: ChainPlanReport, tier: int, next_url: str | None = None, next_token: str | None = None,
               ) -> tuple[ServerThread, RelayEngine]:
    deployment = load_chain_deployment(plan, tier)
    limits = ServerLimits(max_request_bytes=request_limit([deployment], 64), decode=decode_limits([deployment], 64),
                          max_wait_ms=5.0)
    hop = NextHop(deployment, next_url, next_token, timeout_s=5.0) if next_url else None
    engine = RelayEngine(deployment, limits, hop)
    engine.inline_pass_ms = 0.0  # passes on the compute thread: a test that slows them must not block the loop
    return ServerThread(engine, TOKENS[tier - 1]).start(), engine


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    plan, path = chain_plan(tmp_path_factory.mktemp("chain"))
    last, _ = start_tier(plan, 2)
    relay, _ = start_tier(plan, 1, last.url, TOKENS[1])
    device = load_chain_deployment(plan, 0)
    yield {"plan": plan, "path": path, "last": last, "relay": relay, "device": device}
    relay.stop()
    last.stop()


def frame(device, x: torch.Tensor) -> tuple[bytes, bytes]:
    request_id = new_request_id()
    route = device.routes[0]
    return request_id, Request(request_id, device.model_id, 0, route.encode(route.device_side(x))).to_bytes()


def post(url: str, body: bytes, token: str) -> httpx.Response:
    return httpx.post(url + "/v1/infer", content=body, timeout=10.0,
                      headers={"Authorization": f"Bearer {token}", "Content-Type": MEDIA_TYPE})


def test_the_partition_forwards_a_skip_tensor_through_tier_1(chain):
    stages = chain["device"].partition.stages
    assert [t.name for t in stages[0].outputs] == ["layers_0_relu"]
    assert "layers_0_relu" in [t.name for t in stages[1].forwarded]
    assert [t.name for t in stages[1].outputs] == [t.name for t in chain["plan"].chosen.hops[1].crossing]


def test_three_tiers_answer_as_the_whole_model(chain):
    device = chain["device"]
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ClientError, match="chain plan.*ChainClient"):  # the two-tier client says which to use
        Client(chain["path"], chain["relay"].url, TOKENS[0])
    with ChainClient(chain["path"], chain["relay"].url, TOKENS[0], retries=0) as client:
        result = client.infer(x)
    assert (result.where, result.mode, result.label) == ("server", "route", "min-cut")
    with torch.no_grad():
        expected = device.model(x)
    assert torch.allclose(result.logits, expected, atol=1e-5)
    assert result.bytes_sent > 3 * 16 * 32 * 32 * 4  # layers_0_relu, fp32


def test_a_wrong_token_is_refused_at_the_relay(chain):
    x = torch.rand(1, 3, 32, 32)
    _, body = frame(chain["device"], x)
    reply = post(chain["relay"].url, body, TOKENS[1])  # the next tier's token is not the relay's
    assert reply.status_code == 401
    assert post(chain["relay"].url, body, TOKENS[0]).status_code == 200
    with pytest.raises(ServerRejectedError, match="401"):
        ChainClient(chain["path"], chain["relay"].url, "wrong-token-0123456789abcdef").connect()


def test_concurrent_requests_stream_through_the_relay(chain):
    """8 requests at once, the last tier taking 0.3 s a pass: in flight through the relay together, they share
    passes there and are all answered before 8 passes could have run; each answer is its own input's."""
    device = chain["device"]
    route = chain["last"].engine.models[device.model_id].routes[0]
    inputs = [torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    frames = [frame(device, x) for x in inputs]
    fast = route.server_side

    def slow(tensors: list[torch.Tensor]) -> object:
        time.sleep(0.3)
        return fast(tensors)

    route.server_side = slow
    try:
        began = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda f: post(chain["relay"].url, f[1], TOKENS[0]), frames))
        seconds = time.perf_counter() - began
    finally:
        del route.server_side
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    responses = [Response.from_bytes(r.content) for r in replies]
    # One request at a time through the relay would reach the last tier alone, 8 passes in a row.
    assert max(r.batch_size for r in responses) > 1
    assert seconds < 8 * 0.3, seconds
    for (request_id, _), response, x in zip(frames, responses, inputs):
        assert response.request_id == request_id
        with torch.no_grad():
            assert torch.allclose(unpack(response.payload)[0], device.model(x), atol=1e-5)


def test_a_wrong_next_token_is_a_failed_hop(chain):
    relay, _ = start_tier(chain["plan"], 1, chain["last"].url, "wrong-token-0123456789abcdef")
    try:
        reply = post(relay.url, frame(chain["device"], torch.rand(1, 3, 32, 32))[1], TOKENS[0])
    finally:
        relay.stop()
    assert reply.status_code == Status.BAD_GATEWAY.http == 502
    message = reply.json()["error"]
    assert message.startswith("link 1 ethernet (tier 1 host/4 → tier 2 edge-gpu at http://127.0.0.1:")
    assert "HTTP 401" in message


def test_infer_runs_stage_0_and_prints_the_chain(chain, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    generator = torch.Generator().manual_seed(2)
    for i in range(4):
        pixels = (torch.rand(32, 32, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
    (tmp_path / "token").write_text(TOKENS[0])
    (tmp_path / "token").chmod(0o600)
    result = edgesplit_in_process("infer", str(chain["path"]), "--server", chain["relay"].url, "--token-file",
                                  str(tmp_path / "token"), "--images", str(folder), "--json", str(tmp_path / "run.json"),
                                  "--quiet")
    assert result.returncode == 0, result.stderr
    assert "chain: tiers 0..2 (rpi4 > wifi > host/4 > ethernet > edge-gpu)" in result.stdout
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["chain"]["failed_link"] is None and run["summary"]["server_results"] == 4
    assert run["summary"]["max_abs_diff"] < 1e-5


def test_a_dead_last_hop_falls_back_on_the_device(chain):
    plan, path = chain["plan"], chain["path"]
    last, _ = start_tier(plan, 2)
    relay, _ = start_tier(plan, 1, last.url, TOKENS[1])
    try:
        x = torch.rand(2, 3, 32, 32)
        with ChainClient(path, relay.url, TOKENS[0], retries=1, backoff_s=0.01, probe_every_s=60) as client:
            assert client.infer(x).where == "server"
            last.stop()
            reply = post(relay.url, frame(client.deployment, x)[1], TOKENS[0])
            assert reply.status_code == 502 and "link 1 ethernet" in reply.json()["error"]
            assert "connection refused" in reply.json()["error"]
            result = client.infer(x)
            assert httpx.get(relay.url + "/readyz").status_code == 503  # its next hop is gone
        assert (result.where, result.mode) == ("device", "fallback")
        assert client.failed_link == 1 and "link 1 ethernet" in client.failure
        with torch.no_grad():
            assert torch.allclose(result.logits, client.deployment.model(x), atol=1e-6)
    finally:
        relay.stop()
        last.stop()


def test_serve_refuses_what_a_chain_cannot_serve(chain, tmp_path):
    path = str(chain["path"])
    assert_user_error(edgesplit_in_process("serve", path), "chain plan over tiers 0..2", "--tier")
    assert_user_error(edgesplit_in_process("serve", path, "--tier", "3"), "--tier 3 is out of range", "1..2")
    assert_user_error(edgesplit_in_process("serve", path, "--tier", "0"), "--tier 0 is out of range")
    assert_user_error(edgesplit_in_process("serve", path, "--tier", "1"), "middle tier", "--next")
    assert_user_error(edgesplit_in_process("serve", path, "--tier", "2", "--next", "http://127.0.0.1:9"),
                      "last tier", "leave --next out")
    two_tier = tmp_path / "plan.json"
    two_tier.write_text(json.dumps({"kind": "edgesplit.plan", "version": 1}))
    assert_user_error(edgesplit_in_process("serve", str(two_tier), "--tier", "1"), "two-tier plan")
