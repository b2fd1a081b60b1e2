"""Opens the state store the settings name: PostgreSQL with ``--state-url``, else SQLite under ``--state-dir``.

The one place that chooses; the gateway process (gateway/app.py) and the supervisor both open the
store through it, so they can never disagree about where the routing state lives.
"""

from __future__ import annotations

from gateway.settings import Settings
from gateway.state.store import StateStore


def open_state_store(settings: Settings) -> StateStore:
    """Raises StateUnavailable when the store cannot be opened (and StateSchemaTooNew, one of them)."""
    if settings.state_url is not None:
        # Imported here: psycopg is loaded only by gateways that use it.
        from gateway.state.postgres_store import PostgresStateStore

        return PostgresStateStore(settings.state_url)
    from gateway.state.sqlite_store import SqliteStateStore

    return SqliteStateStore(settings.state_dir)


def describe_state_location(settings: Settings) -> str:
    """Where the routing state lives, for the start-up log: never a password."""
    if settings.state_url is not None:
        from gateway.state.postgres_connection import describe_url

        return f"PostgreSQL at {describe_url(settings.state_url)}"
    return str(settings.state_dir)
