"""What each arm served between two looks, over every gateway process: the rollout analysis' input.

Every process counts each arm's requests since it began (:meth:`RecentTraffic.since_start`); the
leader asks them all on each tick and takes differences, process by process. Differences of
totals lose nothing, however long a tick takes (a sliding window's would), and per process they
stay right when one restarts (its totals fall: what it shows now is all new) or joins (all new,
except at the very first look, which only sets where counting starts).
"""

from __future__ import annotations

from gateway.telemetry.recent_traffic import BUCKETS, ArmKey, ArmTraffic

ProcessTotals = dict[str, list[ArmTraffic]]  # process name -> its arms since it began


class ArmDeltas:
    def __init__(self) -> None:
        self._last: dict[tuple[str, ArmKey], ArmTraffic] = {}
        self._started = False

    def take(self, totals: ProcessTotals) -> dict[ArmKey, ArmTraffic]:
        """Each arm's requests since the previous call, summed over processes; nothing on the first."""
        summed: dict[ArmKey, ArmTraffic] = {}
        seen: dict[tuple[str, ArmKey], ArmTraffic] = {}
        for process, arms in totals.items():
            for arm in arms:
                seen[(process, arm.key)] = arm
                if not self._started:
                    continue
                delta = _difference(arm, self._last.get((process, arm.key)))
                into = summed.setdefault(arm.key, ArmTraffic(arm.model, arm.version, arm.arm))
                into.requests += delta.requests
                into.errors += delta.errors
                into.buckets = [a + b for a, b in zip(into.buckets, delta.buckets, strict=True)]
        self._last = seen  # a process that is gone is forgotten
        self._started = True
        return summed


def _difference(now: ArmTraffic, before: ArmTraffic | None) -> ArmTraffic:
    if before is None or now.requests < before.requests:  # new, or its process restarted: all of it is new
        return now
    buckets = [max(0, a - b) for a, b in zip(now.buckets, before.buckets, strict=True)]
    return ArmTraffic(now.model, now.version, now.arm, now.requests - before.requests,
                      max(0, now.errors - before.errors), (buckets + [0] * BUCKETS)[:BUCKETS])  # fmt: skip
