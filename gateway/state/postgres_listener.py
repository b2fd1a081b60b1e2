"""Wakes this gateway process when any gateway of the fleet commits a new generation (LISTEN/NOTIFY).

One thread holds a connection that LISTENs on the store's channel and calls ``wake`` for each
notification. When the connection is lost it connects again, once a second, and wakes the sync
once it is back, since notifications sent meanwhile are lost; the policy sync's slow poll covers
the rest. A lost connection is logged once, and its return once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from psycopg import sql

from gateway.state.postgres_connection import connect

log = logging.getLogger(__name__)

_RECONNECT_S = 1.0
# How long one wait for notifications blocks: bounds how late close() is noticed.
_WAIT_S = 0.5


class GenerationListener:
    def __init__(self, url: str, channel: str, where: str, wake: Callable[[], None]) -> None:
        self._url = url
        self._channel = channel
        self._where = where
        self._wake = wake
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        lost = False
        while not self._stopping.is_set():
            try:
                with connect(self._url) as connection:
                    connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    if lost:
                        log.warning("listening for routing changes in %s again", self._where)
                        lost = False
                        self._wake()  # what was committed while we were cut off
                    while not self._stopping.is_set():
                        for _ in connection.notifies(timeout=_WAIT_S, stop_after=1):
                            self._wake()
            except psycopg.Error as error:
                if not lost:
                    log.error(
                        "lost the routing changes' listener on %s (%s); polling until it is back",
                        self._where, str(error).strip().splitlines()[0] if str(error).strip() else error,
                    )
                lost = True
                self._stopping.wait(_RECONNECT_S)
