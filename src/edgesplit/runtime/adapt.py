"""The adaptation policy of the client: what the uplink is, and which plan of the switch table to run on it.

Pure: requests' sizes and times go in, a bandwidth estimate and a plan's label come out; nothing here sends.

* Bandwidth: a request's time beyond what the server reports is a fixed cost (round trip, both stacks) plus its
  bits ÷ the bandwidth. Both come from the requests (:class:`BandwidthEstimator`): a Theil–Sen line over recent
  requests of two sizes (routes differ, probes, timed requests of two sizes on connect) gives the fixed cost; the
  estimate is the median of the last five requests' transfer times; a transfer within ``min_transfer_ms`` of the
  fixed cost only says the link is at least that fast.
* Switching: the switch table's plan for the estimate is adopted only once the estimate is outside every range of
  the current plan by the hysteresis margin (:class:`SwitchPolicy`; 20%: a plan valid below 4 Mbit/s is kept up to
  4.8), so a link that sits at a threshold does not flap. Below the lowest split range the client runs everything
  locally.
* Choosing each request's route (:class:`Adapter`, shared by the torch client and the torch-free device client):
  the table's plan; a check request of another frame size before a switch down that rests on one size; probes of
  the next route up where nothing is timed; and, where the link is too fast for transfers to be timed (the
  estimate is only a lower bound), the two routes' measured request times decide whether to move up.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["DISTINCT", "Adapter", "Adapting", "BandwidthEstimator", "ClientStats", "Switch", "SwitchPolicy",
           "SwitchSource", "distinct_sizes", "row_label_at", "theil_sen"]

log = logging.getLogger("edgesplit.client")

DISTINCT = 1.25  # frames this many times larger count as another size


def distinct_sizes(a: float, b: float) -> bool:
    """Whether frames of ``a`` and ``b`` bytes (or bits) count as two sizes: one is ``DISTINCT``× the other."""
    return max(a, b) >= DISTINCT * min(a, b)


class _Row(Protocol):
    low_mbps: float
    high_mbps: float
    label: str


def row_label_at(table: Sequence[_Row], mbps: float) -> str:
    """The label of the switch-table row whose [low, high) Mbit/s range holds ``mbps``; the first row's below the
    table, the last row's above it. Rows are in rising, disjoint ranges (as plans and bundles are checked to be)."""
    for row in table:
        if row.low_mbps <= mbps < row.high_mbps:
            return row.label
    return table[0].label if mbps < table[0].low_mbps else table[-1].label


class SwitchSource(Protocol):
    """What the policy reads of a deployment: ``plan.switch_table`` (rows with ``low_mbps``, ``high_mbps``,
    ``label``), ``plan.all_device.label``, ``plan.chosen.label``, ``plan.link.uplink_mbps``, ``label_at(mbps)`` and
    ``route_for_label(label)`` (None for all-device). A ``runtime.deployment.Deployment`` is one, and so is the
    device client's view of a bundle (``edgesplit.device.client``, no torch)."""

    plan: Any

    def label_at(self, mbps: float) -> str: ...

    def route_for_label(self, label: str) -> object | None: ...


