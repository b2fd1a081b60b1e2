"""Gateway processes' snapshots over Unix sockets in one private directory, gathered and merged.

With ``--processes N`` the supervisor names a directory; each gateway process serves its snapshot on
``<pid>.sock`` there. A client connects, sends one byte (``A``: everything, ``S``: the statistics
alone, ``R``: each arm's last minute), and reads a JSON snapshot until the process closes the
connection. A process that is gone (its socket refuses) or does not answer within the timeout is
skipped: a scrape is never held up by one dead child.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway.telemetry.snapshot import Snapshot, from_json, to_json

log = logging.getLogger(__name__)

EVERYTHING = b"A"
STATISTICS = b"S"
RECENT = b"R"  # each arm's last minute (turnout status)
GATHER_TIMEOUT_S = 5.0  # drift statistics may take a second of a busy process's CPU


class SnapshotServer:
    """Serves this process's snapshot on ``<directory>/<pid>.sock`` until closed."""

    def __init__(
        self,
        directory: Path,
        everything: Callable[[], Snapshot],
        statistics: Callable[[], Snapshot],
        recent: Callable[[], Snapshot] | None = None,
    ) -> None:
        self.path = directory / f"{os.getpid()}.sock"
        self._answers = {EVERYTHING: everything, STATISTICS: statistics}
        if recent is not None:
            self._answers[RECENT] = recent
        self.path.unlink(missing_ok=True)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(16)
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="metrics-peers", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(connection,), name="metrics-peer", daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with connection:
            try:
                connection.settimeout(GATHER_TIMEOUT_S)
                answer = self._answers.get(connection.recv(1))
                if answer is not None:
                    connection.sendall(to_json(answer()))
            except Exception:  # a peer that hangs up or a snapshot that fails costs that one answer
                log.exception("answering a metrics snapshot request failed")

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.path.unlink(missing_ok=True)


def ask(path: Path, what: bytes, timeout_s: float = GATHER_TIMEOUT_S) -> Snapshot | None:
    """One process's snapshot, or None when it is gone or too slow."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout_s)
            connection.connect(str(path))
            connection.sendall(what)
            chunks = []
            while chunk := connection.recv(1 << 16):
                chunks.append(chunk)
        return from_json(b"".join(chunks))
    except (OSError, ValueError) as error:
        log.debug("no metrics snapshot from %s: %s", path, error)
        return None


def gather(directory: Path, what: bytes, *, skip: Path | None = None) -> list[Snapshot]:
    """Every gateway process's snapshot in ``directory`` (but ``skip``'s), asked at once."""
    paths = sorted(p for p in directory.glob("*.sock") if p != skip)
    if not paths:
        return []
    with ThreadPoolExecutor(max_workers=len(paths), thread_name_prefix="metrics-gather") as pool:
        answers = list(pool.map(lambda path: ask(path, what), paths))
    return [answer for answer in answers if answer is not None]
