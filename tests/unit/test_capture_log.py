"""The capture log on a real directory, without a gateway: group commit, overflow, recovery, Parquet, budget."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from gateway.capture.parquet import open_dataset, parquet_files, table_of
from gateway.capture.record import CaptureRecord, encode
from gateway.capture.stats import saved_totals
from gateway.capture.wal import frame
from gateway.capture.writer import WAL_DIR, CaptureConfig, CaptureLog
from gateway.serving.observers import Commit
from runtimes.datatypes import BYTES, DATATYPES, encode_bytes, numpy_dtype
from runtimes.raw_tensors import RawTensor

FEATURES = ("a", "b", "c")
BUDGET = 30_000  # a few Parquet files of one record (about 4 KB each, mostly metadata)


def record(index: int, rows: int = 1) -> CaptureRecord:
    values = bytes(range(index % 200, index % 200 + 12 * rows))
    return CaptureRecord(
        f"r{index}", 1_767_225_600_000_000_000 + index, "m", "1", "stable", 0, "no-canary", "OK", 0.5, rows,
        {"x": RawTensor("FP32", (rows, 3), values)}, {"y": RawTensor("INT64", (rows,), bytes(8 * rows))},
    )  # fmt: skip


def capture(root: Path, **config: object) -> CaptureLog:
    return CaptureLog(CaptureConfig(root, **config), lambda model: FEATURES)  # type: ignore[arg-type]


def table(root: Path) -> dict[str, list[object]]:
    return open_dataset(root).to_table().sort_by([("request_id", "ascending"), ("row", "ascending")]).to_pydict()


def test_sync_commits_settle_after_one_fsync_for_all_that_waited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsyncs = []
    real = os.fdatasync

    def slow_fsync(fd: int) -> None:
        fsyncs.append(fd)
        time.sleep(0.02)  # long enough for others to queue behind it
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow_fsync)
    log = capture(tmp_path, durability="sync")
    log.recover()
    log.start()
    commits = [Commit() for _ in range(64)]
    threads = [threading.Thread(target=log.put, args=(record(i), commit)) for i, commit in enumerate(commits)]
    for thread in threads:
        thread.start()
    assert all(commit.wait(10) for commit in commits)
    log.close()
    assert len(fsyncs) < 16  # group commit: far fewer fsyncs than records
    assert log.stats.snapshot()["written"] == 64
    assert len(table(tmp_path)["request_id"]) == 64


def test_drop_counts_what_a_full_buffer_refuses(tmp_path: Path) -> None:
    log = capture(tmp_path, buffer_records=4, overflow="drop")
    log.recover()  # not started: nothing drains the buffer
    commits = [Commit() for _ in range(6)]
    for index, commit in enumerate(commits):
        log.put(record(index), commit)
    assert log.stats.snapshot()["dropped_full"] == 2
    assert [commit.kept for commit in commits[4:]] == [False, False]
    log.start()
    log.close()
    assert sorted(map(str, table(tmp_path)["request_id"])) == ["r0", "r1", "r2", "r3"]
    assert saved_totals(tmp_path)["dropped_full"] == 2


def test_block_makes_the_handing_over_wait_for_room(tmp_path: Path) -> None:
    log = capture(tmp_path, buffer_records=2, overflow="block")
    log.recover()
    log.put(record(0), None)
    log.put(record(1), None)
    third = threading.Thread(target=log.put, args=(record(2), None))
    third.start()
    third.join(0.3)
    assert third.is_alive()  # waiting for room
    log.start()
    third.join(5)
    assert not third.is_alive()
    log.close()
    assert log.stats.snapshot()["dropped_full"] == 0
    assert len(table(tmp_path)["request_id"]) == 3


def test_async_records_are_on_disk_within_the_flush_interval(tmp_path: Path) -> None:
    log = capture(tmp_path, flush_s=0.05)
    log.recover()
    log.start()
    log.put(record(0), None)
    deadline = time.monotonic() + 2
    while log.stats.snapshot()["written"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.stats.snapshot()["written"] == 1
    assert sum(path.stat().st_size for path in (tmp_path / WAL_DIR).glob("*.log")) > 0
    log.close()


def test_leftover_segments_are_recovered_with_damage_skipped(tmp_path: Path) -> None:
    wal = tmp_path / WAL_DIR
    wal.mkdir()
    frames = [frame(encode(record(i, rows=2))) for i in range(4)]
    damaged = bytearray(frames[1])
    damaged[30] ^= 0xFF
    (wal / "1-dead-000001.log").write_bytes(frames[0] + bytes(damaged) + frames[2] + frames[3][:-5])
    log = capture(tmp_path)
    log.recover()
    assert list(wal.glob("*.log")) == []
    assert log.stats.snapshot()["skipped"] == 2
    rows = table(tmp_path)
    assert rows["request_id"] == ["r0", "r0", "r2", "r2"]
    assert rows["row"] == [0, 1, 0, 1]
    # Features by name, one value per sample; the 1-D output one scalar per row.
    sent = [record(0, 2), record(2, 2)]
    expected = np.concatenate([np.frombuffer(r.inputs["x"].data, "<f4").reshape(2, 3) for r in sent])
    assert np.array_equal(np.array([rows[name] for name in FEATURES], dtype="<f4").T, expected)
    assert rows["output.y"] == [0, 0, 0, 0]
    hive = pads.dataset(str(tmp_path), partitioning="hive").to_table()
    assert hive.num_rows == 4 and set(hive.column("model").to_pylist()) == {"m"}
    assert [p.relative_to(tmp_path).parts[:3] for p in parquet_files(tmp_path)] == [
        ("model=m", "version=1", "date=2026-01-01")
    ]


def test_a_segment_being_written_is_not_taken_by_another_process(tmp_path: Path) -> None:
    writer = capture(tmp_path, durability="sync")
    writer.recover()
    writer.start()
    commit = Commit()
    writer.put(record(0), commit)
    assert commit.wait(5)
    other = capture(tmp_path)
    other.recover()  # the open segment is locked: left alone
    assert len(list((tmp_path / WAL_DIR).glob("*.log"))) == 1
    writer.close()
    assert table(tmp_path)["request_id"] == ["r0"]


def test_a_budget_deletes_the_oldest_files_and_drops_what_cannot_fit(tmp_path: Path) -> None:
    log = capture(tmp_path, durability="sync", max_bytes=BUDGET, segment_age_s=0.0)
    log.recover()
    log.start()
    for index in range(40):
        commit = Commit()
        log.put(record(index), commit)
        commit.wait(5)
        log._compact_all()  # as the compactor thread would, made deterministic
    log.close()
    counts = log.stats.snapshot()
    assert counts["deleted_files"] > 0
    kept_files = [path for path in tmp_path.rglob("*") if path.is_file() and "_stats" not in str(path)]
    assert sum(path.stat().st_size for path in kept_files) <= BUDGET
    kept = table(tmp_path)["request_id"]
    assert "r39" in kept and "r0" not in kept


def test_a_write_error_is_counted_and_writing_resumes(tmp_path: Path) -> None:
    log = capture(tmp_path, durability="sync")
    log.recover()
    log.start()
    wal = tmp_path / WAL_DIR
    commit = Commit()
    log.put(record(0), commit)
    assert commit.wait(5)
    # The directory turns into a file: every write fails (root ignores permissions, so no chmod).
    for path in wal.iterdir():
        path.unlink()
    wal.rmdir()
    wal.write_text("not a directory")
    log._close_segment()
    failing = Commit()
    log.put(record(1), failing)
    assert failing.wait(5) is False
    assert log.stats.snapshot()["failed"] == 1
    wal.unlink()
    back = Commit()
    log.put(record(2), back)
    assert back.wait(5)
    log.close()
    assert table(tmp_path)["request_id"] == ["r2"]


def test_inputs_that_failed_their_checks_are_kept_whole_beside_checked_ones(tmp_path: Path) -> None:
    log = capture(tmp_path)
    log.recover()
    log.start()
    log.put(record(0), None)
    sent = RawTensor("BOOL", (1, 5), bytes(5))  # a datatype and width the model does not take
    failed = CaptureRecord("bad", record(0).time_unix_ns, "m", "1", "stable", 0, "no-canary", "INVALID_ARGUMENT",
                           0.1, 1, {"x": sent}, {}, inputs_checked=False)  # fmt: skip
    log.put(failed, None)
    log.close()
    rows = {row["request_id"]: row for row in open_dataset(tmp_path).to_table().to_pylist()}
    assert rows["bad"]["x"] == bytes(5) and rows["bad"]["x.shape"] == [1, 5] and rows["bad"]["a"] is None
    assert rows["r0"]["x"] is None and rows["r0"]["a"] is not None


def test_a_segment_no_table_can_hold_is_set_aside_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal = tmp_path / WAL_DIR
    wal.mkdir()
    (wal / "1-dead-000001.log").write_bytes(frame(encode(record(0))))

    def broken(*args: object) -> None:
        raise ValueError("a bug")

    monkeypatch.setattr("gateway.capture.writer.write_partitions", broken)
    log = capture(tmp_path)
    log.recover()
    assert [path.name for path in wal.iterdir()] == ["1-dead-000001.log.unreadable"]


@pytest.mark.parametrize("datatype", [name for name in DATATYPES if name != BYTES])
def test_every_numeric_datatype_becomes_typed_feature_columns(tmp_path: Path, datatype: str) -> None:
    values = np.arange(6).reshape(2, 3).astype(numpy_dtype(datatype))
    sent = CaptureRecord("r", record(0).time_unix_ns, "m", "1", "stable", 0, "no-canary", "OK", 0.1, 2,
                         {"x": RawTensor(datatype, (2, 3), values.tobytes())}, {})  # fmt: skip
    table = table_of([sent], None)
    kept = np.column_stack([table.column(f"x_{index}").to_numpy(zero_copy_only=False) for index in range(3)])
    assert kept.dtype == values.dtype and kept.tobytes() == values.tobytes()
    pq.write_table(table, tmp_path / "one.parquet", compression="zstd")  # Parquet takes every one of them
    assert pq.read_table(tmp_path / "one.parquet").num_rows == 2


def test_bytes_tensors_are_kept_per_row_with_their_shape() -> None:
    rows = [encode_bytes(np.array([b"a", b"bc"], dtype=object)), encode_bytes(np.array([b"", b"def"], dtype=object))]
    sent = CaptureRecord("r", 0, "m", "1", "stable", 0, "no-canary", "OK", 0.1, 2,
                         {"s": RawTensor(BYTES, (2, 2), b"".join(rows))}, {})  # fmt: skip
    table = table_of([sent], None).to_pydict()
    assert table["s"] == rows and table["s.shape"] == [[2], [2]]


def test_an_unusable_directory_at_start_is_logged_and_counted_not_raised(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where the capture directory should be")
    log = capture(tmp_path / "taken")
    log.recover()
    log.start()
    commit = Commit()
    log.put(record(0), commit)
    assert commit.wait(5) is False
    log.close()
    assert log.stats.snapshot()["failed"] == 1


def test_a_process_killed_while_capturing_is_found_once_and_counted(tmp_path: Path) -> None:
    first = capture(tmp_path)
    first.recover()
    first.start()  # its counters now say running; it is never closed, as a SIGKILL would leave it
    dead_pid_file = first.stats.path.with_name("4194303-deadbeef.json")  # above any pid Linux hands out
    first.stats.path.rename(dead_pid_file)
    second = capture(tmp_path)
    second.recover()
    assert second.stats.snapshot()["unclean_stops"] == 1
    third = capture(tmp_path)
    third.recover()  # reported once (the second marked it stopped); the first, alive and running, never
    assert third.stats.snapshot()["unclean_stops"] == 0
    assert saved_totals(tmp_path)["unclean_stops"] == 1
    first.close()
