"""CPU affinity for the gateway's own threads: keeps them on the CPUs an operator names."""

from __future__ import annotations

import contextlib
import logging
import os

log = logging.getLogger("turnout")


def pin_gateway_threads(cpus: tuple[int, ...]) -> bool:
    """Keep this process's threads, now and later, on ``cpus``; the zygote and the
    workers it forks, already apart, keep every CPU. Python threads that hand the GIL to each other
    across cores pay for it: pinned to one core a gateway served 1.7-1.9 times the requests of an
    unpinned one here (docs/benchmarks-log.md, "what the profile shows")."""
    try:
        # Every thread there is now, native ones too (numpy's BLAS pool starts at import); threads
        # started later inherit the affinity of the thread that starts them.
        for thread in os.listdir("/proc/self/task"):
            with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
                os.sched_setaffinity(int(thread), cpus)
    except OSError as error:
        log.error("cannot run the gateway on CPUs %s: %s (this machine allows %s)",
                  ",".join(map(str, cpus)), error, sorted(os.sched_getaffinity(0)))
        return False
    return True
