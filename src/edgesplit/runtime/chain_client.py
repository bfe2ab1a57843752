"""The device of a chain plan (`edgesplit infer` on a plan from `edgesplit plan --topology`).

:class:`ChainClient` runs stage 0 here and sends what crosses link 0 to the first hop (the tier 1 server of
:mod:`edgesplit.runtime.relay`); the answer comes back from the placement's last tier through the relays. The
placement is switched on link 0's bandwidth as the two-tier client switches routes; when a hop fails, the whole model
runs here and ``failure`` says which link failed. :func:`chain_note` and :func:`chain_text` are what `infer` adds to
its summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgesplit.plan.schema import ChainEntry, ChainPlanReport, ChainSwitchRange, LinkSummary, load_chain_plan
from edgesplit.runtime.adapt import SwitchPolicy
from edgesplit.runtime.client import Client
from edgesplit.runtime.errors import ClientError, ServerMismatchError
from edgesplit.runtime.relay import (FAILED_LINK, ChainDeployment, ChainRoute, all_device_label, link_name,
                                     load_chain_deployment)


@dataclass
class _Labelled:
    label: str


@dataclass
class _LinkZero:
    """The plan as the switch policy reads it (``adapt.SwitchPolicy``, ``adapt.Adapter``): the followed switch table
    over link 0, the chosen and all-device placements, and link 0 as "the link"."""

    switch_table: list[ChainSwitchRange]
    chosen: ChainEntry
    all_device: _Labelled
    link: LinkSummary


class _SwitchView:
    """A chain deployment as ``SwitchPolicy`` reads a deployment: the switch table over link 0's bandwidth, each
    placement's route by label (later links as planned)."""

    def __init__(self, deployment: ChainDeployment) -> None:
        plan = deployment.plan
        self.deployment = deployment
        link = plan.links[0] if plan.links else LinkSummary(spec="?", uplink_mbps=1.0, downlink_mbps=1.0, rtt_ms=0.0,
                                                            tx_w=0.0, rx_w=0.0, source="none")
        self.plan = _LinkZero(deployment.switch_table, plan.chosen, _Labelled(all_device_label(plan)), link)

    def label_at(self, mbps: float) -> str:
        return self.deployment.label_at(mbps)

    def route_for_label(self, label: str) -> ChainRoute | None:
        return self.deployment.route_for_label(label)


class ChainClient(Client):
    """The device of a chain plan: stage 0 here, what crosses link 0 to the first hop (``url``: the tier 1 server),
    the result back from the placement's last tier through the relays. `edgesplit infer` makes one for a chain
    plan; it takes ``Client``'s options (timeouts, retries, fallback, stream, TLS). The placement follows the plan's
    switch table on the link-0 estimate (``adapt.SwitchPolicy`` and ``Adapter``, as the two-tier client; later links
    as planned); ``route`` pins one placement by its label. A table that is not followed (``followed_table``) leaves
    the chosen placement running. When a request fails on every attempt, the whole model runs here (``fallback``) and
    ``failure`` says which link failed (``failed_link``: 0 for the first hop itself)."""

    def __init__(self, plan: ChainPlanReport | ChainDeployment | str | Path, url: str, token: str | None = None, *,
                 weights: str | Path | None = None, model_id: str | None = None, plan_dir: str | Path | None = None,
                 model: str | None = None, onnx_dir: str | Path | None = None, route: str | None = None,
                 initial_mbps: float | None = None, **options) -> None:
        if onnx_dir is not None:
            raise ClientError("--onnx exports two-tier heads; a chain plan's stage 0 runs with PyTorch (leave it out)")
        if isinstance(plan, (str, Path)):
            plan_dir = plan_dir or Path(plan).parent
            plan = load_chain_plan(plan)
        if isinstance(plan, ChainPlanReport):
            plan = load_chain_deployment(plan, 0, weights=weights, model_id=model_id, model=model,
                                         plan_dir=Path(plan_dir) if plan_dir else None)
        if not plan.routes:
            raise ClientError(f"the chain plan for {plan.plan.model} runs the whole model on the device (tier 0); "
                              "there is nothing to send")
        self.failure: str | None = None  # why the last outage began, naming the link
        self.failed_link: int | None = None
        first_link = plan.plan.links[0].uplink_mbps if plan.plan.links else 1.0
        super().__init__(plan, url, token, route=route, model_id=model_id,
                         initial_mbps=initial_mbps if initial_mbps is not None else first_link, **options)

    def _switch_policy(self, hysteresis: float) -> SwitchPolicy:
        return SwitchPolicy(_SwitchView(self.deployment), hysteresis)

    def _check_models(self) -> None:
        """As ``Client``'s, and the server must be tier 1 of this chain (not a later tier, not a two-tier tail)."""
        super()._check_models()
        reply = self._http.get("/v1/models")
        try:
            theirs = {m["model_id"]: m for m in reply.json()["models"]}[self.deployment.model_id]
        except (ValueError, KeyError, TypeError) as error:
            raise ServerMismatchError(f"{self.url}/v1/models changed while connecting; try again") from error
        tier = (theirs.get("chain") or {}).get("tier")
        if tier != 1:
            serves = f"tier {tier} of the chain" if tier is not None else "a two-tier plan"
            self._connected = False
            raise ServerMismatchError(f"the server at {self.url} serves {serves}; point --server at the first hop "
                                      "(`edgesplit serve PLAN --tier 1 --next URL`)")

    def _give_up(self, why: str) -> None:
        found = FAILED_LINK.search(why)
        self.failed_link = int(found.group(1)) if found else 0
        # A relay's message names the link ("… (last: HTTP 502: link 1 … failed: …)"); else the first hop failed.
        self.failure = why[found.start():].removesuffix(")") if found else \
            f"{link_name(self.deployment.plan, 0, self.url)} failed: {why}"
        return super()._give_up(self.failure)

    @property
    def tiers(self) -> int:
        """The tiers the current placement runs on (1: all on this device)."""
        route = self.deployment.route_for_label(self.label)
        return route.last_tier + 1 if route is not None else 1


def chain_text(note: dict) -> str:
    """``chain_note`` as the line `edgesplit infer` prints under its summary."""
    line = f"chain: tiers 0..{note['tiers'] - 1} ({note['topology']}), stage 0 on this device"
    if note["failure"] is None:
        return line + "; every answer came through the chain"
    return (f"{line}; {note['failure']} — {note['fallbacks']} result(s) computed on this device instead (the whole "
            "model, as a fallback)")


def chain_note(client: Client) -> dict | None:
    """What `edgesplit infer` adds for a chain plan: the tiers, and the link that failed if one did."""
    if not isinstance(client, ChainClient):
        return None
    return {"tiers": client.tiers, "topology": client.deployment.plan.topology, "failed_link": client.failed_link,
            "failure": client.failure, "fallbacks": client.stats.fallbacks}


__all__ = ["ChainClient", "chain_note", "chain_text"]
