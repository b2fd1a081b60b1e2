"""The shared state store: PostgreSQL (``--state-url``), one routing state for a fleet of hosts.

Every change is one transaction that first takes the next generation from a single-row counter
(``UPDATE ... RETURNING``): the row lock orders all changes of the fleet, so two gateways can never
both make generation 7, and a change computed from a stale policy is refused. The transaction ends
with ``pg_notify``, delivered on commit, which wakes every gateway's listener
(:mod:`gateway.state.postgres_listener`). Each thread has its own connection; one that fails is
dropped and opened again on the next call, and every connection failure is
:class:`StateUnavailable`, so the gateway serves on with what it applied (fail static).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, ParamSpec, TypeVar

import psycopg

from gateway.routing.policy import Policy
from gateway.state import stored_rows
from gateway.state.arm_totals_record import StoredArm, arms_to_json
from gateway.state.postgres_connection import connect, describe_url
from gateway.state.postgres_listener import GenerationListener
from gateway.state.postgres_schema import migrate
from gateway.state.rollout_record import (
    RolloutConflict,
    RolloutRecord,
    record_to_json,
)
from gateway.state.store import (
    GenerationConflict,
    PolicyChange,
    RefusedCall,
    RepositoryRequest,
    StateUnavailable,
)
from gateway.state.store_reads import ReadQueries, StoreReads
from gateway.state.stored_rows import Row

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "turnout_generation"
# Refused control calls kept, all models together (as in the SQLite store).
REFUSED_CALLS_KEPT = 10_000
_DAY_S = 86_400.0  # per-arm totals of a process that died without saying goodbye are dropped after this

_QUERIES = ReadQueries(
    generation="SELECT value FROM turnout_counters WHERE name = 'generation'",
    policies="SELECT model, policy, generation FROM turnout_policies",
    history=(
        "SELECT model, generation, at, actor, action, reason, before, after FROM turnout_history WHERE model = %s "
        "ORDER BY id DESC LIMIT %s"
    ),
    replaced_stables=(
        "SELECT before FROM turnout_history WHERE model = %s AND at >= %s AND before IS NOT NULL "
        "ORDER BY id DESC LIMIT %s"
    ),
    refused=(
        "SELECT model, at, actor, action, detail FROM turnout_refused_calls WHERE model = %s "
        "ORDER BY id DESC LIMIT %s"
    ),
    repository_requests="SELECT model, action, generation, at, actor FROM turnout_repository_requests",
    reports=(
        "SELECT process_id, pid, applied_generation, seen_at, host FROM turnout_processes "
        "ORDER BY host, process_id"
    ),
    arm_totals=(
        "SELECT process_id, started_at, seen_at, arms FROM turnout_arm_totals WHERE seen_at >= %s "
        "ORDER BY process_id"
    ),
    lease="SELECT name, holder, expires_at FROM turnout_leases WHERE name = %s",
    rollout="SELECT record FROM turnout_rollouts WHERE model = %s",
    active_rollouts="SELECT record FROM turnout_rollouts WHERE phase IN (%s, %s) ORDER BY model",
)


P = ParamSpec("P")
R = TypeVar("R")


def _reports_lost_connections(method: Callable[P, R]) -> Callable[P, R]:
    """A store method whose connection failures are :class:`StateUnavailable` naming the database;
    the failed connection is dropped, so the next call connects afresh (catching up when it is back)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        store = args[0]
        assert isinstance(store, PostgresStateStore)
        try:
            return method(*args, **kwargs)
        except (psycopg.OperationalError, psycopg.InterfaceError) as error:
            store._drop_connection()
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise StateUnavailable(
                f"the routing state database {store.where} cannot be reached: {first_line}"
            ) from None

    return wrapper


