"""Stopping on SIGTERM or SIGINT: the handlers, and a wait on the main thread that always sees them."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

# How often the waiting main thread looks for a signal that another thread took.
_CHECK_S = 0.1


def stop_on_signals(what: str, log: logging.Logger) -> threading.Event:
    """Install SIGTERM and SIGINT handlers that set the returned event; ``what`` is logged once."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        if not stop.is_set():  # a supervisor may signal twice; one graceful stop is enough
            log.info("received %s; %s", signal.Signals(signum).name, what)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


def wait_for_stop(stop: threading.Event) -> None:
    """Block the main thread until a stop signal's handler has run.

    The kernel may hand a process's signal to any of its threads. CPython then runs the Python
    handler on the main thread, but only once that thread executes bytecode again, and a main
    thread blocked in a plain ``Event.wait()`` is not woken: a SIGTERM taken by another thread was
    seen only when the wait timed out, and a gateway under test once ignored SIGTERM for 5 s. So
    the main thread wakes every 0.1 s to let a pending handler run.
    """
    while not stop.wait(_CHECK_S):
        pass
