"""The read methods both state stores share: a store names its SELECTs, these turn the rows into records.

Each store keeps its own SQL (placeholders and table names differ) in a :class:`ReadQueries` and
says how to run one (:meth:`StoreReads._fetch_all`, :meth:`StoreReads._fetch_one`), wrapping its own
errors there; what a read returns is then the same code for SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from gateway.state import stored_rows
from gateway.state.arm_totals_record import PublishedTotals
from gateway.state.rollout_record import ACTIVE_PHASES, RolloutRecord
from gateway.state.store import Lease, PolicyChange, ProcessReport, RefusedCall, RepositoryRequest, StoredPolicy
from gateway.state.stored_rows import Row


@dataclass(frozen=True, slots=True)
class ReadQueries:
    """One dialect's SELECTs, each taking the parameters named and selecting what :mod:`stored_rows` reads."""

    generation: str  # () -> (value,)
    policies: str  # () -> (model, policy, generation)
    history: str  # (model, limit), newest first
    replaced_stables: str  # (model, since, limit) -> (before,), non-NULL only, newest first
    refused: str  # (model, limit), newest first
    repository_requests: str  # ()
    reports: str  # () -> ordered by host, process_id
    arm_totals: str  # (oldest seen_at kept,) -> ordered by process_id
    lease: str  # (name,)
    rollout: str  # (model,) -> (record,)
    active_rollouts: str  # ACTIVE_PHASES -> (record,), ordered by model


class StoreReads(ABC):
    """The reads of :class:`gateway.state.store.StateStore`, for a store that says how to run a SELECT."""

    _queries: ClassVar[ReadQueries]

    @abstractmethod
    def _fetch_all(self, query: str, parameters: Sequence[object] = ()) -> list[Row]: ...

    @abstractmethod
    def _fetch_one(self, query: str, parameters: Sequence[object] = ()) -> Row | None: ...

    def generation(self) -> int:
        row = self._fetch_one(self._queries.generation)
        assert row is not None  # the schema inserts the counter's row
        return int(row[0])

    def policies(self) -> dict[str, StoredPolicy]:
        return stored_rows.stored_policies(self._fetch_all(self._queries.policies))

    def history(self, model: str, limit: int) -> list[PolicyChange]:
        return stored_rows.policy_changes(self._fetch_all(self._queries.history, (model, limit)))

    def replaced_stables(self, model: str, since: float, limit: int) -> set[int]:
        rows = self._fetch_all(self._queries.replaced_stables, (model, since, limit))
        return stored_rows.replaced_stable_versions(rows)

    def refused(self, model: str, limit: int) -> list[RefusedCall]:
        return stored_rows.refused_calls(self._fetch_all(self._queries.refused, (model, limit)))

    def repository_requests(self) -> dict[str, RepositoryRequest]:
        return stored_rows.repository_requests(self._fetch_all(self._queries.repository_requests))

    def reports(self) -> list[ProcessReport]:
        return stored_rows.process_reports(self._fetch_all(self._queries.reports))

    def arm_totals(self, fresh_s: float) -> list[PublishedTotals]:
        rows = self._fetch_all(self._queries.arm_totals, (time.time() - fresh_s,))
        return stored_rows.published_totals(rows)

    def lease(self, name: str) -> Lease | None:
        return stored_rows.lease_from_row(self._fetch_one(self._queries.lease, (name,)))

    def rollout(self, model: str) -> RolloutRecord | None:
        return stored_rows.rollout_from_row(self._fetch_one(self._queries.rollout, (model,)))

    def active_rollouts(self) -> list[RolloutRecord]:
        return stored_rows.rollout_records(self._fetch_all(self._queries.active_rollouts, ACTIVE_PHASES))
