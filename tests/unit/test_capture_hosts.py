"""Several hosts sharing one capture directory, without a gateway: file names, who compacts what, the
``host`` column, and datasets written before hosts were named (no ``host`` column, no host in names)."""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from gateway.capture.drift_report import feature_columns, open_capture
from gateway.capture.naming import WriterName, writer_of_counters, writer_of_segment
from gateway.capture.parquet import open_dataset, parquet_files
from gateway.capture.record import CaptureRecord, encode
from gateway.capture.stats import STATS_DIR, stopped_uncleanly
from gateway.capture.wal import SegmentFile, frame
from gateway.capture.writer import WAL_DIR, CaptureConfig, CaptureLog
from gateway.cli import main
from gateway.settings import load_settings
from runtimes.raw_tensors import RawTensor
from tests.support.capture_dataset import write_capture

FEATURES = ("a", "b", "c")
JAN_1_NS = 1_767_225_600 * 10**9
DEAD_PID = 4194303  # above any pid Linux hands out


def record(request_id: str) -> CaptureRecord:
    return CaptureRecord(
        request_id, JAN_1_NS, "m", "1", "stable", 3, "random", "OK", 0.5, 1,
        {"x": RawTensor("FP32", (1, 3), np.arange(3, dtype="<f4").tobytes())}, {},
    )  # fmt: skip


def capture(root: Path, host: str) -> CaptureLog:
    return CaptureLog(CaptureConfig(root, host=host), lambda model: FEATURES)


def leave_segment(root: Path, writer: WriterName, *request_ids: str) -> Path:
    """A closed segment as a process killed before compacting it leaves it."""
    (root / WAL_DIR).mkdir(parents=True, exist_ok=True)
    segment = SegmentFile(root / WAL_DIR, writer.segment(1))
    segment.append(b"".join(frame(encode(record(one))) for one in request_ids), len(request_ids))
    segment.close()
    return segment.path


def leave_counters(root: Path, writer: WriterName, running: bool, saved_s_ago: float = 0.0) -> Path:
    """A writer's counters file as it saved it last, ``saved_s_ago`` seconds ago."""
    path = root / STATS_DIR / f"{writer.stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"running": running}))
    when = time.time() - saved_s_ago
    os.utime(path, (when, when))
    return path


def hosts_by_request(root: Path) -> dict[str, str | None]:
    table = open_dataset(root).to_table(columns=["request_id", "host"])
    return dict(zip(table.column("request_id").to_pylist(), table.column("host").to_pylist(), strict=True))


# -- names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["web-1", "a", "node-7.cluster.local", "10-0-0-12", "x_y"])
def test_a_writers_names_carry_its_host_and_parse_back(host: str) -> None:
    writer = WriterName.fresh(host)
    assert writer.stem.startswith(f"{host}-") and writer.segment(7).endswith("-000007")
    assert writer_of_counters(writer.stem) == writer
    assert writer_of_segment(writer.segment(7)) == writer


def test_each_start_draws_another_run_so_a_restart_never_reuses_a_name() -> None:
    first, second = WriterName.fresh("web-1"), WriterName.fresh("web-1")
    assert first.pid == second.pid and first.run != second.run and first.segment(1) != second.segment(1)


def test_names_from_before_hosts_were_named_parse_with_no_host() -> None:
    assert writer_of_counters("1234-deadbeef") == WriterName(None, 1234, "deadbeef")
    assert writer_of_segment("1234-deadbeef-000003") == WriterName(None, 1234, "deadbeef")
    assert WriterName(None, 1234, "deadbeef").segment(3) == "1234-deadbeef-000003"


@pytest.mark.parametrize("stem", ["notes", "000001", "web-1-run-last", "web-x-run-000001", "-1"])
def test_segment_names_no_writer_makes_are_nobodys(stem: str) -> None:
    assert writer_of_segment(stem) is None


