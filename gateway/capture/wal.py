"""The write-ahead log: checksummed frames appended to segment files, and reading them back.

A frame is ``MAGIC``, a ``uint32`` payload length, a ``uint32`` CRC32 of the length and payload,
then the payload (an encoded record). A crash can tear the last frame; a disk can flip a byte. Both
fail the checksum, so a reader skips them and never returns them as data. After a bad frame the
reader looks for the next good one: first where the (possibly damaged) length says it starts, then
at the next ``MAGIC`` whose frame checks out, so one bad record costs one record, not the segment.

Segments are named ``<host>-<pid>-<run>-<seq>.log`` (:mod:`gateway.capture.naming`): the host, the
process id for people, a run id drawn at start so a later process with the same pid never reuses a
name, and a sequence number. Each process writes only its own segments, and holds an exclusive
``flock`` on the open one, so a process that recovers leftovers at start-up never takes a segment
that is still being written.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"TCR1"
_HEADER = struct.Struct("<4sII")
SEGMENT_SUFFIX = ".log"
_NEW_SUFFIX = ".new"  # a segment between creation and its lock; never read


def frame(payload: bytes) -> bytes:
    """One record's payload as the log stores it."""
    length = struct.pack("<I", len(payload))
    return b"".join([MAGIC, length, struct.pack("<I", zlib.crc32(payload, zlib.crc32(length))), payload])


@dataclass
class SegmentRead:
    payloads: list[bytes]
    skipped: int  # torn or corrupt frames (each damaged stretch counts once)


def _good_frame_at(data: bytes, offset: int) -> int | None:
    """The payload length of a frame that checks out at ``offset``, else None."""
    if offset + _HEADER.size > len(data):
        return None
    magic, length, crc = _HEADER.unpack_from(data, offset)
    end = offset + _HEADER.size + length
    if magic != MAGIC or end > len(data):
        return None
    checked = zlib.crc32(memoryview(data)[offset + _HEADER.size : end], zlib.crc32(data[offset + 4 : offset + 8]))
    return length if checked == crc else None


def _next_good_frame(data: bytes, start: int) -> int:
    """Where the next frame that checks out begins after damage, or the end of ``data``."""
    position = data.find(MAGIC, start)
    while position != -1:
        if _good_frame_at(data, position) is not None:
            return position
        position = data.find(MAGIC, position + 1)
    return len(data)


def read_frames(data: bytes) -> SegmentRead:
    """Every intact payload in a segment's bytes, and how many damaged stretches were skipped."""
    payloads: list[bytes] = []
    skipped = 0
    offset = 0
    while offset < len(data):
        length = _good_frame_at(data, offset)
        if length is not None:
            start = offset + _HEADER.size
            payloads.append(data[start : start + length])
            offset = start + length
            continue
        skipped += 1
        offset = _resume_after_damage(data, offset)
    return SegmentRead(payloads, skipped)


def _resume_after_damage(data: bytes, offset: int) -> int:
    # If only the payload was damaged, its length still points at the next frame (or the end).
    if offset + _HEADER.size <= len(data):
        magic, length, _ = _HEADER.unpack_from(data, offset)
        after: int = offset + _HEADER.size + length
        if magic == MAGIC and (after == len(data) or _good_frame_at(data, after) is not None):
            return after
    return _next_good_frame(data, offset + 1)


def read_segment(path: Path) -> SegmentRead:
    return read_frames(path.read_bytes())


class SegmentFile:
    """The segment a writer appends to: created, locked, then named, so it is never seen unlocked."""

    def __init__(self, directory: Path, stem: str) -> None:
        self.path = directory / f"{stem}{SEGMENT_SUFFIX}"
        fresh = directory / f"{stem}{SEGMENT_SUFFIX}{_NEW_SUFFIX}"
        self._fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        os.rename(fresh, self.path)
        sync_directory(directory)  # the segment's name must survive a crash as well as its records
        self.size = 0
        self.records = 0

    def append(self, frames: bytes, count: int) -> None:
        """One write and one fsync for ``frames``; on failure the segment is cut back to its last commit."""
        try:
            view = memoryview(frames)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fdatasync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):  # if it stays, the reader's checksum refuses the partial frame
                os.ftruncate(self._fd, self.size)
            raise
        self.size += len(frames)
        self.records += count

    def close(self) -> None:
        """Closing releases the lock: from here on the segment is the compactor's."""
        os.close(self._fd)


def claim(path: Path) -> int | None:
    """An fd holding ``path``'s lock, or None when another process holds it or it is gone already."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino != os.stat(path).st_ino:  # compacted and replaced while we waited
            raise FileNotFoundError(path)
    except OSError:
        os.close(fd)
        return None
    return fd


def closed_segments(directory: Path) -> Iterator[Path]:
    """Segments in name order; an open one is refused later by :func:`claim`."""
    if directory.is_dir():
        yield from sorted(directory.glob(f"*{SEGMENT_SUFFIX}"))


def sync_directory(directory: Path) -> None:
    """fsync a directory, so that files created or renamed in it stay there after a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
