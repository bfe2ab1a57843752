"""Serving a chain plan: device → tier 1 relay → tier 2 on loopback, real uvicorn servers, real frames."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from rich.console import Console

from edgesplit.model.graph import trace
from edgesplit.model.intake import load_model
from edgesplit.plan.schema import (ChainEntry, ChainPlanReport, ChainSwitchRange, Constraints, HopCost, LinkSummary,
                                   MachineSummary, SentTensor, TierStage, load_chain_plan)
from edgesplit.codecs import unpack
from edgesplit.runtime.client import Client
from edgesplit.runtime.engine import ServerLimits
from edgesplit.runtime.errors import ClientError, ServerRejectedError
from edgesplit.runtime.chain_client import ChainClient
from edgesplit.runtime.relay import NextHop, Relay, RelayEngine, followed_table, load_chain_deployment, placements
from edgesplit.runtime.server import ServerThread, decode_limits, request_limit
from edgesplit.runtime.wire import MEDIA_TYPE, Request, Response, Status, new_request_id
from runtime_plans import write_model
from test_cli import assert_user_error, edgesplit_in_process
from test_client import Throttled

TOKENS = ["tier1-token-0123456789abcdef", "tier2-token-0123456789abcdef"]
# resnet8 on three tiers: the device runs the stem and block 0; tier 1 only block 1's residual branch; tier 2 the
# rest. Block 0's output (layers_0_relu) feeds block 1's shortcut on tier 2, so tier 1 forwards it untouched.
TIER1 = {"layers_1_conv1_0", "layers_1_conv1_1", "layers_1_conv1_2", "layers_1_conv2_0", "layers_1_conv2_1"}


# Two more placements, for the switch table: SMALL sends layers_1_relu (32×16×16, half of layers_0_relu) and ends on
# tier 1; RELAYED sends what "min-cut" sends, and tier 1 runs nothing (it only forwards it to tier 2).
SMALL, RELAYED, BIG = "small first hop, ends on tier 1", "tier 1 only relays", "min-cut"


def _entry(label: str, traced, assignment: dict[str, int], machines, links) -> ChainEntry:
    """A chain entry for ``assignment`` with what crosses each link (its costs are placeholders)."""
    last = max(assignment.values())
    partition = traced.partition(assignment, stages=last + 1)
    hops = [HopCost(link=links[i].spec, crossing=[SentTensor(**t.model_dump(), payload_bytes=t.nbytes + 16)
                                                  for t in stage.outputs],
                    payload_bytes=0, transfer_ms=0.0, rtt_ms=0.0, overhead_ms=0.0, result_ms=0.0)
            for i, stage in enumerate(partition.stages[:last])]
    stages = [TierStage(tier=i, machine=machines[i].spec, nodes=len(s.nodes), first=(s.nodes or [None])[0],
                        last=(s.nodes or [None])[-1], compute_ms=0.0, decode_ms=0.0, encode_ms=0.0, memory_bytes=0,
                        weight_bytes=0) for i, s in enumerate(partition.stages)]
    return ChainEntry(label=label, method="test", last_tier=last, assignment=assignment, stages=stages, hops=hops,
                      latency_ms=1.0, throughput_fps=1.0, bottleneck="tier 0", energy_mj=None, objective=1.0,
                      feasible=True, violations=[])


def chain_plan(folder: Path, codec: str = "fp32", switching: bool = False) -> tuple[ChainPlanReport, Path]:
    """A chain plan of seeded resnet8 over rpi4 > wifi > host/4 > ethernet > edge-gpu with the placement above (the
    costs are placeholders: serving reads the placements, the crossing tensors and the codec). ``switching`` adds
    a switch table over link 0: SMALL below 20 Mbit/s, RELAYED to 100, BIG ("min-cut", the chosen) above."""
    weights, _ = write_model(folder, "resnet8")
    loaded = load_model("resnet8", weights=weights)
    traced = trace(loaded.module, loaded.example_input)
    names = [n.name for n in traced.compute_nodes]
    first, second = names.index("layers_1_conv1_0"), names.index("layers_2_conv1_0")
    machines = [MachineSummary(spec=spec, kind="cpu", model_ms=1.0, memory_bytes=None, active_w=None, idle_w=None,
                               source="test") for spec in ("rpi4", "host/4", "edge-gpu")]
    rates = (("wifi", 300.0 if switching else 50.0), ("ethernet", 1000.0))
    links = [LinkSummary(spec=spec, uplink_mbps=mbps, downlink_mbps=mbps, rtt_ms=1.0, tx_w=0.0, rx_w=0.0,
                         source="test") for spec, mbps in rates]
    chosen = _entry(BIG, traced, {name: 0 if i < first else 1 if name in TIER1 else 2 for i, name in enumerate(names)},
                    machines, links)
    baselines, table = [], []
    if switching:
        baselines = [chosen, _entry(SMALL, traced, {name: 0 if i < second else 1 for i, name in enumerate(names)},
                                    machines, links),
                     _entry(RELAYED, traced, {name: 0 if i < first else 2 for i, name in enumerate(names)},
                            machines, links)]
        table = [ChainSwitchRange(low_mbps=0.1, high_mbps=20.0, label=SMALL),
                 ChainSwitchRange(low_mbps=20.0, high_mbps=100.0, label=RELAYED),
                 ChainSwitchRange(low_mbps=100.0, high_mbps=1000.0, label=BIG)]
    plan = ChainPlanReport(model="resnet8", model_ref={**loaded.ref.to_json(), "weights": str(weights)},
                           fingerprint=traced.fingerprint, input_shape=list(loaded.example_input.shape),
                           topology="rpi4 > wifi > host/4 > ethernet > edge-gpu", machines=machines, links=links,
                           hop_ms=1.0, codec=codec, objective="latency", constraints=Constraints(), chosen=chosen,
                           baselines=baselines, switch_table=table, min_cut_exact=True, planner_ms=1.0)
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


# ---- switching along the chain: every placement of the switch table served, chosen on link 0's bandwidth ----------


@pytest.fixture(scope="module")
def switching(tmp_path_factory):
    plan, path = chain_plan(tmp_path_factory.mktemp("switching"), switching=True)
    last, _ = start_tier(plan, 2)
    relay, engine = start_tier(plan, 1, last.url, TOKENS[1])
    yield {"plan": plan, "path": path, "last": last, "relay": relay, "engine": engine,
           "device": load_chain_deployment(plan, 0)}
    relay.stop()
    last.stop()


def test_every_placement_of_the_table_is_a_route_with_one_id_on_every_tier(switching):
    device, relay, last = switching["device"], switching["relay"], switching["last"]
    assert [(r.route_id, r.label, r.last_tier) for r in device.routes] == [(0, BIG, 2), (1, SMALL, 1), (2, RELAYED, 2)]
    assert [r.route_id for r in relay.engine.models[device.model_id].routes] == [0, 1, 2]
    served = last.engine.models[device.model_id]
    assert [r.route_id for r in served.routes] == [0, 2]  # SMALL ends on tier 1
    assert served.route(2).label == RELAYED  # looked up by id, not by position
    x = torch.rand(1, 3, 32, 32)
    small = device.route(1)
    body = Request(new_request_id(), device.model_id, 1, small.encode(small.device_side(x))).to_bytes()
    reply = post(last.url, body, TOKENS[1])
    assert reply.status_code == 404 and "ends before tier 2" in reply.json()["error"]
    # Tier 1 describes link 0 for every route, as the device does; the ranges are the table's, over link 0.
    described = httpx.get(relay.url + "/v1/models", headers={"Authorization": f"Bearer {TOKENS[0]}"}).json()
    model = described["models"][0]
    assert [row["label"] for row in model["switch_table"]] == [SMALL, RELAYED, BIG]
    keys = ("route_id", "label", "link", "codecs", "sends", "tensors", "last_tier", "ranges_mbps")
    assert [{k: r[k] for k in keys} for r in model["routes"]] == [{k: r.describe()[k] for k in keys}
                                                                   for r in device.routes]
    assert [(r["link"], r["tensors"], r["last_tier"], r["ranges_mbps"]) for r in model["routes"]] == [
        (0, ["layers_0_relu"], 2, [[100.0, 1000.0]]), (0, ["layers_1_relu"], 1, [[0.1, 20.0]]),
        (0, ["layers_0_relu"], 2, [[20.0, 100.0]])]
    # `serve` lists them at startup: which it answers itself and which it relays.
    console = Console(width=300, record=True)
    deployment = switching["engine"].deployment
    served_here = Relay(deployment, last.url, TOKENS[1], 10.0, 16)
    console.print(served_here.summary(deployment, relay.url, "token", ServerLimits(), 16))
    assert (f"routes 0 {BIG} (on to tier 2, 100–1000 Mbit/s on link 0); 1 {SMALL} (answered here, 0.1–20 Mbit/s on "
            f"link 0); 2 {RELAYED} (on to tier 2, 20–100 Mbit/s on link 0)") in console.export_text()
    # A table naming one placement is not followed: the chosen one is served alone, as before.
    one_row = switching["plan"].model_copy(update={"switch_table": [switching["plan"].switch_table[0]]})
    assert followed_table(one_row) == [] and [e.label for e in placements(one_row)] == [BIG]


def test_every_placement_answers_as_the_whole_model_and_ends_where_it_says(switching):
    """A client pinned on each placement gets the whole model's answer; the one that ends on tier 1 is answered by
    the relay itself, without a request to tier 2."""
    device, engine = switching["device"], switching["engine"]
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = device.model(x)
    forwarded, send = [], engine.next_hop.send

    async def counted(request: Request) -> Response:
        forwarded.append(request.route_id)
        return await send(request)

    engine.next_hop.send = counted
    try:
        results = {}
        for label in (BIG, SMALL, RELAYED):
            with ChainClient(switching["path"], switching["relay"].url, TOKENS[0], route=label, retries=0) as client:
                results[label] = client.infer(x)
                assert client.tiers == (2 if label == SMALL else 3)
            forwarded.append("|")
    finally:
        del engine.next_hop.send
    assert forwarded == [0, "|", "|", 2, "|"]  # SMALL never went past tier 1
    for label, result in results.items():
        assert (result.where, result.mode, result.label) == ("server", "route", label)
        assert torch.allclose(result.logits, expected, atol=1e-5), label
    assert results[SMALL].bytes_sent < 0.6 * results[BIG].bytes_sent  # layers_1_relu is half of layers_0_relu


def test_the_chain_client_switches_placement_on_link_0s_bandwidth(switching):
    """At 300 Mbit/s on link 0 the client runs BIG (the chosen); when link 0 drops to 4 Mbit/s it moves to SMALL,
    which sends half as much over it (later links as planned)."""
    device = switching["device"]
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = device.model(x)
    link = Throttled(300.0)
    with ChainClient(switching["path"], switching["relay"].url, TOKENS[0], transport=link, probe_every_s=60) as client:
        fast = [client.infer(x) for _ in range(4)]
        assert [r.label for r in fast] == [BIG] * 4
        link.mbps = 4.0
        slow = []
        while len(slow) < 12 and (not slow or slow[-1].label != SMALL):
            slow.append(client.infer(x))
        assert slow[-1].label == SMALL, [(r.label, r.mbps) for r in slow]
        assert 2 < client.mbps < 8 and client.tiers == 2
        switches = [(s.from_label, s.to_label) for s in client.stats.switches]
    assert switches == [(BIG, SMALL)]
    for result in fast + slow:
        assert result.where == "server" and torch.allclose(result.logits, expected, atol=1e-5)


def test_serve_needs_next_where_a_placement_goes_on(tmp_path):
    """The chosen placement ends on tier 1, the table's BIG on tier 2: tier 1 relays it, so it needs --next."""
    plan, _ = chain_plan(tmp_path, switching=True)
    stale = plan.model_copy(update={"chosen": plan.entry(SMALL)})  # the table says BIG at link 0's 300 Mbit/s
    assert followed_table(stale) == [] and [e.label for e in placements(stale)] == [SMALL]
    slow = [plan.links[0].model_copy(update={"uplink_mbps": 5.0}), plan.links[1]]
    path = tmp_path / "small-chosen.json"
    path.write_text(stale.model_copy(update={"links": slow}).model_dump_json())
    assert_user_error(edgesplit_in_process("serve", str(path), "--tier", "1"), "middle tier", "--next")
    assert_user_error(edgesplit_in_process("serve", str(path), "--tier", "2", "--next", "http://127.0.0.1:9"),
                      "last tier", "leave --next out")
    assert [r.route_id for r in load_chain_deployment(load_chain_plan(path), 2).routes] == [1, 2]
