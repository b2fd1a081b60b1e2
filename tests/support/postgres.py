"""A real PostgreSQL server for tests, and databases of the tests' own on it.

The server is the machine's on 127.0.0.1:5432 (trust auth, user ``postgres``) when it answers;
otherwise a private cluster started from the installed binaries (``/usr/lib/postgresql/*/bin``):
initdb into a temporary directory, ``pg_ctl start`` on a free port, as the ``postgres`` OS user when
the tests run as root (PostgreSQL refuses to run as root). Either way a test gets a database of
its own (a random name), created for it and dropped after it; no other database is ever touched.
A test that must stop the server starts a :class:`PrivateCluster` of its own.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

SHARED_HOST, SHARED_PORT, USER = "127.0.0.1", 5432, "postgres"


def server_url(host: str, port: int, database: str = "postgres") -> str:
    return f"postgresql://{USER}@{host}:{port}/{database}"


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def _binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("no PostgreSQL on 127.0.0.1:5432 and no binaries under /usr/lib/postgresql to start one")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivateCluster:
    """A PostgreSQL cluster of the test's own in a temporary directory; it can be stopped and started again."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.host = "127.0.0.1"
        self._directory = Path(tempfile.mkdtemp(prefix="turnout-pg-"))
        self._data = self._directory / "data"
        self._bin = _binaries()
        as_root = os.geteuid() == 0
        # PostgreSQL refuses to run as root: the cluster belongs to the postgres OS user then.
        self._prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
        if as_root:
            shutil.chown(self._directory, "postgres")
        self._run(str(self._bin / "initdb"), "-D", str(self._data), "-U", USER, "--auth=trust", "-E", "UTF8")

    def _run(self, *command: str) -> None:
        subprocess.run([*self._prefix, *command], check=True, capture_output=True, timeout=120)

    @property
    def url(self) -> str:
        return server_url(self.host, self.port)

    def start(self) -> None:
        options = f"-p {self.port} -k {self._directory} -c listen_addresses={self.host} -c fsync=off"
        self._run(str(self._bin / "pg_ctl"), "-D", str(self._data), "-o", options, "-w", "-l",
                  str(self._directory / "log"), "start")  # fmt: skip

    def stop(self) -> None:
        self._run(str(self._bin / "pg_ctl"), "-D", str(self._data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self._directory, ignore_errors=True)

    def __enter__(self) -> PrivateCluster:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def shared_server_url(clusters: list[PrivateCluster]) -> str:
    """The URL of the machine's server when it answers; else starts a private cluster (appended to
    ``clusters`` for the caller to close) and returns its URL."""
    url = server_url(SHARED_HOST, SHARED_PORT)
    if _answers(url):
        return url
    cluster = PrivateCluster()
    cluster.start()
    clusters.append(cluster)
    return cluster.url


@contextlib.contextmanager
def own_database(server: str) -> Iterator[str]:
    """Creates a database with a random name on the server at ``server``, yields its URL, drops it after."""
    name = f"turnout_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield server.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            # FORCE: a gateway killed by the test may leave its connections behind.
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def cut_off(server: str, database_url: str) -> None:
    """Refuse new connections to the test's own database and end its open ones: as if it were down."""
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


def restore(server: str, database_url: str) -> None:
    """Let the database take connections again after :func:`cut_off`."""
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))
