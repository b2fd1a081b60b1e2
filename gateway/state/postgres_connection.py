"""Connections to the shared state database: the timeouts they carry, and how a URL is named in logs."""

from __future__ import annotations

from typing import Any

import psycopg

# A database that does not answer must not hold a control call or the policy sync for long: the
# gateway serves on with what it applied, and refuses changes at once.
_CONNECT_TIMEOUT_S = 3
_TCP_USER_TIMEOUT_MS = 5_000
_STATEMENT_TIMEOUT_MS = 5_000


def describe_url(url: str) -> str:
    """``host:port/database`` of a connection URL, for messages and logs: never its password."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "an unparsable PostgreSQL URL"
    return f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def connect(url: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A connection with the timeouts that keep a dead or cut-off database from hanging a caller."""
    return psycopg.connect(
        url,
        autocommit=autocommit,
        connect_timeout=_CONNECT_TIMEOUT_S,
        tcp_user_timeout=_TCP_USER_TIMEOUT_MS,
        options=f"-c statement_timeout={_STATEMENT_TIMEOUT_MS}",
        application_name="turnout",
    )
