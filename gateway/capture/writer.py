"""The capture pipeline of one gateway process: a bounded buffer, the writer thread, the compactor.

Dispatcher threads :meth:`CaptureLog.put` records into the buffer and go back to their batches. The
writer thread takes everything waiting, encodes it, and commits it with one write and one fsync
(group commit): under ``async`` it wakes every flush interval (or when the buffer is half full),
under ``sync`` as soon as a record arrives, and settles each record's :class:`Commit` after the
fsync. Segments are rolled by size and age; the compactor thread turns closed segments (this
process's, and any left by a process of this host that died) into Parquet and deletes them afterwards.

Several hosts may share one capture directory (a network filesystem): every file name begins with
the host's name (:mod:`gateway.capture.naming`), and a host compacts its own segments (and those
from before hosts were named), so no two hosts ever write the same file or take the same segment
while its writer may be alive. The processes of one host take turns through a lock on each segment,
which a network filesystem keeps for one client's processes; between hosts it may not. So another
host's segments are left alone until its writer is known to have stopped: its counters file says
so, or has not been saved for ``adopt_after_s`` (a running writer saves it every second). Then any
host compacts them, into the same file names, so even two hosts adopting one segment at once write
its rows once.

Nothing here may take the gateway down: a write error (a full disk, a directory gone read-only) is
logged once, counted, and retried with the next batch in a fresh segment; the records of the failed
batch are lost and counted. A disk budget deletes the oldest Parquet files first.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.capture.naming import WriterName, writer_of_segment
from gateway.capture.parquet import FeatureNames, parquet_files, write_partitions
from gateway.capture.record import CaptureRecord, RecordCorrupt, decode, encode
from gateway.capture.stats import STATS_DIR, CaptureStats, mark_stopped, stopped_uncleanly, writer_state
from gateway.capture.wal import SegmentFile, claim, closed_segments, frame, read_frames
from gateway.serving.observers import Commit

log = logging.getLogger(__name__)

WAL_DIR = "_wal"  # a leading underscore: pyarrow's dataset discovery skips it
UNREADABLE = ".unreadable"  # a segment compaction failed on for a reason other than the disk's

Durability = Literal["async", "sync"]
Overflow = Literal["block", "drop"]


@dataclass(frozen=True)
class CaptureConfig:
    root: Path
    durability: Durability = "async"
    overflow: Overflow = "drop"
    flush_s: float = 0.2
    max_bytes: int = 0  # 0: no budget
    buffer_records: int = 8192
    segment_bytes: int = 64 << 20
    segment_age_s: float = 5.0  # a segment is closed (and compacted) at most this old
    compact_interval_s: float = 1.0
    # In every file name and every record: settings check it (letters, digits, '.', '_', '-').
    host: str = field(default_factory=socket.gethostname)
    # Another host's writer whose counters were not saved for this long has stopped: its segments are
    # compacted here. Far above the one-second saves, a network filesystem's attribute cache (60 s at
    # most by default) and clock differences between hosts.
    adopt_after_s: float = 600.0


class CaptureLog:
    """The buffer, the writer and the compactor of one process; :meth:`start` after :meth:`recover`."""

    def __init__(self, config: CaptureConfig, feature_names: FeatureNames) -> None:
        self.config = config
        self._feature_names = feature_names
        # Unique across hosts, processes and restarts, so no file name is ever written by two writers.
        self.writer = WriterName.fresh(config.host)
        self.wal_dir = config.root / WAL_DIR
        self.stats = CaptureStats(config.root / STATS_DIR / f"{self.writer.stem}.json")
        self._buffer: collections.deque[tuple[CaptureRecord, Commit | None]] = collections.deque()
        lock = threading.Lock()
        self._ready = threading.Condition(lock)  # records are waiting (or we are closing)
        self._room = threading.Condition(lock)  # the buffer has room again (overflow: block)
        self._closing = False
        self._segment: SegmentFile | None = None
        self._segment_opened = 0.0
        self._sequence = 0
        self._failing = False  # a write error was logged and not yet followed by a success
        self._over_budget = False
        self._usage = 0  # bytes under root: Parquet files and segments
        self._usage_lock = threading.Lock()
        self._compact_now = threading.Event()
        self._compacting = threading.Lock()  # the compactor thread, recovery and close take turns
        self._threads: list[threading.Thread] = []

    # -- on dispatcher threads -------------------------------------------------------------------

    def put(self, record: CaptureRecord, commit: Commit | None) -> None:
        """Hand a record over; waits for room under ``block``, drops and counts it under ``drop``."""
        with self._ready:
            while len(self._buffer) >= self.config.buffer_records and not self._closing:
                if self.config.overflow == "drop":
                    self.stats.add("dropped_full")
                    if commit is not None:
                        commit.settle(False)
                    return
                self._room.wait()
            if self._closing:  # a late shadow answer: the writer may have taken its last batch
                self.stats.add("dropped_closing")
                if commit is not None:
                    commit.settle(False)
                return
            self._buffer.append((record, commit))
            if self.config.durability == "sync" or len(self._buffer) * 2 >= self.config.buffer_records:
                self._ready.notify()

    def queued(self) -> int:
        """Records handed over and not yet written: the writer's lag, in records."""
        return len(self._buffer)

    # -- life cycle ------------------------------------------------------------------------------

    def recover(self) -> None:
        """Compact every segment a stopped or crashed process left; called before the gateway is ready.

        A directory that cannot be made or read is logged, not raised: the gateway serves, and the
        writer counts what it cannot write until the directory works.
        """
        try:
            self._prepare_directories()
            self._usage = _bytes_under(self.config.root)
        except OSError as error:
            log.error("capture: cannot use %s (%s); serving, and counting what cannot be written", self.wal_dir, error)
            return
        self._report_unclean_stops()
        self._compact_all()
        self.stats.save()

    def _report_unclean_stops(self) -> None:
        """Say so when a process stopped without a graceful stop: what it had not written yet is gone."""
        for path in stopped_uncleanly(self.config.root, self.stats.path, self.config.host):
            self.stats.add("unclean_stops")
            if self.config.durability == "async":
                log.warning(
                    "capture: process %s stopped without a graceful stop (killed?); its committed records are "
                    "recovered, and the records it had not yet written, at most its last %d ms, are lost",
                    path.stem, round(self.config.flush_s * 1000),
                )
            else:
                log.warning(
                    "capture: process %s stopped without a graceful stop (killed?); its committed records are "
                    "recovered (sync durability: every answered request's record was committed)",
                    path.stem,
                )
            mark_stopped(path)

    def start(self) -> None:
        self.stats.running = True
        self.stats.save()
        for target, name in ((self._write_loop, "capture-writer"), (self._compact_loop, "capture-compactor")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Graceful stop: write everything buffered, close the segment, compact everything."""
        with self._ready:
            self._closing = True
            self._ready.notify_all()
            self._room.notify_all()
        for thread in self._threads:
            thread.join()
        self._compact_all()
        self.stats.running = False
        self.stats.save()

    # -- the writer thread -----------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            with self._ready:
                if not self._closing and self._may_wait():
                    self._ready.wait(self.config.flush_s)
                batch = list(self._buffer)
                self._buffer.clear()
                closing = self._closing
                self._room.notify_all()
            if batch:
                self._commit_or_fail(batch)
            self._roll_if_due(force=closing)
            if closing:
                with self._ready:
                    if not self._buffer:
                        return

    def _may_wait(self) -> bool:
        # sync: callers wait, so write as soon as there is anything. async: gather for a flush
        # interval (one fsync per interval under steady load), unless the buffer is half full.
        if self.config.durability == "sync":
            return not self._buffer
        return len(self._buffer) * 2 < self.config.buffer_records

    def _commit_or_fail(self, batch: list[tuple[CaptureRecord, Commit | None]]) -> None:
        try:
            self._commit(batch)
        except Exception:  # a bug here must neither end the writer nor leave a sync caller waiting
            log.exception("capture: could not write a batch of %d records", len(batch))
            self.stats.add("failed", len(batch))
            for _, commit in batch:
                if commit is not None:
                    commit.settle(False)

    def _commit(self, batch: list[tuple[CaptureRecord, Commit | None]]) -> None:
        frames = [frame(encode(record)) for record, _ in batch]
        fitting = self._fitting(frames)  # the budget may have room for only the first few
        if fitting < len(frames):
            self.stats.add("dropped_budget", len(frames) - fitting)
        kept = bool(fitting) and self._append(b"".join(frames[:fitting]), fitting)
        for index, (_, commit) in enumerate(batch):
            if commit is not None:
                commit.settle(kept and index < fitting)

    def _append(self, frames: bytes, count: int) -> bool:
        try:
            segment = self._open_segment()
            segment.append(frames, count)
        except OSError as error:
            self._write_failed(error, count)
            return False
        if self._failing:
            self._failing = False
            log.warning("capture: writing records again after earlier write errors")
        self.stats.add("written", count)
        with self._usage_lock:
            self._usage += len(frames)
        return True

    def _write_failed(self, error: OSError, count: int) -> None:
        self.stats.add("failed", count)
        if not self._failing:  # once per outage, not once per batch
            self._failing = True
            log.error("capture: cannot write records to %s (%s); dropping and counting them", self.wal_dir, error)
        self._close_segment()  # a fresh segment next time, in case this one is damaged

    def _open_segment(self) -> SegmentFile:
        if self._segment is None:
            self._prepare_directories()
            self._sequence += 1
            self._segment = SegmentFile(self.wal_dir, self.writer.segment(self._sequence))
            self._segment_opened = time.monotonic()
        return self._segment

    def _roll_if_due(self, force: bool) -> None:
        segment = self._segment
        if segment is None or not segment.records:
            return
        old = time.monotonic() - self._segment_opened >= self.config.segment_age_s
        if force or old or segment.size >= self.config.segment_bytes:
            self._close_segment()
            self._compact_now.set()

    def _close_segment(self) -> None:
        if self._segment is not None:
            with contextlib.suppress(OSError):  # closing only releases it; its records are committed or lost
                self._segment.close()
            self._segment = None

    def _prepare_directories(self) -> None:
        self.wal_dir.mkdir(parents=True, exist_ok=True)

    # -- the budget ------------------------------------------------------------------------------

    def _fitting(self, frames: list[bytes]) -> int:
        """How many of ``frames``, from the first, fit the budget once the oldest files make room."""
        budget = self.config.max_bytes
        if not budget:
            return len(frames)
        needed = sum(len(one) for one in frames)
        with self._usage_lock:
            room = budget - self._usage
        if needed > room:
            self._delete_oldest(budget - needed)
            with self._usage_lock:
                room = budget - self._usage
        count = 0
        for one in frames:
            if len(one) > room:
                break
            room -= len(one)
            count += 1
        if not count and not self._over_budget:
            self._over_budget = True
            log.error("capture: the disk budget of %d bytes has no room; dropping and counting records", budget)
        elif count:
            self._end_over_budget()
        return count

    def _end_over_budget(self) -> None:
        if self._over_budget:
            self._over_budget = False
            log.warning("capture: room within the disk budget again")

    def _delete_oldest(self, target: int) -> None:
        """Delete Parquet files, oldest first, until usage is at most ``target`` (or none is left)."""
        files = sorted(parquet_files(self.config.root), key=_modified)
        for path in files:
            with self._usage_lock:
                if self._usage <= target:
                    return
            try:
                size = path.stat().st_size
                path.unlink()
            except OSError:
                continue
            self.stats.add("deleted_files")
            self.stats.add("deleted_bytes", size)
            with self._usage_lock:
                self._usage -= size

    # -- the compactor ---------------------------------------------------------------------------

    def _compact_loop(self) -> None:
        while True:
            self._compact_now.wait(self.config.compact_interval_s)
            self._compact_now.clear()
            with self._ready:
                if self._closing:
                    return
            self._compact_all()
            self.stats.save()

    def _compact_all(self) -> None:
        with self._compacting:
            compacted = False
            for path in closed_segments(self.wal_dir):
                if not self._may_compact(writer_of_segment(path.stem)):
                    continue
                try:
                    compacted = self._compact(path) or compacted
                except OSError as error:  # left in place; tried again next round
                    log.error("capture: cannot compact %s (%s)", path.name, error)
                except Exception:  # records no table can hold: set aside, so recovery never fails on it
                    log.exception("capture: cannot compact %s; kept as %s%s", path.name, path.name, UNREADABLE)
                    with contextlib.suppress(OSError):
                        path.rename(path.with_name(path.name + UNREADABLE))
            if self.config.max_bytes and (compacted or self._over_budget):
                # Counted afresh from the disk after each change, so that estimates never drift far.
                with self._usage_lock:
                    self._usage = _bytes_under(self.config.root)
                self._delete_oldest(self.config.max_bytes)

    def _may_compact(self, writer: WriterName | None) -> bool:
        """This host's segments, and those from before hosts were named; another host's once its writer stopped."""
        if writer is None or writer.host in (None, self.config.host):
            return True
        state = writer_state(self.config.root, writer.stem, self.config.adopt_after_s)
        if state == "killed":
            self._report_adopted(writer)
        return state in ("stopped", "killed")

    def _report_adopted(self, writer: WriterName) -> None:
        """Say once that another host's writer was killed (or its host is gone), and that this host takes over."""
        self.stats.add("unclean_stops")
        log.warning(
            "capture: process %s of host %s stopped without a graceful stop (its counters were not saved for"
            " %d s); its committed records are compacted here",
            writer.stem, writer.host, round(self.config.adopt_after_s),
        )  # fmt: skip
        mark_stopped(self.config.root / STATS_DIR / f"{writer.stem}.json")

    def _compact(self, path: Path) -> bool:
        """Compact one segment into Parquet; False when it is not ours to take (being written, or taken)."""
        fd = claim(path)
        if fd is None:
            return False
        try:
            data = _read_all(fd)
            read = read_frames(data)
            records = []
            for payload in read.payloads:
                try:
                    records.append(decode(payload))
                except RecordCorrupt:
                    read.skipped += 1
            if read.skipped:
                log.warning("capture: %s: skipped %d torn or corrupt record(s)", path.name, read.skipped)
                self.stats.add("skipped", read.skipped)
            # The host that wrote the segment served its records; one from before hosts were named has none.
            host = writer.host if (writer := writer_of_segment(path.stem)) is not None else None
            write_partitions(self.config.root, path.stem, records, self._feature_names, host, self.config.host)
            # Only now: its records are durable in Parquet. Gone already when two hosts adopted it at once.
            path.unlink(missing_ok=True)
            self.stats.add("compacted", len(records))
        finally:
            os.close(fd)
        return True


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _sizes(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):  # deleted meanwhile: it no longer counts
            total += path.stat().st_size
    return total


def _bytes_under(root: Path) -> int:
    return _sizes([path for path in root.rglob("*") if path.is_file()]) if root.is_dir() else 0

