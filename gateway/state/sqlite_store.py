"""The embedded state store: SQLite in WAL mode, shared by every gateway process on one host.

WAL lets every process read while one writes; a write transaction (``BEGIN IMMEDIATE``) makes the
read-check-write of a policy change atomic across processes. Each thread gets its own connection,
because a SQLite connection must not be used by two threads at once.
"""

from __future__ import annotations

import functools
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import ParamSpec, TypeVar

from gateway.routing.policy import Policy
from gateway.state import stored_rows
from gateway.state.arm_totals_record import StoredArm, arms_to_json
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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters (name, value) VALUES ('generation', 0);
CREATE TABLE IF NOT EXISTS policies (
    model TEXT PRIMARY KEY,
    policy TEXT NOT NULL,
    generation INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    generation INTEGER NOT NULL,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    before TEXT,
    after TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_model ON history (model, id);
CREATE TABLE IF NOT EXISTS repository_requests (
    model TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    generation INTEGER NOT NULL,
    at REAL NOT NULL,
    actor TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS refused_calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS refused_calls_by_model ON refused_calls (model, id);
CREATE TABLE IF NOT EXISTS processes (
    process_id TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    applied_generation INTEGER NOT NULL,
    seen_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rollouts (
    model TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,
    phase TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS arm_totals (
    process_id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    seen_at REAL NOT NULL,
    arms TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""

STATE_FILE = "turnout-state.sqlite3"
# Refused control calls kept, all models together: enough to see who knocked, and a caller that
# knocks without end cannot grow the file without end.
REFUSED_CALLS_KEPT = 10_000
_DAY_S = 86_400.0  # per-arm totals of a process that died without saying goodbye are dropped after this


_QUERIES = ReadQueries(
    generation="SELECT value FROM counters WHERE name = 'generation'",
    policies="SELECT model, policy, generation FROM policies",
    history=(
        "SELECT model, generation, at, actor, action, reason, before, after FROM history WHERE model = ? "
        "ORDER BY id DESC LIMIT ?"
    ),
    replaced_stables=(
        "SELECT before FROM history WHERE model = ? AND at >= ? AND before IS NOT NULL "
        "ORDER BY id DESC LIMIT ?"
    ),
    refused="SELECT model, at, actor, action, detail FROM refused_calls WHERE model = ? ORDER BY id DESC LIMIT ?",
    repository_requests="SELECT model, action, generation, at, actor FROM repository_requests",
    reports="SELECT process_id, pid, applied_generation, seen_at, host FROM processes ORDER BY host, process_id",
    arm_totals="SELECT process_id, started_at, seen_at, arms FROM arm_totals WHERE seen_at >= ? ORDER BY process_id",
    lease="SELECT name, holder, expires_at FROM leases WHERE name = ?",
    rollout="SELECT record FROM rollouts WHERE model = ?",
    active_rollouts="SELECT record FROM rollouts WHERE phase IN (?, ?) ORDER BY model",
)


P = ParamSpec("P")
R = TypeVar("R")


def _reports_broken_files(method: Callable[P, R]) -> Callable[P, R]:
    """A store method whose SQLite errors (a corrupt file, a lock held past the busy timeout) are
    :class:`StateUnavailable` naming the file, for the caller to see and the sync to log once."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except sqlite3.DatabaseError as error:
            store = args[0]
            assert isinstance(store, SqliteStateStore)
            raise StateUnavailable(f"the routing state file {store.path} cannot be used: {error}") from None

    return wrapper


class SqliteStateStore(StoreReads):
    """:class:`gateway.state.store.StateStore` on a SQLite file under ``state_dir``."""

    _queries = _QUERIES

    def __init__(self, state_dir: Path, busy_timeout_s: float = 10.0) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / STATE_FILE
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        # Every statement is idempotent, so processes starting together may all run it.
        self._identity: tuple[int, int] | None = None  # the file's (device, inode), once it exists
        try:
            self._connection().executescript(_SCHEMA)
            _add_host_column(self._connection())
        except sqlite3.DatabaseError as error:
            raise StateUnavailable(f"the routing state file {self.path} cannot be used: {error}") from None
        status = self.path.stat()
        self._identity = (status.st_dev, status.st_ino)

    def _check_file(self) -> None:
        """Refuse to go on with a file that was deleted or replaced under the open connections: SQLite
        would keep writing to the deleted one, and every change would be lost at the next start."""
        if self._identity is None:
            return
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            raise StateUnavailable(
                f"the routing state file {self.path} was deleted while the gateway ran; policy changes are"
                " refused until the gateway is restarted"
            ) from None
        if (status.st_dev, status.st_ino) != self._identity:
            raise StateUnavailable(
                f"the routing state file {self.path} was replaced while the gateway ran; policy changes are"
                " refused until the gateway is restarted"
            )

    def _connection(self) -> sqlite3.Connection:
        self._check_file()  # a stat: microseconds, against losing every change made from now on
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            # autocommit mode: transactions are begun explicitly where a write needs one.
            # Used by this thread only; close() runs on the stopping thread, hence no same-thread check.
            connection = sqlite3.connect(
                self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")  # an acknowledged policy change survives a power cut
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def _write(self) -> _WriteTransaction:
        return _WriteTransaction(self._connection())

    @_reports_broken_files
    def _fetch_all(self, query: str, parameters: Sequence[object] = ()) -> list[Row]:
        return self._connection().execute(query, parameters).fetchall()

    @_reports_broken_files
    def _fetch_one(self, query: str, parameters: Sequence[object] = ()) -> Row | None:
        row: Row | None = self._connection().execute(query, parameters).fetchone()
        return row

    @_reports_broken_files
    def commit(
        self, model: str, expected_generation: int | None, after: Policy, action: str, actor: str, reason: str
    ) -> PolicyChange:
        with self._write() as connection:
            row = connection.execute("SELECT policy, generation FROM policies WHERE model = ?", (model,)).fetchone()
            current_generation = None if row is None else int(row[1])
            if current_generation != expected_generation:
                raise GenerationConflict(
                    f"policy of {model!r} is at generation {current_generation}, not {expected_generation}"
                )
            generation = _next_generation(connection)
            before = stored_rows.decode_policy(row[0] if row else None)
            change = PolicyChange(model, generation, time.time(), actor, action, reason, before, after)
            connection.execute(
                "INSERT INTO policies (model, policy, generation) VALUES (?, ?, ?) "
                "ON CONFLICT (model) DO UPDATE SET policy = excluded.policy, generation = excluded.generation",
                (model, stored_rows.encode_policy(after), generation),
            )
            connection.execute(
                "INSERT INTO history (model, generation, at, actor, action, reason, before, after) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                stored_rows.history_values(change),
            )
        return change

    @_reports_broken_files
    def record_refused(self, refused: RefusedCall) -> None:
        # Written without an fsync, as the process reports: a caller knocking with bad credentials
        # must not make every other writer wait on the disk, and losing the last few to a power cut is fine.
        connection = self._connection()
        connection.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._write() as writing:
                cursor = writing.execute(
                    "INSERT INTO refused_calls (model, at, actor, action, detail) VALUES (?, ?, ?, ?, ?)",
                    (refused.model, refused.at, refused.actor, refused.action, refused.detail),
                )
                oldest_kept = (cursor.lastrowid or 0) - REFUSED_CALLS_KEPT
                writing.execute("DELETE FROM refused_calls WHERE id <= ?", (oldest_kept,))
        finally:
            connection.execute("PRAGMA synchronous=FULL")

    @_reports_broken_files
    def request_repository_action(self, model: str, action: str, actor: str) -> RepositoryRequest:
        with self._write() as connection:
            request = RepositoryRequest(model, action, _next_generation(connection), time.time(), actor)
            connection.execute(
                "INSERT INTO repository_requests (model, action, generation, at, actor) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (model) DO UPDATE SET action = excluded.action, generation = excluded.generation, "
                "at = excluded.at, actor = excluded.actor",
                (model, action, request.generation, request.at, actor),
            )
        return request

    @_reports_broken_files
    def clear_repository_requests(self) -> None:
        with self._write() as connection:
            connection.execute("DELETE FROM repository_requests")

    @_reports_broken_files
    def report_applied(self, process_id: str, pid: int, generation: int, host: str | None = None) -> None:
        # Two threads of one process report (the policy sync's heartbeat, and a change being
        # applied by the call that made it); the one that read the older generation may write
        # last, and must not take the process back: a change would wait for the next heartbeat.
        # A report is liveness, not history: one lost in a power cut is rewritten by the next
        # heartbeat. Written without an fsync it holds the write lock for microseconds, so policy
        # commits and other processes' reports do not queue behind a slow disk.
        connection = self._connection()
        connection.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._write() as writing:
                writing.execute(
                    "INSERT INTO processes (process_id, pid, applied_generation, seen_at, host) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (process_id) DO UPDATE SET pid = excluded.pid, "
                    "applied_generation = MAX(applied_generation, excluded.applied_generation), "
                    "seen_at = excluded.seen_at, host = excluded.host",
                    (process_id, pid, generation, time.time(), socket.gethostname() if host is None else host),
                )
        finally:
            connection.execute("PRAGMA synchronous=FULL")

    @_reports_broken_files
    def forget_process(self, process_id: str) -> None:
        with self._write() as connection:
            connection.execute("DELETE FROM processes WHERE process_id = ?", (process_id,))

    @_reports_broken_files
    def publish_arm_totals(self, process_id: str, started_at: float, arms: Sequence[StoredArm]) -> None:
        # Counts, not history: the next publication rewrites one lost in a power cut, so no fsync
        # (as for a heartbeat), and the write lock is held for microseconds.
        connection = self._connection()
        connection.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._write() as writing:
                writing.execute(
                    "INSERT INTO arm_totals (process_id, started_at, seen_at, arms) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (process_id) DO UPDATE SET started_at = excluded.started_at, "
                    "seen_at = excluded.seen_at, arms = excluded.arms",
                    (process_id, started_at, time.time(), arms_to_json(arms)),
                )
        finally:
            connection.execute("PRAGMA synchronous=FULL")

    @_reports_broken_files
    def forget_arm_totals(self, process_id: str) -> None:
        with self._write() as connection:
            connection.execute(
                "DELETE FROM arm_totals WHERE process_id = ? OR seen_at < ?", (process_id, time.time() - _DAY_S)
            )

    @_reports_broken_files
    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        now = time.time()
        with self._write() as connection:
            connection.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE "
                "SET holder = excluded.holder, expires_at = excluded.expires_at "
                "WHERE leases.holder = excluded.holder OR leases.expires_at <= ?",
                (name, holder, now + ttl_s, now),
            )
            row = connection.execute("SELECT holder FROM leases WHERE name = ?", (name,)).fetchone()
        return bool(row[0] == holder)

    @_reports_broken_files
    def renew_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        with self._write() as connection:
            cursor = connection.execute(
                "UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ?", (time.time() + ttl_s, name, holder)
            )
        return cursor.rowcount == 1

    @_reports_broken_files
    def release_lease(self, name: str, holder: str) -> None:
        with self._write() as connection:
            connection.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    @_reports_broken_files
    def save_rollout(self, record: RolloutRecord, expected_revision: int | None) -> RolloutRecord:
        with self._write() as connection:
            row = connection.execute("SELECT revision FROM rollouts WHERE model = ?", (record.model,)).fetchone()
            if (None if row is None else int(row[0])) != expected_revision:
                raise RolloutConflict(f"the rollout of model {record.model!r} changed meanwhile")
            saved = replace(record, revision=(expected_revision or 0) + 1)
            connection.execute(
                "INSERT INTO rollouts (model, revision, phase, record) VALUES (?, ?, ?, ?) ON CONFLICT (model) "
                "DO UPDATE SET revision = excluded.revision, phase = excluded.phase, record = excluded.record",
                (saved.model, saved.revision, saved.phase, record_to_json(saved)),
            )
        return saved


    def on_change(self, wake: Callable[[], None]) -> bool:
        return False  # SQLite cannot push: the policy sync polls the generation, a single-row read

    def close(self) -> None:
        with self._connections_lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()


def _next_generation(connection: sqlite3.Connection) -> int:
    """Take the next generation; inside a write transaction, so no other process takes the same."""
    connection.execute("UPDATE counters SET value = value + 1 WHERE name = 'generation'")
    return int(connection.execute("SELECT value FROM counters WHERE name = 'generation'").fetchone()[0])


def _add_host_column(connection: sqlite3.Connection) -> None:
    """Files written before reports named their host gain the column (empty for old rows)."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(processes)")}
    if "host" not in columns:
        try:
            connection.execute("ALTER TABLE processes ADD COLUMN host TEXT NOT NULL DEFAULT ''")
        except sqlite3.OperationalError as error:  # another process starting beside us added it first
            if "duplicate column" not in str(error):
                raise


class _WriteTransaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on error: one writer at a time across processes."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __enter__(self) -> sqlite3.Connection:
        self._connection.execute("BEGIN IMMEDIATE")
        return self._connection

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self._connection.execute("ROLLBACK" if kind is not None else "COMMIT")
