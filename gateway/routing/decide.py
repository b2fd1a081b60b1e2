"""The routing decision: a pure function of (policy, pin, sticky key value, two uniform draws).

Precedence: an explicit pin, then the sticky bucket, then the random draw. The sticky bucket is a
hash of the key into ``BUCKETS`` buckets and the canary owns buckets ``[0, weight)``, so raising
the weight only moves keys onto the canary, and every gateway process agrees without talking.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

from gateway.routing.policy import BUCKETS, Policy


class Arm(StrEnum):
    STABLE = "stable"
    CANARY = "canary"
    PINNED = "pinned"


class Reason(StrEnum):
    PIN = "pin"
    STICKY = "sticky"
    RANDOM = "random"
    NO_CANARY = "no-canary"


@dataclass(frozen=True, slots=True)
class Decision:
    version: int
    arm: Arm
    reason: Reason
    shadows: tuple[int, ...] = ()


def bucket_of(key: str) -> int:
    """The key's bucket in ``[0, BUCKETS)``; stable across processes, hosts and Python versions."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def decide(policy: Policy, pin: int | None, sticky_value: str | None, u_route: float, u_shadow: float) -> Decision:
    """Choose the answering version and the shadows for one request.

    ``u_route`` and ``u_shadow`` are independent uniform draws in [0, 1): the first splits canary
    traffic when no sticky key applies, the second picks which shadows get a copy (a shadow with
    fraction f gets every request whose draw is below f).
    """
    version, arm, reason = _primary(policy, pin, sticky_value, u_route)
    shadows = tuple(
        shadow.version for shadow in policy.shadows if u_shadow < shadow.fraction and shadow.version != version
    )
    return Decision(version, arm, reason, shadows)


def _primary(policy: Policy, pin: int | None, sticky_value: str | None, u_route: float) -> tuple[int, Arm, Reason]:
    if pin is not None:
        return pin, Arm.PINNED, Reason.PIN
    canary = policy.canary
    if canary is None or canary.weight_bp == 0:
        return policy.stable, Arm.STABLE, Reason.NO_CANARY
    if policy.sticky_key is not None and sticky_value is not None:
        on_canary, reason = bucket_of(sticky_value) < canary.weight_bp, Reason.STICKY
    else:
        on_canary, reason = u_route * BUCKETS < canary.weight_bp, Reason.RANDOM
    return (canary.version, Arm.CANARY, reason) if on_canary else (policy.stable, Arm.STABLE, reason)
