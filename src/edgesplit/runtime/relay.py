"""Serving a chain plan (`edgesplit plan --topology`): one tier's stage of the partition, and the hop to the next.

A chain plan puts every compute node on a tier 0..``last_tier``; ``traced.partition`` cuts the model into that many
stages, and tier K runs stage K. The device (tier 0) runs stage 0 and sends what crosses link 0 to tier 1. Tier K
≥ 1 runs `edgesplit serve PLAN --tier K`: it decodes what crosses link K − 1, runs stage K and, below the last tier,
encodes what crosses link K (tensors that skip it included) and POSTs it on to ``--next`` — the same frame, request
id and top-k, its own token, a deadline — and answers with the frame that comes back. The last tier answers with
the model's result, batched like any tail.

Every placement of the plan's switch table is served (one *route* each; the table is over link 0's bandwidth,
later links as planned), besides the chosen one: route ids are one numbering on every tier (the chosen placement
first, then the table's in its order; the all-device placement has none), and tier K serves the routes whose last
tier is K or later. A tier is the last of some routes (it answers them itself, batched) and a middle tier of others
(it forwards them). The device switches between them on its link-0 estimate (``adapt.SwitchPolicy``). A table that
names one placement only, or names another than the chosen one at link 0's planned rate, is not followed: the
chosen placement is served alone.

* :class:`ChainDeployment` is a chain plan made runnable at one tier (a :class:`Deployment` whose routes are the
  placements that reach the tier, so the server's engine, limits, metrics and /v1/models take it as they are);
  :func:`load_chain_deployment` builds it.
* :class:`ChainRoute` is one placement at one tier: what the tier receives (link K − 1) and its codecs, its stage,
  and what it sends on (link K), or the result where the placement ends. Every tensor crossing a link uses the
  plan's codec.
* :class:`NextHop` is the relay's client to the next tier: many requests in flight at once (one asyncio task each,
  a pool of kept-alive connections), each with a deadline; a failure is answered 502 (``Status.BAD_GATEWAY``) with
  a message that names the link that failed, passed back unchanged by the relays before it.
* :class:`RelayEngine` is the engine of a server tier; :func:`load_relay` checks `serve`'s --tier and --next and
  builds the engine and its startup summary for `server.serve`.
* The device side, :class:`~edgesplit.runtime.chain_client.ChainClient`, is in :mod:`edgesplit.runtime.chain_client`.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import torch

from edgesplit.codecs import Codec, CodecError, DecodeLimits, pack, parse_codec, unpack, unpack_cost
from edgesplit.errors import CutError, EdgesplitError
from edgesplit.model.graph import Partition, Stage, TensorSpec, TracedModel, trace
from edgesplit.plan.schema import ChainEntry, ChainPlanReport, ChainSwitchRange, load_chain_plan, plan_kind
from edgesplit.runtime.adapt import row_label_at
from edgesplit.runtime.auth import checked_token, read_token_file
from edgesplit.runtime.deployment import Deployment, DeploymentError, _rebuild
from edgesplit.runtime.engine import Engine, Observer, ServerLimits
from edgesplit.runtime.errors import describe_transport_error, error_message
from edgesplit.runtime.guard import is_loopback
from edgesplit.runtime.wire import MEDIA_TYPE, Request, Response, Status, WireError, check_model_id, model_id_for

__all__ = ["CHAIN_KIND", "FAILED_LINK", "ChainDeployment", "ChainError", "ChainRoute", "NextHop", "Relay",
           "RelayEngine", "all_device_label", "followed_table", "link_name", "load_chain_deployment", "load_relay",
           "placements"]

CHAIN_KIND = "edgesplit.chainplan"
_UNBOUNDED = DecodeLimits(max_decoded_bytes=1 << 62)  # decode_cost reports a cost over any limit; decode refuses it
FAILED_LINK = re.compile(r"\blink (\d+)\b[^;]*? failed")  # a relay's 502 message naming the link that failed


class ChainError(EdgesplitError):
    """A chain plan served or sent to as it cannot be: a tier out of range, --next missing or extra, a plan kind."""


# ---- plans ------------------------------------------------------------------------------------------------------


def _tier_name(plan: ChainPlanReport, tier: int) -> str:
    machine = plan.machines[tier].spec if tier < len(plan.machines) else "?"
    return f"tier {tier} {machine}"


def link_name(plan: ChainPlanReport, link: int, url: str | None = None) -> str:
    """How messages name a link: 'link 1 ethernet (tier 1 host/4 → tier 2 edge-gpu at URL)'."""
    spec = plan.links[link].spec if link < len(plan.links) else "?"
    where = f" at {url}" if url else ""
    return f"link {link} {spec} ({_tier_name(plan, link)} → {_tier_name(plan, link + 1)}{where})"


# ---- the route of one tier ----------------------------------------------------------------------------------------


@dataclass
class ChainRoute:
    """What one tier does for one placement of a chain: decode what crosses link ``tier − 1``, run its stage, encode
    what crosses link ``tier`` (or, on the placement's ``last_tier``, answer with the result). Its requests travel on
    one link (``wire_link``): link 0 for the device, link ``tier − 1`` for a server; ``sent_shapes``, ``codecs`` and
    ``describe`` are that link's, the same on both of its ends."""

    route_id: int
    label: str
    tier: int
    stage: Stage
    in_codecs: list[Codec]  # one per tensor received (link tier − 1); none on the device
    out_codecs: list[Codec]  # one per tensor sent on (link tier); none on the placement's last tier
    last_tier: int  # the placement's farthest tier: it computes the result
    partition: Partition | None = None  # the placement's stages (tiers 0..last_tier)
    kind: str = "chain"
    width: float | None = None
    bottleneck: None = None
    picture: None = None
    ranges: list[tuple[float, float]] = field(default_factory=list)
    vocab: tuple[int | None, ...] = ()

    @property
    def ends_here(self) -> bool:
        """Whether this tier is the placement's last: it answers with the result instead of sending on."""
        return self.tier == self.last_tier

    @property
    def wire(self) -> tuple[TensorSpec, ...]:
        """The tensors of this route's requests: what the device sends (tier 0), or what this tier receives."""
        return self.stage.outputs if self.tier == 0 else self.stage.inputs

    @property
    def wire_link(self) -> int:
        return 0 if self.tier == 0 else self.tier - 1

    @property
    def codecs(self) -> list[Codec]:
        return self.out_codecs if self.tier == 0 else self.in_codecs

    @property
    def sent_shapes(self) -> list[tuple[int, ...]]:
        return [(1, *spec.shape[1:]) for spec in self.wire]

    @property
    def sent_dtypes(self) -> list[torch.dtype]:
        dtypes = [getattr(torch, spec.dtype, torch.float32) for spec in self.wire]
        return [torch.float32 if d.is_floating_point else d for d in dtypes]

    def warm_inputs(self) -> list[torch.Tensor]:
        return [torch.zeros(shape, dtype=dtype) for shape, dtype in zip(self.sent_shapes, self.sent_dtypes)]

    @torch.no_grad()
    def device_side(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Stage 0 on the device: what crosses link 0."""
        return list(self.stage.module(*inputs))

    def encode(self, tensors: list[torch.Tensor]) -> bytes:
        """What this tier sends on (link ``tier``) as one payload."""
        return pack([codec.encode(t.contiguous()) for codec, t in zip(self.out_codecs, tensors)])

    def decode(self, payload: bytes, limits: DecodeLimits, max_batch: int) -> list[torch.Tensor]:
        """The tensors crossing link ``tier − 1`` in ``payload``, checked against the stage's inputs (WireError)."""
        expected = self.stage.inputs
        what = f"tier {self.tier} ({self.label})"
        try:
            tensors = unpack(payload, limits, max_frames=len(expected), float_dtype=torch.float32)
        except CodecError as error:
            raise WireError(f"payload for {what}: {error}") from error
        if len(tensors) != len(expected):
            raise WireError(f"{what} takes the {len(expected)} tensor(s) crossing link {self.tier - 1}, got "
                            f"{len(tensors)}; run the chain's stages up to tier {self.tier - 1}")
        batch = tensors[0].shape[0] if tensors[0].dim() else 0
        for tensor, spec in zip(tensors, expected):
            if tensor.dim() != len(spec.shape) or tuple(tensor.shape[1:]) != tuple(spec.shape[1:]) \
                    or tensor.shape[0] != batch:
                raise WireError(f"{what} takes {spec.name} of shape {['N', *spec.shape[1:]]}, got "
                                f"{list(tensor.shape)}; run the chain's stages up to tier {self.tier - 1}")
            dtype = getattr(torch, spec.dtype, None)
            floating = dtype.is_floating_point if isinstance(dtype, torch.dtype) else True
            if tensor.is_floating_point() != floating or (not floating and tensor.dtype != dtype):
                raise WireError(f"{what} takes {spec.name} as {spec.dtype}, got "
                                f"{str(tensor.dtype).removeprefix('torch.')}")
        if not 1 <= batch <= max_batch:
            raise WireError(f"batch of {batch} is outside 1..{max_batch} for this server; send smaller batches")
        return tensors

    def decode_cost(self, payload: bytes) -> int:
        """As ``Route.decode_cost``: roughly the work of decoding ``payload``, from its headers alone."""
        try:
            cost = unpack_cost(payload, len(self.stage.inputs), torch.float32, _UNBOUNDED)
        except CodecError:
            return 0
        return cost.peak_bytes + 16 * cost.converted_values + 32 * cost.ans_symbols

    @torch.no_grad()
    def server_side(self, tensors: list[torch.Tensor]) -> object:
        """This tier's stage: what it sends on (a tuple), or the model's result on the last tier."""
        return self.stage.module(*tensors)

    @torch.no_grad()
    def forward(self, tensors: list[torch.Tensor]) -> bytes:
        """A middle tier's work on one request: its stage, then what crosses link ``tier`` encoded."""
        return self.encode(list(self.server_side(tensors)))

    def describe(self) -> dict:
        return {"route_id": self.route_id, "label": self.label, "kind": self.kind, "tier": self.tier,
                "last_tier": self.last_tier, "link": self.wire_link, "cut_index": None, "position": None,
                "head_nodes": None, "codecs": [c.spec for c in self.codecs], "width": None,
                "sends": [list(s) for s in self.sent_shapes], "tensors": [t.name for t in self.wire],
                "ranges_mbps": [list(r) for r in self.ranges]}


# ---- a chain plan made runnable at one tier -------------------------------------------------------------------------


@dataclass
class ChainDeployment(Deployment):
    """A chain plan's model and, at one tier, the routes of the placements that reach it (route ids are the same
    on every tier: see :func:`placements`)."""

    tier: int = 0
    partition: Partition | None = None  # the first route's placement (the chosen one, where it reaches this tier)
    depth: int = 0  # the farthest tier of any placement served

    @property
    def last_tier(self) -> int:
        """The farthest tier any served placement reaches (the chain's servers are tiers 1..last_tier)."""
        return self.depth

    @property
    def switch_table(self) -> list[ChainSwitchRange]:
        """The rows of the plan's switch table (first-link Mbit/s) that the device follows."""
        return followed_table(self.plan)

    def route(self, route_id: int) -> ChainRoute:
        found = next((r for r in self.routes if r.route_id == route_id), None)
        if found is not None:
            return found
        known = [entry.label for entry in placements(self.plan)]
        served = ", ".join(str(r.route_id) for r in self.routes) or "none"
        if 0 <= route_id < len(known):
            raise WireError(f"route {route_id} ({known[route_id]}) ends before tier {self.tier}; this tier of "
                            f"model {self.model_id} serves routes {served}", status=Status.NOT_FOUND)
        raise WireError(f"model {self.model_id} at tier {self.tier} serves routes {served}, not {route_id}; "
                        "GET /v1/models lists them", status=Status.NOT_FOUND)

    def label_at(self, mbps: float) -> str:
        """The followed switch table's placement at ``mbps`` on link 0 (the chosen one when the table is not
        followed)."""
        return row_label_at(self.switch_table, mbps) if self.switch_table else self.plan.chosen.label

    def describe(self) -> dict:
        plan = self.plan
        return {"model_id": self.model_id, "model": plan.model, "fingerprint": plan.fingerprint,
                "input_shape": plan.input_shape, "chosen": plan.chosen.label,
                "switch_table": [row.model_dump() for row in self.switch_table],
                "chain": {"tier": self.tier, "last_tier": self.last_tier, "topology": plan.topology,
                          "machine": plan.machines[self.tier].spec if self.tier < len(plan.machines) else None},
                "routes": [r.describe() for r in self.routes]}


def followed_table(plan: ChainPlanReport) -> list[ChainSwitchRange]:
    """The rows of ``plan``'s switch table the device switches on: all of them when they name two placements or
    more and agree with the chosen one (at link 0's planned rate the table's row is the chosen placement); none
    otherwise: the chosen placement then runs at every bandwidth, as planned (a table of one placement, or one that
    a plan whose choice was replaced, e.g. by a benchmark, still carries)."""
    table = list(plan.switch_table)
    if len({row.label for row in table}) < 2 or not plan.links:
        return []
    mbps = plan.links[0].uplink_mbps
    here = next((row.label for row in table if row.low_mbps <= mbps < row.high_mbps),
                table[0].label if mbps < table[0].low_mbps else table[-1].label)
    return table if here == plan.chosen.label else []


def all_device_label(plan: ChainPlanReport) -> str:
    """The label of the placement that runs everything on tier 0 (it has no route: nothing is sent)."""
    return next((e.label for e in [plan.chosen, *plan.baselines] if e.last_tier == 0), "all on the device")


def placements(plan: ChainPlanReport) -> list[ChainEntry]:
    """The placements served, in route-id order: the chosen one, then each other placement the followed switch table
    names, in its order; those that keep everything on the device (last tier 0) have no route and are left out."""
    found: list[ChainEntry] = []
    for label in dict.fromkeys([plan.chosen.label, *(row.label for row in followed_table(plan))]):
        try:
            entry = plan.entry(label)
        except StopIteration:
            raise DeploymentError(f"the chain plan's switch table names '{label}', which is not one of its "
                                  "placements; plan again") from None
        if entry.last_tier >= 1:
            found.append(entry)
    return found


def _partition(traced: TracedModel, entry: ChainEntry) -> Partition:
    """``entry``'s placement cut into stages 0..last_tier, checked against what the plan says crosses each link."""
    last = entry.last_tier
    try:
        partition = traced.partition(entry.assignment, stages=last + 1)
    except CutError as error:
        raise DeploymentError(f"the chain plan's placement '{entry.label}' does not partition this model ({error}); "
                              "plan again") from error
    if len(entry.hops) < last:
        raise DeploymentError(f"the chain plan's placement '{entry.label}' has {len(entry.hops)} hops for tiers "
                              f"0..{last}; plan again")
    for link, hop in enumerate(entry.hops[:last]):
        planned = [t.name for t in hop.crossing]
        actual = [t.name for t in partition.stages[link].outputs]
        if planned != actual:
            raise DeploymentError(f"the plan says {', '.join(planned) or 'nothing'} crosses link {link} in "
                                  f"'{entry.label}', the model's partition sends {', '.join(actual) or 'nothing'}; "
                                  "plan again with this edgesplit")
    return partition


def load_chain_deployment(plan: ChainPlanReport, tier: int, *, weights: str | Path | None = None,
                          model_id: str | None = None, plan_dir: Path | None = None,
                          model: str | None = None) -> ChainDeployment:
    """Rebuild ``plan``'s model and, for tier ``tier`` (0: the device), one route per served placement that reaches
    it (:func:`placements`); each placement's link codecs calibrated on its stages' outputs for the traced example
    when the codec needs it (the same on every tier)."""
    served = placements(plan)
    depth = max((entry.last_tier for entry in served), default=0)
    if not 0 <= tier <= depth:
        raise ChainError(f"this chain plan runs tiers 0..{depth}; there is no tier {tier}")
    built, example = _rebuild(plan, weights, plan_dir, model)
    traced = trace(built, example)
    if traced.fingerprint != plan.fingerprint:
        raise DeploymentError(f"the model rebuilt from the plan (graph {traced.fingerprint}) is not the one that was "
                              f"planned (graph {plan.fingerprint}); plan again with this model and weights")
    try:
        codec = parse_codec(plan.codec or "fp32")
    except CodecError as error:
        raise DeploymentError(f"the chain plan's codec '{plan.codec}' is not a codec spec ({error})") from error
    table = followed_table(plan)
    routes = []
    for route_id, entry in enumerate(served):
        last = entry.last_tier
        if last < tier:
            continue
        partition = _partition(traced, entry)
        with torch.no_grad():
            values = partition.run(*traced.example_inputs)
        links = [[codec.calibrate(t) if codec.needs_calibration else codec for t in values[link]]
                 for link in range(last)]
        routes.append(ChainRoute(route_id, entry.label, tier, partition.stages[tier], links[tier - 1] if tier else [],
                                 links[tier] if tier < last else [], last, partition,
                                 ranges=[(row.low_mbps, row.high_mbps) for row in table if row.label == entry.label]))
    if model_id is not None:
        check_model_id(model_id)
    return ChainDeployment(model_id or model_id_for(plan.model), plan, built, traced, routes, tier=tier,
                           partition=routes[0].partition if routes else None, depth=depth)


# ---- the relay's client to the next tier ----------------------------------------------------------------------------


class NextHop:
    """POST /v1/infer to the next tier: up to ``concurrency`` requests in flight (more wait their turn), each within
    ``timeout_s``; the next tier is checked (same model, graph, next tier) before the first request and after a
    failure. Every failure raises ``WireError`` with ``Status.BAD_GATEWAY`` naming the link."""

    def __init__(self, deployment: ChainDeployment, url: str, token: str | None, *, timeout_s: float = 10.0,
                 concurrency: int = 16) -> None:
        self.deployment, self.url, self.token = deployment, url.rstrip("/"), token
        self.timeout_s, self.concurrency = timeout_s, concurrency
        self.link = deployment.tier
        self.name = link_name(deployment.plan, self.link, self.url)
        self._client = None  # httpx.AsyncClient, made in the server's event loop
        self._slots: asyncio.Semaphore | None = None
        self._checked = False
        self._checking: asyncio.Lock | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._client = httpx.AsyncClient(
                base_url=self.url, headers=headers, timeout=httpx.Timeout(self.timeout_s),
                limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency))
            self._slots = asyncio.Semaphore(self.concurrency)
            self._checking = asyncio.Lock()
        return self._client

    def _failed(self, why: str) -> WireError:
        return WireError(f"{self.name} failed: {why}", Status.BAD_GATEWAY)

    async def send(self, request: Request) -> Response:
        """The next tier's answer to ``request`` (status OK), or WireError(BAD_GATEWAY) saying what failed; the
        deadline counts from here (a wait for a free slot included)."""
        client = self._http()
        if not self._checked:
            await self._check()

        async def post() -> httpx.Response:
            async with self._slots:
                return await client.post("/v1/infer", content=request.to_bytes(), headers={"Content-Type": MEDIA_TYPE})

        try:
            reply = await asyncio.wait_for(post(), self.timeout_s)
        except (asyncio.TimeoutError, httpx.TimeoutException) as error:
            raise self._failed(f"no answer within {self.timeout_s:g} s") from error
        except httpx.TransportError as error:
            self._checked = False  # it may come back as something else
            raise self._failed(describe_transport_error(error)) from error
        if reply.status_code == Status.BAD_GATEWAY.http and FAILED_LINK.search(message := error_message(reply)):
            raise WireError(message, Status.BAD_GATEWAY)  # a later link failed, and its relay says which
        if reply.status_code != 200:
            raise self._failed(f"HTTP {reply.status_code}: {error_message(reply)}")
        try:
            response = Response.from_bytes(reply.content)
        except WireError as error:
            raise self._failed(f"the answer is not an edgesplit response ({error})") from error
        if response.request_id != request.request_id or response.status != Status.OK:
            raise self._failed(f"the answer is for another request or not OK ({response.status.name})")
        return response

    async def _check(self) -> None:
        """The next tier serves this model's graph at tier ``link + 1``, taking what this tier sends."""
        async with self._checking:
            if self._checked:
                return
            try:
                reply = await asyncio.wait_for(self._client.get("/v1/models"), self.timeout_s)
            except (asyncio.TimeoutError, httpx.TimeoutException) as error:
                raise self._failed(f"GET /v1/models got no answer within {self.timeout_s:g} s") from error
            except httpx.TransportError as error:
                raise self._failed(describe_transport_error(error)) from error
            if reply.status_code != 200:
                raise self._failed(f"GET /v1/models answered HTTP {reply.status_code}: {error_message(reply)}"
                                   f"{' (check --next-token-file)' if reply.status_code == 401 else ''}")
            mine = self.deployment
            try:
                theirs = {m["model_id"]: m for m in reply.json()["models"]}.get(mine.model_id)
            except (ValueError, KeyError, TypeError) as error:
                raise self._failed("GET /v1/models is not an edgesplit model list") from error
            if theirs is None:
                raise self._failed(f"it does not serve model '{mine.model_id}'")
            chain = theirs.get("chain") or {}
            if theirs.get("fingerprint") != mine.plan.fingerprint or chain.get("tier") != self.link + 1:
                serves = f"tier {chain['tier']} of a chain" if "tier" in chain else "a two-tier plan"
                raise self._failed(f"it serves {serves} for graph {theirs.get('fingerprint')}, not tier "
                                   f"{self.link + 1} of this plan (graph {mine.plan.fingerprint}); serve the same "
                                   f"plan there with --tier {self.link + 1}")
            try:
                routes = {r["route_id"]: r for r in theirs.get("routes") or []}
            except (KeyError, TypeError) as error:
                raise self._failed("GET /v1/models lists routes without ids") from error
            for ours in (r for r in mine.routes if not r.ends_here):  # what this tier sends on, route by route
                route = routes.get(ours.route_id) or {}
                if route.get("codecs") != [c.spec for c in ours.out_codecs] \
                        or route.get("tensors") != [t.name for t in ours.stage.outputs]:
                    raise self._failed(f"its route {ours.route_id} is not this plan's '{ours.label}' at tier "
                                       f"{self.link + 1} (it takes {route.get('tensors')} {route.get('codecs')}); "
                                       f"serve the same plan there with --tier {self.link + 1}")
            self._checked = True

    async def ready(self) -> bool:
        """Whether the next tier reports ready (its /readyz, within a second)."""
        try:
            reply = await asyncio.wait_for(self._http().get("/readyz"), min(self.timeout_s, 1.0))
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False
        return reply.status_code == 200

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


# ---- the engine of a middle tier ----------------------------------------------------------------------------------


class RelayEngine(Engine):
    """A server tier of a chain. A request on a route that goes on past this tier is decoded, its stage run (one at
    a time, on the compute thread), what it sends on encoded and forwarded to ``next_hop``; requests do not wait
    for each other's answers, so many are in flight through the relay at once. A request on a route that ends here
    is answered here, batched as a tail does (the plain engine). ``next_hop`` is needed exactly when some served
    route goes on (ChainError otherwise)."""

    def __init__(self, deployment: ChainDeployment, limits: ServerLimits | None = None,
                 next_hop: NextHop | None = None, observer: Observer | None = None) -> None:
        onward = [r for r in deployment.routes if not r.ends_here]
        if onward and next_hop is None:
            raise ChainError(f"tier {deployment.tier} relays {', '.join(repr(r.label) for r in onward)} to tier "
                             f"{deployment.tier + 1}: it needs a next hop")
        super().__init__([deployment], limits or ServerLimits(), observer)
        self.deployment, self.next_hop = deployment, next_hop

    async def _answer(self, request: Request, route: ChainRoute, started: float) -> Response:
        if route.ends_here:
            return await super()._answer(request, route, started)
        tensors = await self.decoded(request, route)
        began = time.perf_counter()
        payload = await asyncio.get_running_loop().run_in_executor(self._compute, route.forward, tensors)
        self.observer.batch(route, 1, tensors[0].shape[0], time.perf_counter() - began)
        answer = await self.next_hop.send(Request(request.request_id, request.model_id, route.route_id, payload,
                                                  None, request.top_k))
        return Response(request.request_id, Status.OK, answer.payload, 0.0, answer.batch_size)

    async def warm_up(self, passes: int = 3) -> None:
        await super().warm_up(passes)
        for route in self.deployment.routes:  # the encoder too, where it sends on: its first frames cost more
            if not route.ends_here:
                await asyncio.get_running_loop().run_in_executor(self._compute, route.forward, route.warm_inputs())

    async def ready(self) -> bool:
        """Whether requests can go through: the next tier is ready (always, without a next hop)."""
        return self.next_hop is None or await self.next_hop.ready()

    async def close(self) -> None:
        await super().close()
        if self.next_hop is not None:
            await self.next_hop.close()


# ---- `edgesplit serve PLAN --tier K [--next URL]` -------------------------------------------------------------------


@dataclass
class Relay:
    """What `serve` needs for one tier of a chain: the deployment, its engine for given limits, its summary."""

    deployment: ChainDeployment
    next_url: str | None
    next_token: str | None
    next_timeout_s: float
    next_concurrency: int

    def engine(self, limits: ServerLimits) -> RelayEngine:
        hop = None if self.next_url is None else NextHop(self.deployment, self.next_url, self.next_token,
                                                        timeout_s=self.next_timeout_s,
                                                        concurrency=self.next_concurrency)
        return RelayEngine(self.deployment, limits, hop)

    def summary(self, deployment: ChainDeployment, url: str, token_source: str | None, limits: ServerLimits,
                client_concurrency: int, guards=None):
        """One screen: the chain (the first route's placement), this tier's stage, what it receives and sends on,
        the routes it serves, where, auth and limits."""
        from rich.console import Group
        from rich.markup import escape
        from rich.table import Table
        from rich.text import Text

        plan, tier, last = deployment.plan, deployment.tier, deployment.last_tier
        route = deployment.routes[0]
        ends = route.last_tier
        table = Table(title=escape(f"edgesplit serve — {plan.model} tier {tier} of 0..{last} (model id "
                                   f"{deployment.model_id}, graph {plan.fingerprint})"), title_justify="left")
        for column in ("tier", "machine", "nodes", "receives", "sends on", "codec"):
            table.add_column(column)
        for index, stage in enumerate(route.partition.stages):
            mark = " ◀ here" if index == tier else ""
            table.add_row(f"{index}{mark}", escape(plan.machines[index].spec if index < len(plan.machines) else "?"),
                          str(len(stage.nodes)), escape(_tensors(stage.inputs) if index else "the input"),
                          escape(_tensors(stage.outputs) if index < ends else "the result"),
                          escape(plan.codec if index < ends else "fp32 result"))
        lines = [table, Text.assemble(("listening ", "bold"), url, f"  (receives {link_name(plan, tier - 1)})")]
        if len(deployment.routes) > 1:  # the switch table's placements: the device picks one by link 0's bandwidth
            lines.append(Text.assemble(("routes ", "bold"), "; ".join(map(_route_line, deployment.routes))))
        if self.next_url is None:
            lines.append(Text.assemble(("last tier ", "bold"), "answers with the model's result"))
        else:
            lines.append(Text.assemble(("next hop ", "bold"), self.next_url,
                                       f"  ({link_name(plan, tier)}; token "
                                       f"{'on' if self.next_token else 'none'}, {self.next_timeout_s:g} s deadline, "
                                       f"{self.next_concurrency} in flight)"))
            if self.next_url.startswith("http://") and not is_loopback(urlsplit(self.next_url).hostname or ""):
                lines.append(Text("note: the next hop is plain HTTP; its token and the features cross the network "
                                  "in clear", style="yellow"))
        if token_source is None:
            lines.append(Text("warning: authentication is OFF (no --token-file or $EDGESPLIT_TOKEN); this is allowed "
                              "on loopback only", style="bold yellow"))
        else:
            lines.append(Text.assemble(("auth ", "bold"), f"on: bearer token from {token_source}"))
        lines.append(Text.assemble(("limits ", "bold"), f"batch ≤ {limits.max_batch} inputs, request ≤ "
                                   f"{limits.max_request_bytes / 2**20:.3g} MiB, decode ≤ "
                                   f"{limits.decode.max_decoded_bytes / 2**20:.3g} MiB, {client_concurrency} in "
                                   f"flight per client"))
        return Group(*lines)


def _route_line(route: ChainRoute) -> str:
    """'2 tier 1 only relays (on to tier 2, 20–100 Mbit/s on link 0)': a served route in the startup summary."""
    where = "answered here" if route.ends_here else f"on to tier {route.tier + 1}"
    ranges = ", ".join(f"{low:g}–{high:g}" for low, high in route.ranges)
    return f"{route.route_id} {route.label} ({where}{f', {ranges} Mbit/s on link 0' if ranges else ''})"


def _tensors(specs: tuple[TensorSpec, ...]) -> str:
    return " ".join(f"{t.name}[{'×'.join(map(str, t.shape[1:]))}]" for t in specs) or "—"


def load_relay(plan_path: Path, tier: int | None, *, next_url: str | None = None, next_token_file: Path | None = None,
               next_timeout_s: float = 10.0, next_concurrency: int = 16, weights: Path | None = None,
               model_id: str | None = None, model: str | None = None) -> Relay:
    """`serve`'s chain options checked against the plan (one-line ChainErrors), then tier ``tier`` built."""
    if plan_kind(plan_path) == "edgesplit.plan":
        raise ChainError(f"{plan_path} is a two-tier plan; --tier and --next serve chain plans (`edgesplit plan MODEL "
                         "--topology 'A > LINK > B > LINK > C' --json plan.json`): serve it without them")
    plan = load_chain_plan(plan_path)
    last = max((entry.last_tier for entry in placements(plan)), default=0)  # the deepest placement served
    if last < 1:
        raise ChainError(f"{plan_path} runs the whole model on tier 0 (the device): there is no tier to serve")
    if tier is None:
        raise ChainError(f"{plan_path} is a chain plan over tiers 0..{last}: serve one tier with --tier K (1..{last}), "
                         f"and --next URL (the tier K+1 server) for tiers below {last}")
    if not 1 <= tier <= last:
        raise ChainError(f"--tier {tier} is out of range: this chain plan's servers are tiers 1..{last} (tier 0 is "
                         "the device, which runs `edgesplit infer`)")
    if tier < last and next_url is None:
        raise ChainError(f"tier {tier} is a middle tier of 0..{last}: give --next URL, the server of tier {tier + 1}")
    if tier == last and next_url is not None:
        raise ChainError(f"tier {tier} is the last tier of this chain plan: it answers with the result itself, so "
                         "leave --next out")
    if next_url is None and next_token_file is not None:
        raise ChainError("--next-token-file is the token of the --next server; give --next too, or leave it out")
    if next_url is not None:
        next_url = next_url.rstrip("/")
        parts = urlsplit(next_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
            raise ChainError(f"--next {next_url} is not http(s)://HOST:PORT; give the tier {tier + 1} server's URL, "
                             "e.g. http://10.0.0.3:8000")
    if next_timeout_s <= 0 or next_concurrency < 1:
        raise ChainError("--next-timeout must be above 0 and the next hop's concurrency at least 1")
    token = None
    if next_token_file is not None:
        token = checked_token(read_token_file(Path(next_token_file)), f"the token in {next_token_file}")
    deployment = load_chain_deployment(plan, tier, weights=weights, model_id=model_id,
                                       plan_dir=Path(plan_path).parent, model=model)
    return Relay(deployment, next_url, token, next_timeout_s, next_concurrency)
