"""Reloading on SIGHUP: the handler that runs a process's reload, off the signal handler's frame."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType


def reload_on_hangup(reload: Callable[[], None], log: logging.Logger) -> None:
    """Install a SIGHUP handler that runs ``reload`` on a thread of its own, one reload at a time.

    Not in the handler itself: CPython runs a handler on the main thread between any two bytecodes,
    so a reload that takes a lock the interrupted code holds (a second SIGHUP arriving during the
    first reload, say) would wait for ever. A SIGHUP that arrives while a reload runs is not lost:
    one more reload follows, which reads the files as they are by then.
    """
    wanted = threading.Event()
    running = threading.Lock()

    def run_reloads() -> None:
        while True:
            while wanted.is_set():
                wanted.clear()
                try:
                    reload()
                except Exception:  # a reload must never take the process down; the next SIGHUP tries again
                    log.exception("reload on SIGHUP failed")
            running.release()
            # A SIGHUP between the last check and the release found the lock held and left it to us.
            if not wanted.is_set() or not running.acquire(blocking=False):
                return

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        log.info("received SIGHUP; reloading")
        wanted.set()
        if running.acquire(blocking=False):
            threading.Thread(target=run_reloads, name="reload", daemon=True).start()

    signal.signal(signal.SIGHUP, on_hangup)