class BandwidthEstimator:
    """The uplink in Mbit/s, from the requests themselves: a request's time beyond what the server reports is a fixed
    cost (round trip, HTTP or WebSocket framing, both stacks) plus its bits ÷ the bandwidth.

    * The fixed cost is the intercept of a Theil–Sen line (the median of pairwise slopes) of time on bits over the
      last ``recent`` requests, whenever they hold two frame sizes (routes differ, a probe, the calibration on
      connect). A fit whose requests do not lie near one line (the link changed among them) is not used. With one
      frame size the slope cannot be told from the intercept, so the fixed cost learned before stands; when most
      recent requests are faster than it, it falls to their median.
    * Each request's transfer time is its time minus the fixed cost. One within ``tolerance_s`` of it (the larger of
      ``min_transfer_s`` and a quarter of the fixed cost) is *censored*: it only says the link is at least bits ÷
      tolerance fast, never that it is slow.
    * The estimate is the median of the last ``recent`` requests, censored ones counting as faster than any measured
      one: a hiccup (or two in five) moves nothing, a real change is followed after three requests. When most are
      censored the estimate is a lower bound: it rises to it but never falls on it, and a measured request above it
      (a probe of a bigger route) is taken.

    ``prior_mbps`` is the estimate until something is measured.
    """

    def __init__(self, prior_mbps: float | None = None, *, min_transfer_s: float = 0.002, recent: int = 5) -> None:
        if min_transfer_s <= 0 or recent < 1:
            raise ValueError("min_transfer_s must be positive and recent ≥ 1")
        self.min_transfer_s = min_transfer_s
        self._mbps = prior_mbps if prior_mbps and prior_mbps > 0 else None
        self._prior = self._mbps
        self._recent: deque[tuple[float, float, bool]] = deque(maxlen=recent)  # bits, seconds, timed out
        self.fixed_s: float | None = None  # the learned fixed cost per request
        self.measured = False  # False while the estimate is still the prior
        self.censored = False  # the estimate is a lower bound: recent transfers were too short to time
        self.samples = 0

    @property
    def mbps(self) -> float | None:
        return self._mbps

    @property
    def tolerance_s(self) -> float:
        return max(self.min_transfer_s, 0.25 * (self.fixed_s or 0.0))

    @property
    def one_size(self) -> bool:
        """Whether the recent requests all had about one size (then the link and the fixed cost are not told apart
        by them: the fixed cost is the one learned before)."""
        sizes = [bits for bits, _, _ in self._recent]
        return not sizes or not distinct_sizes(max(sizes), min(sizes))

    def add(self, bits: float, seconds: float, probe: bool = False) -> float | None:
        """One answered request of ``bits`` that took ``seconds`` beyond the server's time; returns the estimate.
        (``probe`` is accepted for callers that mark probes; a probe is a request like any other.)"""
        self.samples += 1
        self._recent.append((bits, seconds, False))
        self._fit()
        return self._estimate()

    @property
    def recent_bits(self) -> list[float]:
        """The sizes (bits) of the recent requests, oldest first."""
        return [bits for bits, _, _ in self._recent]

    @property
    def typical_bits(self) -> float:
        """The median size of the recent requests."""
        sizes = sorted(bits for bits, _, _ in self._recent)
        return sizes[(len(sizes) - 1) // 2] if sizes else 0.0

    def forget(self) -> None:
        """Drop the recent requests but the last (they raised a suspicion that another size did not bear out)."""
        while len(self._recent) > 1:
            self._recent.popleft()
        self._estimate()

    def add_upper_bound(self, bits: float, seconds: float) -> float | None:
        """A transfer that had not finished after ``seconds`` (a timeout): the link is at most this fast."""
        self.samples += 1
        self._recent.append((bits, seconds, True))
        return self._estimate()

    def _fit(self) -> None:
        recent = [(bits, seconds) for bits, seconds, late in self._recent if not late]
        line = theil_sen(recent)
        if line is not None:  # the latest requests hold two sizes: the fixed cost, if they lie near one line
            fixed, slope = line
            misfit = sorted(abs(t - fixed - slope * b) for b, t in recent)[(len(recent) - 1) // 2]
            if fixed > -self.tolerance_s and misfit <= self.tolerance_s:  # else the link changed among them
                self.fixed_s = max(fixed, 0.0)
                return
        if self.fixed_s is None:  # one size and nothing learned: what the prior's transfer time leaves
            bits, seconds = min(recent, key=lambda s: s[1])
            self.fixed_s = max(seconds - (bits / (self._prior * 1e6) if self._prior else 0.0), 0.0)
        recent = sorted(t for _, t, late in self._recent if not late)
        if recent and self.fixed_s is not None and recent[(len(recent) - 1) // 2] < self.fixed_s:
            self.fixed_s = recent[(len(recent) - 1) // 2]  # most requests are faster than the fixed cost: it fell

    def _estimate(self) -> float | None:
        fixed, tolerance = self.fixed_s or 0.0, self.tolerance_s
        measured, bounds, uppers = [], [], []
        for bits, seconds, late in self._recent:
            transfer = seconds - fixed
            if late:
                measured.append(bits / max(transfer, tolerance) / 1e6)  # at most this fast
                uppers.append(measured[-1])
            elif transfer <= tolerance:
                bounds.append(bits / tolerance / 1e6)  # at least this fast
            else:
                measured.append(bits / transfer / 1e6)
        if 2 * len(measured) > len(measured) + len(bounds):  # most were timed: their median, censored ones above
            ordered = sorted(measured) + [math.inf] * len(bounds)
            self._mbps = ordered[(len(ordered) - 1) // 2]
            self.measured, self.censored = True, False
            return self._mbps
        bound = sorted(bounds)[(len(bounds) - 1) // 2]
        above = sorted(m for m in measured if m >= bound)  # consistent with the bounds: a probe of a bigger route
        faster = above[(len(above) - 1) // 2] if above else 0.0
        self._mbps = max(self._mbps or 0.0, bound, faster)
        self.censored = not above or faster < self._mbps
        if uppers:  # a recent timeout caps it: no probing of what just stalled
            self._mbps, self.censored = min(self._mbps, min(uppers)), False
        self.measured = self.measured or bool(above)
        return self._mbps


def theil_sen(samples: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """(intercept, slope ≥ 0) of the Theil–Sen line of y on x, over pairs whose x differ by ``DISTINCT``×; None
    when fewer than two such pairs exist (one size only: the slope cannot be told)."""
    slopes = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(samples) for x2, y2 in samples[i + 1:]
              if distinct_sizes(x1, x2)]
    if len(slopes) < 2:
        return None
    slopes.sort()
    slope = max(slopes[(len(slopes) - 1) // 2], 0.0)
    offsets = sorted(y - slope * x for x, y in samples)
    return offsets[(len(offsets) - 1) // 2], slope


class SwitchPolicy:
    """The switch table with hysteresis: which plan to run for a bandwidth estimate, given the one running.

    ``deployment`` is read only as a :class:`SwitchSource`.
    """

    def __init__(self, deployment: SwitchSource, hysteresis: float = 0.2) -> None:
        if hysteresis < 0:
            raise ValueError(f"hysteresis {hysteresis} is negative")
        self.deployment, self.hysteresis = deployment, hysteresis
        rows = sorted(deployment.plan.switch_table, key=lambda r: r.low_mbps)
        self.rows = rows
        self.all_device_label = deployment.plan.all_device.label
        # Outside the table, its first and last rows apply (as Deployment.label_at says).
        self.ranges: dict[str, list[tuple[float, float]]] = {}
        for i, row in enumerate(rows):
            low = 0.0 if i == 0 else row.low_mbps
            high = math.inf if i == len(rows) - 1 else row.high_mbps
            self.ranges.setdefault(row.label, []).append((low, high))

    def label_at(self, mbps: float) -> str:
        return self.deployment.label_at(mbps) if self.rows else self.deployment.plan.chosen.label

    def holds(self, label: str, mbps: float) -> bool:
        """Whether ``label`` is still right at ``mbps``: one of its ranges is within the hysteresis margin."""
        if not self.rows:
            return True
        low, high = mbps / (1 + self.hysteresis), mbps * (1 + self.hysteresis)
        return any(lo <= high and low < hi for lo, hi in self.ranges.get(label, []))

    def lower(self, label: str, than: str) -> bool:
        """Whether ``label`` is a plan for slower links than ``than`` (its ranges end lower)."""
        def top(name: str) -> float:
            return max((high for _, high in self.ranges.get(name, [])), default=0.0)
        return top(label) < top(than)

    def next(self, label: str, mbps: float) -> str:
        """The plan to run at ``mbps`` when ``label`` runs now."""
        return label if self.holds(label, mbps) else self.label_at(mbps)

    def above(self, label: str) -> str | None:
        """The plan of the range just above ``label``'s highest one that runs over the network, if any."""
        tops = [hi for lo, hi in self.ranges.get(label, [])]
        if not tops:
            return None
        top = max(tops)
        for row in self.rows:
            if row.low_mbps >= top and row.label != label and self.deployment.route_for_label(row.label) is not None:
                return row.label
        return None


# ---- a client's choice of route per request ------------------------------------------------------------------------

@dataclass
class Switch:
    """A change of plan made because the bandwidth estimate crossed a threshold of the switch table (or, where the
    link is too fast to time, because the route above answered faster)."""

    request: int  # index of the first request that ran on the new plan
    from_label: str
    to_label: str
    mbps: float


@dataclass
class ClientStats:
    """What a client did (the torch client's and the device client's)."""

    requests: int = 0
    server_results: int = 0
    device_results: int = 0
    fallbacks: int = 0  # results computed locally because the server did not answer
    outages: int = 0  # times the client gave up on the server and went to the device
    recoveries: int = 0  # times it came back
    retries: int = 0  # attempts after the first
    probes: int = 0  # requests sent on another route than the plan's: probes of the next route up, checks
    calibrations: int = 0  # requests sent on connect only to time two frame sizes
    bytes_sent: int = 0
    switches: list[Switch] = field(default_factory=list)


class Adapter:
    """Which plan of the switch table each request runs on, and what each answer says about the link.

    A client asks :meth:`pick` for the next request's label and mode, and reports every answered request with
    :meth:`answered` (and a timed-out attempt with :meth:`timed_out`). Around the estimator and the policy:

    * A switch to a slower plan that rests on requests of one frame size waits for one *check* request of another
      size (the target's route where its frames differ) and is made only if that request's time grows with its bytes
      as the estimate says; a hiccup of a busy machine is not a slow link.
    * Where nothing is timed (all on device, or transfers shorter than the estimator can time) one request goes on the
      next route up every ``probe_every_s``, and, while a route runs on the server, also every
      ``probe_every_requests`` requests, so a fast link is noticed within a short run too.
    * Where the estimate is only a lower bound (the link is too fast for these frames to be timed), the table's
      thresholds cannot be checked; the route above is then adopted when its probes' median request time (as the
      client sees it: head, encoding, transfer, server) is ``faster_by`` below the current route's median.

    ``stats`` (a :class:`ClientStats`) gets the probes and switches. ``route`` pins one label (no switching, no
    probes; the estimate is still kept).
    """

    def __init__(self, policy: SwitchPolicy, stats: ClientStats, *, prior_mbps: float | None,
                 min_transfer_s: float = 0.002, probe_every_s: float = 2.0, probe_every_requests: int = 16,
                 faster_by: float = 0.1, route: str | None = None) -> None:
        self.policy, self.stats = policy, stats
        self.deployment = policy.deployment
        self.estimator = BandwidthEstimator(prior_mbps, min_transfer_s=min_transfer_s)
        self.probe_every_s, self.probe_every_requests, self.faster_by = probe_every_s, probe_every_requests, faster_by
        self.pinned = route is not None
        self.label = route if route is not None else policy.label_at(prior_mbps or 0.0)
        self.sizes: dict[str, int] = {}  # request bytes of each route for one input (checks pick another size)
        self._check: str | None = None  # the label of the next request: another frame size before a switch
        self._checking = False  # this request is that check
        self._suspect: tuple[str, float, float, float] | None = None  # target, Mbit/s, fixed cost, bits
        self._probe_at = -math.inf
        self._since_probe = 0
        self._times: dict[str, deque[float]] = {}  # recent request times (s) of one input, per label

    def pick(self, now: float) -> tuple[str, str]:
        """(label, mode) of the next request: ("the plan's label", "route"), or another label with "probe"."""
        if self.pinned:
            return self.label, "route"
        self._checking = False
        if self._check is not None:  # a switch waits for this request of another size
            check, self._check, self._checking = self._check, None, True
            self.stats.probes += 1
            return check, "probe"
        on_server = self.deployment.route_for_label(self.label) is not None
        self._since_probe += 1
        if not (on_server and not self.estimator.censored):
            due = now - self._probe_at >= self.probe_every_s or (
                on_server and self._since_probe >= self.probe_every_requests)
            up = self.policy.above(self.label) if due else None
            if up is not None:
                self._probe_at, self._since_probe = now, 0
                self.stats.probes += 1
                return up, "probe"
        return self.label, "route"

    def unmeasured(self, mode: str) -> None:
        """A request whose time says nothing (the first after connecting): a probe is made again on the next one."""
        if mode == "probe":
            self._probe_at = -math.inf

    def answered(self, label: str, frame_bytes: int, elapsed_s: float, server_s: float, index: int, *,
                 request_s: float | None = None) -> None:
        """Request ``index`` on ``label`` sent ``frame_bytes`` and was answered ``elapsed_s`` after sending, of which
        the server spent ``server_s``; ``request_s`` is its whole time as the client saw it, for one input."""
        if request_s is not None:
            self._times.setdefault(label, deque(maxlen=9)).append(request_s)
        seconds = max(elapsed_s - server_s, 0.0)
        self.estimator.add(frame_bytes * 8, seconds)
        if self._checking and self._suspect is not None:
            self._checking = False
            self._confirm(frame_bytes * 8, seconds, index)
        else:
            self._decide(index)

    def timed_out(self, bits: int, seconds: float, index: int) -> None:
        """An attempt that timed out: its bits took longer than ``seconds``, so lower routes may be needed."""
        self.estimator.add_upper_bound(bits, seconds)
        self._decide(index)

    def _check_label(self, target: str) -> str | None:
        """A route whose frames differ in size from the recent requests' (the target's if it does, else the
        smallest that does) and cross in 0.1 s at the estimate; None if there is none."""
        recent = [bits / 8 for bits in self.estimator.recent_bits]
        if not recent:
            return None
        size = sorted(recent)[(len(recent) - 1) // 2]
        mbps = self.estimator.mbps or self.deployment.plan.link.uplink_mbps
        candidates = sorted((bytes_, label) for label, bytes_ in self.sizes.items()
                            if distinct_sizes(bytes_, size) and bytes_ * 8 / (mbps * 1e6) <= 0.1)
        labels = [label for _, label in candidates]
        return target if target in labels else labels[0] if labels else None

    def _decide(self, index: int) -> None:
        if self.pinned:
            return
        estimator = self.estimator
        target = self.policy.next(self.label, estimator.mbps)
        if self._check is not None:
            return
        if target == self.label:
            if estimator.censored:
                self._maybe_move_up(index)
            return
        if self.policy.lower(target, self.label):
            if estimator.censored:
                return  # "at least this fast" never says that a slower plan is needed
            if estimator.one_size:
                # One frame size cannot tell a slower link from a slower request (a busy machine, a scheduling
                # hiccup): the next request goes on a route of another size (the target's, where it has one), and
                # the switch is made only if its transfer time bears the same bandwidth out.
                check = self._check_label(target)
                if check is None:  # no other size to ask: only transfers far too long for a hiccup count
                    if estimator.typical_bits / (estimator.mbps * 1e6) < 10 * estimator.tolerance_s:
                        return
                    self._switch(index, target)
                    return
                self._check = check
                self._suspect = (target, estimator.mbps, estimator.fixed_s or 0.0, estimator.typical_bits)
                return
        self._switch(index, target)

    def _maybe_move_up(self, index: int) -> None:
        """The link is too fast to time: move to the route above when its probes answered clearly faster."""
        up = self.policy.above(self.label)
        here, there = self._times.get(self.label), self._times.get(up) if up else None
        if not here or not there or len(here) < 3 or len(there) < 3:
            return
        probes = sorted(list(there)[-3:])
        if probes[1] < (1 - self.faster_by) * sorted(here)[(len(here) - 1) // 2]:
            self._switch(index, up)

    def _confirm(self, bits: int, seconds: float, index: int) -> None:
        """The answer to a check request: switch if its transfer time bears the suspected bandwidth out, else
        forget the requests that raised the suspicion."""
        target, mbps, fixed, suspect_bits = self._suspect
        self._suspect = None
        ratio, tolerance = bits / suspect_bits, self.estimator.tolerance_s
        transfer = seconds - fixed
        if transfer > tolerance:  # timed: nearer "time grows with bytes" than "time is the same" (log midpoint)
            agrees = abs(math.log(bits / transfer / 1e6 / mbps)) < abs(math.log(ratio)) / 2
        else:  # too short to time: agrees only if the slow transfers were far too long to be a hiccup
            agrees = ratio < 1 and suspect_bits / (mbps * 1e6) >= 10 * tolerance
        if agrees:
            self._switch(index, target)
        else:
            log.info("a %d-byte request did not bear out %.3g Mbit/s: no switch to %s", bits // 8, mbps, target)
            self.estimator.forget()

    def _switch(self, index: int, target: str) -> None:
        if target != self.label:
            self.stats.switches.append(Switch(index + 1, self.label, target, self.estimator.mbps))
            log.info("switching from %s to %s at %.3g Mbit/s", self.label, target, self.estimator.mbps)
            self.label = target


class Adapting:
    """What a client shows of its :class:`Adapter` (``self.adapter``): the torch client's and the device client's."""

    adapter: Adapter

    @property
    def label(self) -> str:
        """The switch table's plan that requests run on now."""
        return self.adapter.label

    @property
    def policy(self) -> SwitchPolicy:
        return self.adapter.policy

    @property
    def estimator(self) -> BandwidthEstimator:
        return self.adapter.estimator

    @property
    def pinned(self) -> bool:
        return self.adapter.pinned

    @property
    def mbps(self) -> float | None:
        """The current uplink estimate (Mbit/s); the prior until something was measured."""
        return self.adapter.estimator.mbps

    @property
    def fixed_cost_s(self) -> float | None:
        """What a request costs beyond its transfer and the server's time (round trip, both stacks), as learned."""
        return self.adapter.estimator.fixed_s
