"""The PostgreSQL store's schema: created and migrated by Turnout, one numbered step at a time.

``turnout_schema_version`` holds the version the database is at. Each gateway migrates it up to
the version it knows, under a transaction-scoped advisory lock so that gateways starting together
migrate once; one that finds a newer version than it knows refuses to start, naming both, because
it could write rows that a newer gateway does not expect.
"""

from __future__ import annotations

from typing import Any, LiteralString

import psycopg

from gateway.state.store import StateSchemaTooNew

# Every table is named turnout_*: `pg_dump -t 'turnout_*'` backs up the routing state alone.
_MIGRATIONS: tuple[tuple[LiteralString, ...], ...] = (
    (  # 1: the first schema
        "CREATE TABLE turnout_counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
        "INSERT INTO turnout_counters (name, value) VALUES ('generation', 0)",
        "CREATE TABLE turnout_policies (model TEXT PRIMARY KEY, policy TEXT NOT NULL, generation BIGINT NOT NULL)",
        "CREATE TABLE turnout_history (id BIGSERIAL PRIMARY KEY, model TEXT NOT NULL, generation BIGINT NOT NULL,"
        " at DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, reason TEXT NOT NULL,"
        " before TEXT, after TEXT NOT NULL)",
        "CREATE INDEX turnout_history_by_model ON turnout_history (model, id)",
        "CREATE TABLE turnout_repository_requests (model TEXT PRIMARY KEY, action TEXT NOT NULL,"
        " generation BIGINT NOT NULL, at DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL)",
        "CREATE TABLE turnout_refused_calls (id BIGSERIAL PRIMARY KEY, model TEXT NOT NULL,"
        " at DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL)",
        "CREATE INDEX turnout_refused_calls_by_model ON turnout_refused_calls (model, id)",
        "CREATE TABLE turnout_processes (process_id TEXT PRIMARY KEY, pid INTEGER NOT NULL,"
        " applied_generation BIGINT NOT NULL, seen_at DOUBLE PRECISION NOT NULL, host TEXT NOT NULL)",
        "CREATE TABLE turnout_leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL,"
        " expires_at DOUBLE PRECISION NOT NULL)",
    ),
    (  # 2: progressive rollouts, one record per model
        "CREATE TABLE turnout_rollouts (model TEXT PRIMARY KEY, revision BIGINT NOT NULL, phase TEXT NOT NULL,"
        " record TEXT NOT NULL)",
    ),
    (  # 3: each process's per-arm totals, read by the rollout analysis' leader over every host
        "CREATE TABLE turnout_arm_totals (process_id TEXT PRIMARY KEY, started_at DOUBLE PRECISION NOT NULL,"
        " seen_at DOUBLE PRECISION NOT NULL, arms TEXT NOT NULL)",
    ),
)

SCHEMA_VERSION = len(_MIGRATIONS)
# pg_advisory_xact_lock's key: any constant of our own ("turnout" in ASCII, as an integer).
_MIGRATION_LOCK = 0x7475726E6F7574


def migrate(connection: psycopg.Connection[Any], where: str) -> int:
    """Bring the database up to :data:`SCHEMA_VERSION` (``connection`` not in autocommit); returns it.

    Raises :class:`StateSchemaTooNew` when a newer Turnout migrated it further.
    """
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        connection.execute("CREATE TABLE IF NOT EXISTS turnout_schema_version (version INTEGER NOT NULL)")
        row = connection.execute("SELECT max(version) FROM turnout_schema_version").fetchone()
        found = 0 if row is None or row[0] is None else int(row[0])
        if found > SCHEMA_VERSION:
            raise StateSchemaTooNew(
                f"the routing state database {where} has schema version {found}, newer than version"
                f" {SCHEMA_VERSION} that this Turnout knows: upgrade this gateway (an older one must not"
                " write to it)"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[version - 1]:
                connection.execute(statement)
            connection.execute("DELETE FROM turnout_schema_version")
            connection.execute("INSERT INTO turnout_schema_version (version) VALUES (%s)", (version,))
    return SCHEMA_VERSION