class PostgresStateStore(StoreReads):
    """:class:`gateway.state.store.StateStore` on a PostgreSQL database, shared by every host."""

    _queries = _QUERIES

    def __init__(self, url: str) -> None:
        self._url = url
        self.where = describe_url(url)
        self._local = threading.local()
        self._connections: list[psycopg.Connection[Any]] = []
        self._connections_lock = threading.Lock()
        # One listening connection per store, however many want waking.
        self._listener: GenerationListener | None = None
        self._wakers: list[Callable[[], None]] = []
        try:
            with connect(url, autocommit=False) as connection:
                migrate(connection, self.where)
        except (psycopg.OperationalError, psycopg.InterfaceError) as error:
            raise StateUnavailable(f"the routing state database {self.where} cannot be reached: {error}") from None

    def _connection(self) -> psycopg.Connection[Any]:
        connection: psycopg.Connection[Any] | None = getattr(self._local, "connection", None)
        if connection is None or connection.closed:
            connection = connect(self._url)
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def _drop_connection(self) -> None:
        connection: psycopg.Connection[Any] | None = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is None:
            return
        with self._connections_lock:
            if connection in self._connections:
                self._connections.remove(connection)
        with contextlib.suppress(psycopg.Error):  # closing a broken connection may fail too; gone either way
            connection.close()

    @_reports_lost_connections
    def _fetch_all(self, query: str, parameters: Sequence[object] = ()) -> list[Row]:
        return self._connection().execute(query, parameters).fetchall()

    @_reports_lost_connections
    def _fetch_one(self, query: str, parameters: Sequence[object] = ()) -> Row | None:
        row: Row | None = self._connection().execute(query, parameters).fetchone()
        return row

    @_reports_lost_connections
    def commit(
        self, model: str, expected_generation: int | None, after: Policy, action: str, actor: str, reason: str
    ) -> PolicyChange:
        connection = self._connection()
        with connection.transaction():
            # The counter first: its row lock orders every change, so the read below is the newest.
            generation = _next_generation(connection)
            row = connection.execute(
                "SELECT policy, generation FROM turnout_policies WHERE model = %s", (model,)
            ).fetchone()
            current_generation = None if row is None else int(row[1])
            if current_generation != expected_generation:
                raise GenerationConflict(
                    f"policy of {model!r} is at generation {current_generation}, not {expected_generation}"
                )
            before = stored_rows.decode_policy(row[0] if row else None)
            change = PolicyChange(model, generation, time.time(), actor, action, reason, before, after)
            connection.execute(
                "INSERT INTO turnout_policies (model, policy, generation) VALUES (%s, %s, %s) "
                "ON CONFLICT (model) DO UPDATE SET policy = excluded.policy, generation = excluded.generation",
                (model, stored_rows.encode_policy(after), generation),
            )
            connection.execute(
                "INSERT INTO turnout_history (model, generation, at, actor, action, reason, before, after) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                stored_rows.history_values(change),
            )
            _notify(connection, generation)
        return change

    @_reports_lost_connections
    def record_refused(self, refused: RefusedCall) -> None:
        connection = self._connection()
        with connection.transaction():
            row = connection.execute(
                "INSERT INTO turnout_refused_calls (model, at, actor, action, detail) "
                "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (refused.model, refused.at, refused.actor, refused.action, refused.detail),
            ).fetchone()
            assert row is not None
            connection.execute("DELETE FROM turnout_refused_calls WHERE id <= %s", (int(row[0]) - REFUSED_CALLS_KEPT,))

    @_reports_lost_connections
    def request_repository_action(self, model: str, action: str, actor: str) -> RepositoryRequest:
        connection = self._connection()
        with connection.transaction():
            request = RepositoryRequest(model, action, _next_generation(connection), time.time(), actor)
            connection.execute(
                "INSERT INTO turnout_repository_requests (model, action, generation, at, actor) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (model) DO UPDATE SET action = excluded.action, "
                "generation = excluded.generation, at = excluded.at, actor = excluded.actor",
                (model, action, request.generation, request.at, actor),
            )
            _notify(connection, request.generation)
        return request

    @_reports_lost_connections
    def clear_repository_requests(self) -> None:
        self._connection().execute("DELETE FROM turnout_repository_requests")

    @_reports_lost_connections
    def report_applied(self, process_id: str, pid: int, generation: int, host: str | None = None) -> None:
        # GREATEST: a late report of an older generation (another thread of the same process) only
        # refreshes the heartbeat, as in the SQLite store.
        self._connection().execute(
            "INSERT INTO turnout_processes (process_id, pid, applied_generation, seen_at, host) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (process_id) DO UPDATE SET pid = excluded.pid, "
            "applied_generation = GREATEST(turnout_processes.applied_generation, excluded.applied_generation), "
            "seen_at = excluded.seen_at, host = excluded.host",
            (process_id, pid, generation, time.time(), socket.gethostname() if host is None else host),
        )

    @_reports_lost_connections
    def forget_process(self, process_id: str) -> None:
        self._connection().execute("DELETE FROM turnout_processes WHERE process_id = %s", (process_id,))

    @_reports_lost_connections
    def publish_arm_totals(self, process_id: str, started_at: float, arms: Sequence[StoredArm]) -> None:
        self._connection().execute(
            "INSERT INTO turnout_arm_totals (process_id, started_at, seen_at, arms) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (process_id) DO UPDATE SET started_at = excluded.started_at, "
            "seen_at = excluded.seen_at, arms = excluded.arms",
            (process_id, started_at, time.time(), arms_to_json(arms)),
        )

    @_reports_lost_connections
    def forget_arm_totals(self, process_id: str) -> None:
        self._connection().execute(
            "DELETE FROM turnout_arm_totals WHERE process_id = %s OR seen_at < %s",
            (process_id, time.time() - _DAY_S),
        )

    @_reports_lost_connections
    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        # One statement: the conflict's row lock makes take-over of an expired lease atomic.
        now = time.time()
        row = self._connection().execute(
            "INSERT INTO turnout_leases (name, holder, expires_at) VALUES (%s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at "
            "WHERE turnout_leases.holder = excluded.holder OR turnout_leases.expires_at <= %s "
            "RETURNING holder",
            (name, holder, now + ttl_s, now),
        ).fetchone()
        return row is not None

    @_reports_lost_connections
    def renew_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        cursor = self._connection().execute(
            "UPDATE turnout_leases SET expires_at = %s WHERE name = %s AND holder = %s",
            (time.time() + ttl_s, name, holder),
        )
        return cursor.rowcount == 1

    @_reports_lost_connections
    def release_lease(self, name: str, holder: str) -> None:
        self._connection().execute("DELETE FROM turnout_leases WHERE name = %s AND holder = %s", (name, holder))

    @_reports_lost_connections
    def save_rollout(self, record: RolloutRecord, expected_revision: int | None) -> RolloutRecord:
        connection = self._connection()
        saved = replace(record, revision=(expected_revision or 0) + 1)
        text = record_to_json(saved)
        with connection.transaction():
            if expected_revision is None:  # the primary key refuses a second first rollout
                written = connection.execute(
                    "INSERT INTO turnout_rollouts (model, revision, phase, record) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (model) DO NOTHING",
                    (saved.model, saved.revision, saved.phase, text),
                ).rowcount
            else:
                written = connection.execute(
                    "UPDATE turnout_rollouts SET revision = %s, phase = %s, record = %s "
                    "WHERE model = %s AND revision = %s",
                    (saved.revision, saved.phase, text, saved.model, expected_revision),
                ).rowcount
        if written != 1:
            raise RolloutConflict(f"the rollout of model {record.model!r} changed meanwhile")
        return saved


    def on_change(self, wake: Callable[[], None]) -> bool:
        self._wakers.append(wake)
        if self._listener is None:
            self._listener = GenerationListener(self._url, NOTIFY_CHANNEL, self.where, self._wake_all)
            self._listener.start()
        return True

    def _wake_all(self) -> None:
        for wake in list(self._wakers):
            wake()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        with self._connections_lock:
            for connection in self._connections:
                with contextlib.suppress(psycopg.Error):
                    connection.close()
            self._connections.clear()


def _next_generation(connection: psycopg.Connection[Any]) -> int:
    """Take the next generation inside the caller's transaction; the row stays locked until it ends."""
    row = connection.execute(
        "UPDATE turnout_counters SET value = value + 1 WHERE name = 'generation' RETURNING value"
    ).fetchone()
    assert row is not None
    return int(row[0])


def _notify(connection: psycopg.Connection[Any], generation: int) -> None:
    """Sent when the transaction commits, not before: no listener reads a generation it cannot see yet."""
    connection.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(generation)))
