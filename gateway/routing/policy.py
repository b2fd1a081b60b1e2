"""A model's routing policy as frozen data: the stable version, an optional canary, shadows, a sticky key.

Policies are values: every change makes a new one, so a request that holds a policy keeps a
consistent view while another thread swaps in the next.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

BUCKETS = 10_000  # the canary weight has a resolution of 1/BUCKETS = 0.01%

# gRPC metadata keys are lower-case ASCII letters, digits, '-', '_' and '.'; '-bin' keys carry bytes.
_METADATA_KEY = re.compile(r"^[a-z0-9_.-]+$")


class PolicyInvalid(ValueError):
    """A policy that breaks one of the rules below; the message names the rule."""


@dataclass(frozen=True, slots=True)
class Canary:
    """A candidate version taking ``weight_bp`` of every 10,000 requests (basis points of traffic)."""

    version: int
    weight_bp: int

    @property
    def weight_percent(self) -> float:
        return self.weight_bp * 100 / BUCKETS


@dataclass(frozen=True, slots=True)
class Shadow:
    """A version that sees a copy of ``fraction`` of requests; its answers are compared, never returned."""

    version: int
    fraction: float


@dataclass(frozen=True, slots=True)
class Policy:
    """Who serves one model: every field is checked by :func:`checked` before a policy is used."""

    stable: int
    canary: Canary | None = None
    shadows: tuple[Shadow, ...] = field(default=())
    sticky_key: str | None = None

    def versions(self) -> frozenset[int]:
        """Every version this policy sends traffic or copies to."""
        named = {self.stable, *(shadow.version for shadow in self.shadows)}
        if self.canary is not None:
            named.add(self.canary.version)
        return frozenset(named)

    def without_trials(self) -> Policy:
        """This policy with its canary and shadows cleared: what a rollback returns to."""
        return replace(self, canary=None, shadows=())


def weight_bp_from_percent(percent: float) -> int:
    """A percentage in steps of 0.01 as basis points; anything finer or outside 0..100 is refused."""
    if not math.isfinite(percent) or not 0 <= percent <= 100:
        raise PolicyInvalid(f"canary weight must be between 0 and 100 percent, got {percent}")
    weight_bp = round(percent * BUCKETS / 100)
    if not math.isclose(weight_bp * 100 / BUCKETS, percent, abs_tol=1e-9):
        raise PolicyInvalid(f"canary weight {percent}% is finer than the 0.01% step")
    return weight_bp


def checked(policy: Policy) -> Policy:
    """Return ``policy`` unchanged if it is well formed; raise :class:`PolicyInvalid` naming the fault."""
    for version in policy.versions():
        if version < 1:
            raise PolicyInvalid(f"version numbers start at 1, got {version}")
    canary = policy.canary
    if canary is not None:
        if not 0 <= canary.weight_bp <= BUCKETS:
            raise PolicyInvalid(f"canary weight must be 0..{BUCKETS} basis points, got {canary.weight_bp}")
        if canary.version == policy.stable:
            raise PolicyInvalid(f"canary version {canary.version} is already the stable version")
    seen: set[int] = set()
    for shadow in policy.shadows:
        if not (math.isfinite(shadow.fraction) and 0 < shadow.fraction <= 1):
            raise PolicyInvalid(f"shadow {shadow.version}: fraction must be in (0, 1], got {shadow.fraction}")
        # A shadow of the canary's own version is allowed: the stable arm's requests are copied to
        # it and its answers compared with the stable's (a rollout's divergence check); the canary's
        # requests are never copied to the version that answered them (routing's decide).
        if shadow.version == policy.stable:
            raise PolicyInvalid(f"shadow version {shadow.version} is the stable version, which serves every request")
        if shadow.version in seen:
            raise PolicyInvalid(f"shadow version {shadow.version} is listed twice")
        seen.add(shadow.version)
    if policy.sticky_key is not None and not _METADATA_KEY.match(policy.sticky_key):
        raise PolicyInvalid(
            f"sticky key {policy.sticky_key!r} is not a gRPC metadata key (lower-case letters, digits, '-', '_', '.')"
        )
    if policy.sticky_key is not None and policy.sticky_key.endswith("-bin"):
        raise PolicyInvalid(f"sticky key {policy.sticky_key!r} is a binary header; use a text one")
    return policy


def policy_to_dict(policy: Policy) -> dict[str, object]:
    """Plain data for storage and display; :func:`policy_from_dict` reads it back."""
    canary = policy.canary
    return {
        "stable": policy.stable,
        "canary": None if canary is None else {"version": canary.version, "weight_bp": canary.weight_bp},
        "shadows": [{"version": shadow.version, "fraction": shadow.fraction} for shadow in policy.shadows],
        "sticky_key": policy.sticky_key,
    }


def policy_from_dict(data: dict[str, object]) -> Policy:
    canary = data.get("canary")
    shadows = data.get("shadows") or []
    sticky_key = data.get("sticky_key")
    if not isinstance(canary, dict | None) or not isinstance(shadows, list):
        raise PolicyInvalid(f"malformed stored policy: {data!r}")
    return checked(
        Policy(
            stable=int(str(data["stable"])),
            canary=None if canary is None else Canary(int(canary["version"]), int(canary["weight_bp"])),
            shadows=tuple(Shadow(int(item["version"]), float(item["fraction"])) for item in shadows),
            sticky_key=None if sticky_key is None else str(sticky_key),
        )
    )
