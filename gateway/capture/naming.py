"""Capture's file names: which host, process and run wrote a segment, a Parquet file or a counters file.

A writer is named ``<host>-<pid>-<run>``: the host's name (``--capture-host``), so that hosts sharing
one capture directory (a network filesystem) never choose the same name; the process id, for people;
and a run id drawn when the process starts, so that a process started again, or another one given a
recycled pid, never reuses a name. A segment adds ``-<sequence>``, and the Parquet files compacted
from a segment take the segment's name, so every file under the directory names the host that wrote
it and no two writers ever write the same file.

Names are parsed from the right: a host name may hold dashes, the other parts never do. Names made
before hosts were named (``<pid>-<run>`` and ``<pid>-<run>-<sequence>``) parse with no host.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class WriterName:
    """Who writes: one process of one host, in one run."""

    host: str | None  # None: a name from before hosts were named
    pid: int
    run: str

    @classmethod
    def fresh(cls, host: str) -> WriterName:
        """This process's name for its lifetime, under ``host``."""
        return cls(host, os.getpid(), uuid.uuid4().hex[:12])

    @property
    def stem(self) -> str:
        """The name of the writer's counters file, and the start of its segments' names."""
        return "-".join([*([self.host] if self.host is not None else []), str(self.pid), self.run])

    def segment(self, sequence: int) -> str:
        """The stem of the writer's ``sequence``-th segment, and of the Parquet files made from it."""
        return f"{self.stem}-{sequence:06d}"


def writer_of_counters(stem: str) -> WriterName | None:
    """The writer a counters file (``<stem>.json``) belongs to; None for a name it never makes."""
    parts = stem.rsplit("-", 2)
    if len(parts) == 2:  # <pid>-<run>: before hosts were named
        parts.insert(0, "")
    if len(parts) != 3:
        return None
    host, pid, run = parts
    if not pid.isdigit() or not run:
        return None
    return WriterName(host or None, int(pid), run)


def writer_of_segment(stem: str) -> WriterName | None:
    """The writer of a segment (``<stem>.log``), or of a Parquet file compacted from one."""
    writer, dash, sequence = stem.rpartition("-")
    if not dash or not sequence.isdigit():
        return None
    return writer_of_counters(writer)
