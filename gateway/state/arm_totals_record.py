"""Each gateway process's per-arm totals as kept in the state store, and their text form.

Every process publishes what each arm it routed to has served since the process began (requests,
errors, success latencies per bucket); the rollout analysis' leader reads every live process's,
on every host sharing the store, and takes differences (:mod:`gateway.rollouts.arm_deltas`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class StoredArm:
    """One arm's counts since its process began (it satisfies ``arm_deltas.ArmTotals``)."""

    model: str
    version: int
    arm: str
    requests: int
    errors: int
    buckets: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PublishedTotals:
    """What one process last published: when it began and when it wrote this (seconds since the epoch)."""

    process_id: str
    started_at: float
    seen_at: float
    arms: tuple[StoredArm, ...]


def arms_to_json(arms: Sequence[StoredArm]) -> str:
    return json.dumps(
        [[a.model, a.version, a.arm, a.requests, a.errors, a.buckets] for a in arms],
        separators=(",", ":"),
    )


def arms_from_json(text: str) -> tuple[StoredArm, ...]:
    arms = []
    for model, version, arm, requests, errors, buckets in json.loads(text):
        arms.append(StoredArm(str(model), int(version), str(arm), int(requests), int(errors),
                              [int(count) for count in buckets]))  # fmt: skip
    return tuple(arms)
