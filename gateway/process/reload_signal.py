"""SIGHUP: read again what may change while a gateway runs (its control tokens), without a restart."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from types import FrameType


def reload_on_sighup(reload: Callable[[], None], log: logging.Logger) -> None:
    """Install a SIGHUP handler that calls ``reload``; it runs on the main thread, between its waits
    (see :func:`gateway.process.stop_signals.wait_for_stop`), and an error in it is logged, never raised."""

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        log.info("received SIGHUP; reloading")
        try:
            reload()
        except Exception:  # a failed reload must not end the main thread's wait, and with it the gateway
            log.exception("reloading failed")

    signal.signal(signal.SIGHUP, on_hangup)