@pytest.mark.parametrize("stem", ["notes", "web-x-run", "1-", "-"])
def test_counters_names_no_writer_makes_are_nobodys(stem: str) -> None:
    assert writer_of_counters(stem) is None


# -- the setting -------------------------------------------------------------------------------------


def test_the_capture_host_defaults_to_the_machines_name_and_can_be_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURNOUT_CAPTURE_HOST", raising=False)
    assert load_settings(None, {}).capture_host == socket.gethostname()
    assert load_settings(None, {"capture_host": "edge-3.eu"}).capture_host == "edge-3.eu"
    monkeypatch.setenv("TURNOUT_CAPTURE_HOST", "from-env")
    assert load_settings(None, {}).capture_host == "from-env"


def test_a_machine_name_unfit_for_file_names_is_made_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURNOUT_CAPTURE_HOST", raising=False)
    monkeypatch.setattr(socket, "gethostname", lambda: "_odd host/name")
    assert load_settings(None, {}).capture_host == "odd-host-name"


@pytest.mark.parametrize("host", ["../up", "a/b", ".hidden", "_skipped", "-dash", "sp ace", "x" * 129])
def test_a_capture_host_unfit_for_file_names_is_refused(host: str) -> None:
    with pytest.raises(ValidationError, match="--capture-host"):
        load_settings(None, {"capture_host": host})


# -- several hosts, one directory --------------------------------------------------------------------


def test_hosts_writing_one_partition_write_files_of_their_own_with_their_host(tmp_path: Path) -> None:
    logs = {host: capture(tmp_path, host) for host in ("web-1", "web-2", "web-1.b")}
    for log in logs.values():
        log.recover()
        log.start()
    for index in range(30):
        host = list(logs)[index % 3]
        logs[host].put(record(f"{host}/{index}"), None)
    for log in logs.values():
        log.close()
    served = hosts_by_request(tmp_path)
    assert len(served) == 30 and all(request_id.split("/")[0] == host for request_id, host in served.items())
    files = parquet_files(tmp_path)
    assert {path.parent for path in files} == {tmp_path / "model=m" / "version=1" / "date=2026-01-01"}
    writers = [writer_of_segment(path.stem) for path in files]
    for path, writer in zip(files, writers, strict=True):  # each file names its writer, and holds its rows alone
        assert writer is not None and writer.host in logs
        assert set(pq.read_table(path).column("host").to_pylist()) == {writer.host}
    assert {writer.host for writer in writers if writer is not None} == set(logs)


def test_a_host_compacts_its_own_leftovers_and_leaves_other_hosts_alone(tmp_path: Path) -> None:
    theirs = leave_segment(tmp_path, WriterName("web-2", DEAD_PID, "dead"), "w2-a", "w2-b")
    leave_counters(tmp_path, WriterName("web-2", DEAD_PID, "dead"), running=True)  # saved a moment ago
    ours = leave_segment(tmp_path, WriterName("web-1", DEAD_PID, "dead"), "w1-a")
    first = capture(tmp_path, "web-1")
    first.recover()
    assert not ours.exists() and theirs.exists()
    assert hosts_by_request(tmp_path) == {"w1-a": "web-1"}
    second = capture(tmp_path, "web-2")  # web-2 started again: its leftovers are its own to compact
    second.recover()
    assert not theirs.exists()
    assert hosts_by_request(tmp_path) == {"w1-a": "web-1", "w2-a": "web-2", "w2-b": "web-2"}


