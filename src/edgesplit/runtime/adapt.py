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
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the device client (edgesplit.device, no torch) runs this policy too
    from edgesplit.runtime.deployment import Deployment

__all__ = ["DISTINCT", "BandwidthEstimator", "SwitchPolicy", "distinct_sizes", "theil_sen"]

DISTINCT = 1.25  # frames this many times larger count as another size


def distinct_sizes(a: float, b: float) -> bool:
    """Whether frames of ``a`` and ``b`` bytes (or bits) count as two sizes: one is ``DISTINCT``× the other."""
    return max(a, b) >= DISTINCT * min(a, b)


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

    ``deployment`` is read for ``plan.switch_table`` (rows with ``low_mbps``, ``high_mbps``, ``label``),
    ``plan.all_device.label``, ``plan.chosen.label``, ``label_at(mbps)`` and ``route_for_label(label)`` (None for
    all-device) only: a :class:`Deployment`, or the device client's view of a bundle (``edgesplit.device.client``).
    """

    def __init__(self, deployment: Deployment, hysteresis: float = 0.2) -> None:
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
