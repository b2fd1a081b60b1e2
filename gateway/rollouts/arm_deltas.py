"""What each arm served between two looks, over every gateway process: the rollout analysis' input.

Every process counts each arm's requests since it began (telemetry's ``RecentTraffic.since_start``)
and publishes them to the state store; the leader reads every process's, on every host, on each
tick and takes differences, process by process. Differences of totals lose nothing, however long a
tick takes (a sliding window's would), and per process they stay right when one restarts (a new
process: what it shows is all new) or joins (all new). A process first seen that began before
counting started only published late: its first totals set where its counting starts, as every
process's do at the very first look, so nothing served before the rollout is counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

ArmKey = tuple[str, int, str]  # model, version, arm


class ArmTotals(Protocol):
    """One arm's counts since its process began, latencies per bucket (telemetry's ``ArmTraffic``)."""

    @property
    def model(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def arm(self) -> str: ...
    @property
    def requests(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def buckets(self) -> list[int]: ...


ProcessTotals = Mapping[str, Sequence[ArmTotals]]  # process name -> its arms since it began


@dataclass
class ArmServed:
    """What one arm served between two looks, over every process."""

    requests: int = 0
    errors: int = 0
    buckets: list[int] = field(default_factory=list)

    def add(self, requests: int, errors: int, buckets: Sequence[int]) -> None:
        self.requests += requests
        self.errors += errors
        if len(self.buckets) < len(buckets):
            self.buckets.extend([0] * (len(buckets) - len(self.buckets)))
        for index, count in enumerate(buckets):
            self.buckets[index] += count


class ArmDeltas:
    def __init__(self) -> None:
        self._last: dict[tuple[str, ArmKey], ArmTotals] = {}
        self._processes: set[str] = set()
        self._started = False
        self._began: float | None = None  # when counting started (the first look), when known

    def take(
        self, totals: ProcessTotals, started: Mapping[str, float] | None = None, now: float | None = None
    ) -> dict[ArmKey, ArmServed]:
        """Each arm's requests since the previous call, summed over processes; nothing on the first.

        ``started``: when each process began, and ``now``: this look's time (both seconds since the
        epoch); without them a process first seen counts in full.
        """
        summed: dict[ArmKey, ArmServed] = {}
        seen: dict[tuple[str, ArmKey], ArmTotals] = {}
        first = not self._started
        for process, arms in totals.items():
            baseline = first or self._published_late(process, started)
            for arm in arms:
                key = (arm.model, arm.version, arm.arm)
                seen[(process, key)] = arm
                if not baseline:
                    _add_difference(summed.setdefault(key, ArmServed()), arm, self._last.get((process, key)))
        self._last = seen  # a process that is gone is forgotten
        self._processes = set(totals)
        if first:
            self._started, self._began = True, now
        return summed

    def _published_late(self, process: str, started: Mapping[str, float] | None) -> bool:
        if process in self._processes or started is None or self._began is None or process not in started:
            return False
        return started[process] < self._began


def _add_difference(into: ArmServed, now: ArmTotals, before: ArmTotals | None) -> None:
    if before is None or now.requests < before.requests:  # new, or its process restarted: all of it is new
        into.add(now.requests, now.errors, now.buckets)
        return
    earlier = list(before.buckets) + [0] * max(0, len(now.buckets) - len(before.buckets))
    buckets = [max(0, a - b) for a, b in zip(now.buckets, earlier, strict=False)]
    into.add(now.requests - before.requests, max(0, now.errors - before.errors), buckets)
