"""The last minute of traffic per arm: requests, errors and a latency histogram, for ``turnout status``.

An operator judging a canary wants the canary's error rate and latency beside the stable version's
now, without Prometheus. :class:`RecentTraffic` is a request observer that keeps, for every (model,
version, arm), one slot per wall-clock second of the last :data:`WINDOW_S` seconds: requests, failed
requests and a latency histogram on fixed geometric buckets. Fixed buckets make the figures of
several gateway processes add up exactly (carried as a snapshot family, :func:`to_snapshot`), and a
percentile read off them is within one bucket's width (25%) of the true value (:func:`percentile_s`).

Each (model, version, arm) has its own lock: the dispatcher thread of that version takes it once per
batch, a request that failed on its own thread takes it once; no lock is shared by every thread.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from gateway.serving.model_views import ArmView, TrafficView
from gateway.serving.observers import Finished, Route
from gateway.telemetry.snapshot import Snapshot

WINDOW_S = 60
# Latency buckets: upper bounds 50 µs x 1.25^i, i = 0..63 (up to about 80 s), then one for the rest.
_FIRST_BOUND_S = 50e-6
GROWTH = 1.25
BUCKET_BOUNDS_S: tuple[float, ...] = tuple(_FIRST_BOUND_S * GROWTH**i for i in range(64))
BUCKETS = len(BUCKET_BOUNDS_S) + 1

ArmKey = tuple[str, int, str]  # model, version, arm


@dataclass
class ArmTraffic:
    """One arm's requests over a window, with the latency histogram on :data:`BUCKET_BOUNDS_S`."""

    model: str
    version: int
    arm: str
    requests: int = 0
    errors: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * BUCKETS)

    @property
    def key(self) -> ArmKey:
        return (self.model, self.version, self.arm)


def bucket_of(latency_s: float) -> int:
    return bisect.bisect_left(BUCKET_BOUNDS_S, latency_s)


def percentile_s(buckets: Sequence[int], fraction: float) -> float | None:
    """The latency below which ``fraction`` of the requests fall, as the geometric middle of its bucket.

    None when the histogram is empty. The last bucket has no upper bound; its lower bound is given.
    """
    total = sum(buckets)
    if total == 0:
        return None
    rank = max(1, math.ceil(fraction * total))  # the rank-th smallest latency, counted from 1
    seen = 0
    for index, count in enumerate(buckets):
        seen += count
        if seen >= rank:
            if index == len(BUCKET_BOUNDS_S):
                return BUCKET_BOUNDS_S[-1]
            upper = BUCKET_BOUNDS_S[index]
            return upper / math.sqrt(GROWTH) if index else upper / 2
    return BUCKET_BOUNDS_S[-1]  # not reached: seen ends at total


RECENT = "recent_requests"  # the snapshot family: (model, version, arm) -> [requests, errors, *buckets]


def to_snapshot(arms: Iterable[ArmTraffic], family: str = RECENT) -> Snapshot:
    """One process's arms (each key once) as a snapshot family: the peers' sockets carry it, and
    :func:`gateway.telemetry.snapshot.merge` sums processes element by element, like a histogram."""
    return {
        family: {
            (arm.model, str(arm.version), arm.arm): [float(arm.requests), float(arm.errors), *map(float, arm.buckets)]
            for arm in arms
        }
    }


def from_snapshot(snapshot: Snapshot, family: str = RECENT) -> list[ArmTraffic]:
    arms = []
    for (model, version, arm), value in snapshot.get(family, {}).items():
        assert isinstance(value, list)
        requests, errors, *buckets = (int(number) for number in value)
        arms.append(ArmTraffic(model, int(version), arm, requests, errors, (buckets + [0] * BUCKETS)[:BUCKETS]))
    return sorted(arms, key=lambda arm: arm.key)