def test_another_hosts_segments_are_adopted_once_its_writer_is_known_to_have_stopped(tmp_path: Path) -> None:
    silent, unknown = WriterName("web-2", DEAD_PID, "silent"), WriterName("web-3", DEAD_PID, "unknown")
    stopped = WriterName("web-4", DEAD_PID, "stopped")
    left = {
        silent: leave_segment(tmp_path, silent, "silent"),
        unknown: leave_segment(tmp_path, unknown, "unknown"),  # no counters: nobody may assume it stopped
        stopped: leave_segment(tmp_path, stopped, "stopped"),  # its last compaction failed, say
    }
    counters = leave_counters(tmp_path, silent, running=True, saved_s_ago=30)
    leave_counters(tmp_path, stopped, running=False, saved_s_ago=30)
    fresh = CaptureLog(CaptureConfig(tmp_path, host="web-1", adopt_after_s=60), lambda model: FEATURES)
    fresh.recover()
    assert [writer for writer, path in left.items() if path.exists()] == [silent, unknown]
    assert fresh.stats.snapshot()["unclean_stops"] == 0
    os.utime(counters, (time.time() - 61, time.time() - 61))  # silent for longer than adopt_after_s
    later = CaptureLog(CaptureConfig(tmp_path, host="web-1", adopt_after_s=60), lambda model: FEATURES)
    later.recover()
    assert [writer for writer, path in left.items() if path.exists()] == [unknown]
    # The records keep the host that served them, not the one that compacted them; the stop is told once.
    assert hosts_by_request(tmp_path) == {"silent": "web-2", "stopped": "web-4"}
    assert later.stats.snapshot()["unclean_stops"] == 1
    assert json.loads(counters.read_text())["running"] is False


def test_only_this_hosts_killed_processes_are_reported(tmp_path: Path) -> None:
    stats = tmp_path / STATS_DIR
    stats.mkdir()
    for writer in (WriterName("web-1", DEAD_PID, "dead"), WriterName("web-2", DEAD_PID, "dead")):
        (stats / f"{writer.stem}.json").write_text(json.dumps({"running": True}))
    (stats / f"{DEAD_PID}-deadbeef.json").write_text(json.dumps({"running": True}))  # from before hosts
    # web-2's pid means nothing on web-1: that host is alive as far as anyone here knows.
    found = stopped_uncleanly(tmp_path, stats / "web-1-1-own.json", "web-1")
    assert [path.name for path in found] == [f"{DEAD_PID}-deadbeef.json", f"web-1-{DEAD_PID}-dead.json"]


def test_files_being_written_are_listed_by_no_reader(tmp_path: Path) -> None:
    log = capture(tmp_path, "web-1")
    log.recover()
    log.start()
    log.put(record("done"), None)
    log.close()
    partition = parquet_files(tmp_path)[0].parent
    (partition / ".web-2-7-run-000001.parquet.web-2.tmp").write_bytes(b"half a Parquet file")
    assert hosts_by_request(tmp_path) == {"done": "web-1"}
    assert pads.dataset(str(tmp_path), partitioning="hive").to_table().column("request_id").to_pylist() == ["done"]


# -- datasets from before hosts were named -----------------------------------------------------------


def test_a_dataset_from_before_hosts_were_named_reads_with_a_null_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    features = {name: np.arange(4, dtype=np.float32) for name in FEATURES}
    write_capture(tmp_path, "m", 1, features, start=datetime(2026, 1, 1, tzinfo=UTC))  # the day of record()
    leave_segment(tmp_path, WriterName(None, DEAD_PID, "deadbeef"), "old-segment")  # written before, too
    log = capture(tmp_path, "web-1")
    log.recover()
    log.start()
    log.put(record("new"), None)
    log.close()
    served = hosts_by_request(tmp_path)
    assert served.pop("new") == "web-1" and served.pop("old-segment") is None
    assert len(served) == 4 and set(served.values()) == {None}
    # `turnout drift` opens a version's directory and takes its inputs, never the host, as features.
    assert feature_columns(open_capture(tmp_path, "m", 1).schema) == list(FEATURES)
    assert main(["capture", "m", "--capture-dir", str(tmp_path), "--export", str(tmp_path / "all.parquet")]) == 0
    exported = pq.read_table(tmp_path / "all.parquet")
    assert exported.num_rows == 6 and exported.column("host").null_count == 5
    capsys.readouterr()
