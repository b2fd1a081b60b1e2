"""The state store's interface: what the control plane and the routing watchers need from storage.

SQLite under the state directory is the embedded implementation (one host, many processes);
PostgreSQL (``--state-url``) is the shared one for a fleet of hosts. Both pass one contract suite
(tests/integration/test_state_store_contract.py), so the rest of the gateway cannot tell them apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import Unavailable
from gateway.routing.policy import Policy
from gateway.state.arm_totals_record import PublishedTotals, StoredArm
from gateway.state.rollout_record import RolloutRecord


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    policy: Policy
    generation: int


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """One audit row: who changed which model's policy, when, why, from what to what."""

    model: str
    generation: int
    at: float  # seconds since the epoch
    actor: str
    action: str
    reason: str
    before: Policy | None
    after: Policy


@dataclass(frozen=True, slots=True)
class RefusedCall:
    """A control call refused for its credentials: when, what it tried (``action``: the method, and
    ``detail``: its request, cut short), and why. Never the credential itself."""

    model: str
    at: float  # seconds since the epoch
    actor: str
    action: str
    detail: str


@dataclass(frozen=True, slots=True)
class ProcessReport:
    """What one gateway process last said: the generation it serves, and when it said so, from which host."""

    process_id: str
    pid: int
    applied_generation: int
    seen_at: float
    host: str = ""


@dataclass(frozen=True, slots=True)
class Lease:
    """Who holds a named lease (one leader per fleet), and until when (seconds since the epoch)."""

    name: str
    holder: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class RepositoryRequest:
    """The newest explicit load or unload of a model (``RepositoryModelLoad``/``Unload``).

    Every gateway process follows it, so a model unloaded through one process is unloaded in all.
    """

    model: str
    action: str  # "load" or "unload"
    generation: int
    at: float  # seconds since the epoch
    actor: str


class StateUnavailable(Unavailable):
    """The routing state cannot be read or written (its file deleted, replaced or corrupt; its database
    down): changes are refused with this message, and the gateway serves on with the policies it has."""


class StateSchemaTooNew(StateUnavailable):
    """The shared store was migrated by a newer Turnout than this one: this gateway must not write to it."""


class GenerationConflict(Exception):
    """The policy changed between reading it and writing the change; read again and retry."""


class StateStore(Protocol):
    def generation(self) -> int:
        """The newest generation of any policy; it only grows. Cheap: watchers poll it."""

    def policies(self) -> dict[str, StoredPolicy]:
        """Every model's policy in effect."""

    def commit(
        self, model: str, expected_generation: int | None, after: Policy, action: str, actor: str, reason: str
    ) -> PolicyChange:
        """Make ``after`` the model's policy and record it, atomically.

        ``expected_generation`` is the generation the change was computed from (None: the model had
        no policy); if another change landed since, nothing is written and
        :class:`GenerationConflict` is raised.
        """

    def history(self, model: str, limit: int) -> list[PolicyChange]:
        """The model's changes, newest first."""

    def replaced_stables(self, model: str, since: float, limit: int) -> set[int]:
        """The stable versions that the model's newest ``limit`` changes at or after ``since`` (unix
        time) replaced: what a rollback may return to. Reads no reasons, so it stays cheap to poll."""

    def record_refused(self, refused: RefusedCall) -> None:
        """Keep a refused control call for the model's history; only the newest few thousand are kept."""

    def refused(self, model: str, limit: int) -> list[RefusedCall]:
        """The model's refused control calls, newest first."""

    def request_repository_action(self, model: str, action: str, actor: str) -> RepositoryRequest:
        """Record that ``model`` was explicitly loaded or unloaded; it takes a new generation, so every
        process's watcher notices it, and replaces the model's earlier request."""

    def repository_requests(self) -> dict[str, RepositoryRequest]:
        """The newest load or unload request of each model that has one."""

    def clear_repository_requests(self) -> None:
        """Forget every load and unload request: a server starting afresh serves what its repository
        and version policies say, as Triton does after a restart."""

    def report_applied(self, process_id: str, pid: int, generation: int, host: str | None = None) -> None:
        """Record that a gateway process now routes by ``generation`` (also its heartbeat).

        ``host`` is the machine the process runs on; None: this one (``socket.gethostname()``).

        A process's recorded generation never goes down: a report of an older one (written late by
        another thread of the same process) only refreshes its heartbeat.
        """

    def reports(self) -> list[ProcessReport]:
        """The last report of every gateway process that has not said goodbye."""

    def forget_process(self, process_id: str) -> None:
        """A gateway process is stopping: stop waiting for it."""

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take the lease ``name`` for ``ttl_s`` seconds, or renew it when ``holder`` holds it already.

        True when ``holder`` holds it now; False while another holder's lease has not expired.
        """

    def renew_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Extend ``holder``'s lease to ``ttl_s`` seconds from now; False if another holder took it
        (the leader must stop leading then). Never takes a lease that ``holder`` does not hold."""

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease back, if ``holder`` holds it, so another may take it without waiting."""

    def lease(self, name: str) -> Lease | None:
        """The lease's holder and expiry, None if nobody ever took it (an expired one is returned too)."""

    def publish_arm_totals(self, process_id: str, started_at: float, arms: Sequence[StoredArm]) -> None:
        """Keep ``arms`` as the process's per-arm totals since it began (``started_at``), replacing
        what it published before; stamped with the time of writing."""

    def arm_totals(self, fresh_s: float) -> list[PublishedTotals]:
        """Every process's last published totals written within the last ``fresh_s`` seconds."""

    def forget_arm_totals(self, process_id: str) -> None:
        """A process is stopping: drop its totals (and any left more than a day ago by one that died)."""

    def save_rollout(self, record: RolloutRecord, expected_revision: int | None) -> RolloutRecord:
        """Keep ``record`` as its model's rollout, with the next revision, and return it so.

        ``expected_revision`` is the revision it was computed from (None: the model had no rollout);
        if another save landed since, nothing is written and
        :class:`gateway.state.rollout_record.RolloutConflict` is raised.
        """

    def rollout(self, model: str) -> RolloutRecord | None:
        """The model's newest rollout, running or ended; None if it never had one."""

    def active_rollouts(self) -> list[RolloutRecord]:
        """Every rollout that is running or paused, by model."""

    def on_change(self, wake: Callable[[], None]) -> bool:
        """Call ``wake`` (from another thread) whenever any process commits a new generation.

        True when the store pushes changes (PostgreSQL's LISTEN/NOTIFY): the caller may poll slowly,
        as a safety net. False when it cannot (SQLite): the caller polls ``generation()``.
        """

    def close(self) -> None: ...
