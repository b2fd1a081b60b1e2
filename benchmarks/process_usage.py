"""CPU time and context switches of a server's whole process tree, read from /proc.

Benchmarks sample it inside a load generator's measured window and divide by the requests served
in that window: CPU per request is far steadier on a shared host than throughput or p99 are.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

CLIENT_START_S = 0.6  # a load generator's interpreter start and channel set-up, roughly


@dataclass(frozen=True)
class Usage:
    """CPU seconds and context switches of a process tree (worker processes included), and when."""

    cpu_s: float
    switches: int
    at: float


def process_tree(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                pending.extend(int(child) for child in (task / "children").read_text().split())
    return found


def usage(pid: int) -> Usage:
    ticks = os.sysconf("SC_CLK_TCK")
    cpu, switches = 0.0, 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
            for task in Path(f"/proc/{member}/task").glob("*"):
                status = (task / "status").read_text()
                switches += sum(int(n) for n in re.findall(r"ctxt_switches:\s+(\d+)", status))
    return Usage(cpu, switches, time.perf_counter())


def sample_measured_window(pid: int, warmup_s: float, duration_s: float) -> tuple[Usage, Usage]:
    """Usage at the start and near the end of a load generator's measured window; call it right
    after starting the load generator, which must run ``warmup_s`` then ``duration_s``."""
    time.sleep(warmup_s + CLIENT_START_S)
    first = usage(pid)
    time.sleep(max(duration_s - CLIENT_START_S - 0.2, 0.1))
    return first, usage(pid)


def per_request(first: Usage, last: Usage, throughput_rps: float) -> dict[str, float]:
    """Server CPU microseconds and context switches per request served between two samples."""
    served = throughput_rps * (last.at - first.at)
    if served <= 0:
        return {}
    return {
        "server_cpu_us_per_request": round((last.cpu_s - first.cpu_s) / served * 1e6, 1),
        "server_switches_per_request": round((last.switches - first.switches) / served, 2),
    }
