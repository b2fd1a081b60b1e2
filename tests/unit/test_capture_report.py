"""``turnout capture`` on a capture directory written by the capture log: summary, filters, export."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gateway.capture.record import CaptureRecord
from gateway.capture.writer import CaptureConfig, CaptureLog
from gateway.cli import main
from runtimes.raw_tensors import RawTensor

DAY_NS = 86_400 * 10**9
JAN_1 = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z


def record(index: int, version: str, time_ns: int) -> CaptureRecord:
    return CaptureRecord(
        f"r{index}", time_ns, "m", version, "stable", 0, "no-canary", "OK", 1.0, 1,
        {"x": RawTensor("FP32", (1, 2), bytes(8))}, {},
    )  # fmt: skip


@pytest.fixture
def root(tmp_path: Path) -> Path:
    log = CaptureLog(CaptureConfig(tmp_path, buffer_records=2, overflow="drop"), lambda model: None)
    log.recover()
    for index, (version, time_ns) in enumerate([("1", JAN_1), ("1", JAN_1 + DAY_NS), ("2", JAN_1 + DAY_NS)]):
        log.put(record(index, version, time_ns), None)  # the third is dropped: the buffer holds two
    log.start()
    log.put(record(3, "2", JAN_1 + DAY_NS), None)
    log.close()
    return tmp_path


def report(capsys: pytest.CaptureFixture[str], root: Path, *flags: str) -> dict[str, object]:
    assert main(["capture", "m", "--capture-dir", str(root), "--json", *flags]) == 0
    found: dict[str, object] = json.loads(capsys.readouterr().out)
    return found


def test_the_summary_counts_partitions_rows_and_drops(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = report(capsys, root)
    assert (summary["rows"], summary["requests"], summary["dropped"], summary["skipped"]) == (3, 3, 1, 0)
    partitions = summary["partitions"]
    assert isinstance(partitions, list)
    assert [(p["version"], p["date"], p["rows"]) for p in partitions] == [
        ("1", "2026-01-01", 1), ("1", "2026-01-02", 1), ("2", "2026-01-02", 1)
    ]  # fmt: skip
    assert summary["first"] == "2026-01-01T00:00:00+00:00"
    assert report(capsys, root, "--version", "2")["rows"] == 1
    assert report(capsys, root, "--since", "2026-01-02")["rows"] == 2


def test_the_text_summary_is_for_people(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capture", "m", "--capture-dir", str(root)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("m: 3 requests, 3 rows")
    assert "dropped 1" in text


def test_export_writes_the_selected_rows(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out.parquet"
    flags = ["--export", str(target), "--since", "2026-01-01T12:00", "--until", "2026-01-03"]
    assert main(["capture", "m", "--capture-dir", str(root), *flags]) == 0
    assert sorted(pq.read_table(target).column("request_id").to_pylist()) == ["r1", "r3"]


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    assert main(["capture", "m", "--capture-dir", str(tmp_path / "nothing")]) == 2