class _SecondSlots:
    """One arm's last :data:`WINDOW_S` seconds, a slot a second, reused as the seconds go by; and
    its totals since the process began (``since_start``), which a rollout's analysis reads as
    differences from one look to the next: a sliding window's differences would lose requests."""

    __slots__ = ("buckets", "errors", "lock", "requests", "seconds", "since_start")

    def __init__(self, key: ArmKey) -> None:
        self.since_start = ArmTraffic(key[0], key[1], str(key[2]))
        self.lock = threading.Lock()
        self.seconds = [-1] * WINDOW_S  # which wall-clock second each slot holds now
        self.requests = [0] * WINDOW_S
        self.errors = [0] * WINDOW_S
        self.buckets = [[0] * BUCKETS for _ in range(WINDOW_S)]

    def total(self, now_second: int, into: ArmTraffic) -> None:
        """Add the seconds of the window ending at ``now_second`` (included) into ``into``."""
        oldest = now_second - WINDOW_S + 1
        for slot in range(WINDOW_S):
            if oldest <= self.seconds[slot] <= now_second:
                into.requests += self.requests[slot]
                into.errors += self.errors[slot]
                into.buckets = [a + b for a, b in zip(into.buckets, self.buckets[slot], strict=True)]


class RecentTraffic:
    """A request observer keeping each arm's last minute; :meth:`window` reads it."""

    wants_every_request = True  # the seam builds every request's ticket without asking
    needs_request_id = False

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # Keyed by the route's Arm itself (a str): its ``.value`` would cost a Python call per request.
        self._arms: dict[ArmKey, _SecondSlots] = {}
        self._adding = threading.Lock()  # only when an arm is seen for the first time

    def wants(self, route: Route | None) -> bool:
        return True

    def observe(self, finished: Sequence[Finished]) -> None:
        # Once per batch, and written out for every request (a slot's reuse, bucket_of): a Python
        # call per request would be most of what this costs.
        second = int(self._clock())  # one clock read per batch: its requests finished together
        slot = second % WINDOW_S
        for item in finished:
            route = item.route
            if route is None:  # it named no servable model, so it belongs to no arm (the metrics count it)
                continue
            key = (route.model, route.version, route.arm)
            slots = self._arms[key] if key in self._arms else self._add_arm(key)
            with slots.lock:
                if slots.seconds[slot] != second:  # a slot from a minute ago (or never used): afresh
                    slots.seconds[slot] = second
                    slots.requests[slot] = slots.errors[slot] = 0
                    slots.buckets[slot] = [0] * BUCKETS
                bucket = bisect.bisect_left(BUCKET_BOUNDS_S, item.timings.latency_s)
                total = slots.since_start
                slots.requests[slot] += 1
                total.requests += 1
                if item.error is not None:
                    slots.errors[slot] += 1
                    total.errors += 1
                slots.buckets[slot][bucket] += 1
                total.buckets[bucket] += 1

    def window(self, model: str | None = None) -> list[ArmTraffic]:
        """Every arm's (or one model's arms') requests over the last :data:`WINDOW_S` seconds."""
        now = int(self._clock())
        arms = []
        for key, slots in list(self._arms.items()):
            if model is not None and key[0] != model:
                continue
            traffic = ArmTraffic(key[0], key[1], str(key[2]))  # str(): the arm's name, not an Arm
            with slots.lock:
                slots.total(now, traffic)
            if traffic.requests:
                arms.append(traffic)
        return sorted(arms, key=lambda arm: arm.key)

    def since_start(self) -> list[ArmTraffic]:
        """Every arm's requests since this process began (copies: the counting goes on)."""
        arms = []
        for slots in list(self._arms.values()):
            with slots.lock:
                total = slots.since_start
                arms.append(ArmTraffic(total.model, total.version, total.arm, total.requests, total.errors,
                                       list(total.buckets)))  # fmt: skip
        return sorted(arms, key=lambda arm: arm.key)

    def _add_arm(self, key: ArmKey) -> _SecondSlots:
        with self._adding:
            return self._arms.setdefault(key, _SecondSlots(key))


def traffic_view(model: str, arms: Iterable[ArmTraffic], processes: int = 1) -> TrafficView:
    """One model's arms over the window, with rates and percentiles, stable first, then by version."""
    order = {"stable": 0, "canary": 1, "pinned": 2}
    views = [
        ArmView(
            arm.version,
            arm.arm,
            arm.requests,
            arm.errors,
            arm.requests / WINDOW_S,
            arm.errors / arm.requests if arm.requests else 0.0,
            percentile_s(arm.buckets, 0.50),
            percentile_s(arm.buckets, 0.99),
        )
        for arm in arms
        if arm.model == model
    ]
    views.sort(key=lambda view: (order.get(view.arm, 3), view.version))
    return TrafficView(model, WINDOW_S, processes, tuple(views))
