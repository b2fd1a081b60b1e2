"""Capture's counters: kept in memory by one process, persisted as a small JSON file for ``turnout capture``."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Literal

from gateway.capture.naming import writer_of_counters

STATS_DIR = "_stats"  # a leading underscore: pyarrow's dataset discovery skips it
COUNTERS = (
    "written",  # records committed to the write-ahead log
    "dropped_full",  # records dropped because the buffer was full (overflow: drop)
    "dropped_closing",  # records handed over after a graceful stop began (late shadow answers)
    "dropped_budget",  # records dropped because the disk budget had no room even after deletions
    "failed",  # records lost to a write error (full disk, unwritable directory)
    "sampled_out",  # requests left out by --capture-sample
    "skipped",  # torn or corrupt log records skipped during compaction
    "compacted",  # records compacted into Parquet
    "deleted_files",  # Parquet files deleted to stay within the budget
    "deleted_bytes",
    "unclean_stops",  # processes found stopped without a graceful stop (killed): async records may be lost
)
RUNNING = "running"  # in a process's file: true from its start until its graceful stop


class CaptureStats:
    """Counters bumped from dispatcher, writer and compactor threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self.running = False  # saved with the counters: a file left saying true was a process killed

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            self._counts[name] += count

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def save(self) -> None:
        """Replace the file atomically; a failure is left for the next save (the disk may be full)."""
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps({**self.snapshot(), RUNNING: self.running}))
            os.replace(temporary, self.path)
        except OSError:
            pass


def stopped_uncleanly(root: Path, own: Path, host: str) -> list[Path]:
    """Other processes' files of this host that still say running while their process is gone: killed.

    The file's name holds the host and the process id (``<host>-<pid>-<run>.json``). Only this host's
    processes can be looked up here: another host's are judged by that host (a file from before hosts
    were named counts as this host's). A process id that is alive again for another process leaves
    the file for a later start to find.
    """
    found = []
    for path in sorted((root / STATS_DIR).glob("*.json")):
        writer = writer_of_counters(path.stem)
        if path == own or writer is None or writer.host not in (None, host):
            continue
        try:
            running = bool(json.loads(path.read_text()).get(RUNNING))
        except (OSError, ValueError):
            continue
        if running and not Path(f"/proc/{writer.pid}").exists():
            found.append(path)
    return found


WriterState = Literal["running", "stopped", "killed", "unknown"]


def writer_state(root: Path, stem: str, silent_s: float) -> WriterState:
    """How another host's writer ``stem`` stands, told by its counters file alone (no pid to look up).

    A running writer saves the file every compaction round (about every second), so a file that says
    running and has not been saved for ``silent_s`` belongs to a writer that was killed (or whose
    host is gone). ``unknown``: no file to tell, so nobody may assume it stopped.
    """
    path = root / STATS_DIR / f"{stem}.json"
    try:
        silent = time.time() - path.stat().st_mtime
        running = bool(json.loads(path.read_text()).get(RUNNING))
    except (OSError, ValueError):
        return "unknown"
    if not running:
        return "stopped"
    return "killed" if silent > silent_s else "running"


def mark_stopped(path: Path) -> None:
    """Record that a killed process's stop has been reported, so it is reported once."""
    try:
        counts = json.loads(path.read_text())
        counts[RUNNING] = False
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(json.dumps(counts))
        os.replace(temporary, path)
    except (OSError, ValueError):
        pass


def saved_totals(root: Path) -> dict[str, int]:
    """Every process's saved counters, summed."""
    totals = dict.fromkeys(COUNTERS, 0)
    for path in sorted((root / STATS_DIR).glob("*.json")):
        try:
            counts = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for name in COUNTERS:
            totals[name] += int(counts.get(name, 0))
    return totals
