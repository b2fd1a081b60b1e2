"""A progressive rollout as the state store keeps it, so that it outlives the process that runs it.

One record per model: the newest rollout of that model, running or ended. ``revision`` grows by one
with every save; a save names the revision it was computed from, so an operator's pause and the
analysis' step-up, landing at the same moment in two processes, cannot both win.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

RUNNING = "running"
PAUSED = "paused"
PROMOTED = "promoted"
ROLLED_BACK = "rolled_back"
ABORTED = "aborted"
PHASES = (RUNNING, PAUSED, PROMOTED, ROLLED_BACK, ABORTED)
ACTIVE_PHASES = (RUNNING, PAUSED)


@dataclass(frozen=True)
class RolloutLimits:
    """The analysis' limits, as ``turnout rollout``'s flags gave them."""

    alpha: float = 0.05
    max_error_increase: float = 0.005
    max_latency_ratio: float = 1.2
    max_divergence: float | None = None
    min_requests: int = 100


@dataclass(frozen=True)
class RolloutRecord:
    model: str
    version: int  # the candidate
    stable: int  # the stable version when the rollout began: what a rollback returns to
    steps: tuple[float, ...]  # canary weights in percent, the last one 100 or less
    step_s: float
    phase: str
    step_index: int
    weight_percent: float
    limits: RolloutLimits
    started_at: float
    step_started_at: float
    sticky_key: str = ""
    reason: str = ""
    actor: str = ""
    message: str = ""  # what the rollout waits for, or why it ended
    evidence: dict[str, Any] = field(default_factory=dict)  # the newest decision, as Decision.as_dict()
    revision: int = 0

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES


def record_to_json(record: RolloutRecord) -> str:
    return json.dumps(asdict(record), sort_keys=True)


def record_from_json(text: str) -> RolloutRecord:
    fields = json.loads(text)
    fields["steps"] = tuple(fields["steps"])
    fields["limits"] = RolloutLimits(**fields["limits"])
    return RolloutRecord(**fields)


class RolloutConflict(Exception):
    """The rollout was saved by someone else since it was read; read it again and decide again."""
