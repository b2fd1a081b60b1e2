"""The access log: one line per sampled request, written by its own thread; a full queue drops and counts."""

from __future__ import annotations

import logging
import threading

import pytest

from gateway.errors import InvalidArgument, NotFound
from gateway.logs.access import AccessLog
from gateway.routing.decide import Arm, Reason
from gateway.serving.inference_types import InferRequest
from gateway.serving.observers import Finished, Route, Timings, sample_point


class Kept(logging.Handler):
    """Keeps the records it is handed, and the threads that handed them."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.threads: set[str] = set()
        self.arrived = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.threads.add(threading.current_thread().name)
        self.arrived.set()


@pytest.fixture
def kept() -> Kept:
    return Kept()


def access_log(kept: Kept, **options: float) -> AccessLog:
    logger = logging.Logger("turnout.access.test")  # not registered: nothing else sees its lines
    logger.addHandler(kept)
    return AccessLog(logger=logger, **options)  # type: ignore[arg-type]


def finished(request_id: str, error: Exception | None = None, routed: bool = True) -> Finished:
    request = InferRequest("digits", "", request_id, [])
    route = Route("digits", 2, Arm.CANARY, 7, Reason.STICKY) if routed else None
    timings = Timings(1_796_400_000_000_000_000, 0.0042, 0.001, 0.002)
    return Finished(request, route, None, 3, None, error, timings, None, request_id)  # type: ignore[arg-type]


def fields(record: logging.LogRecord) -> dict[str, object]:
    found = record.__dict__["fields"]
    assert isinstance(found, dict)
    return found


def test_a_line_names_the_route_status_latency_and_rows(kept: Kept) -> None:
    access = access_log(kept)
    access.observe([finished("r-1")])
    assert access.drain() == 1
    (record,) = kept.records
    assert (record.name, record.levelname, record.getMessage()) == ("turnout.access.test", "INFO", "request")
    assert fields(record) == {
        "request_id": "r-1", "model": "digits", "version": "2", "arm": "canary", "generation": 7,
        "reason": "sticky", "status": "OK", "latency_ms": 4.2, "rows": 3,
    }  # fmt: skip
    # The line's time is when the request finished, not when the writer got to it.
    assert record.created == pytest.approx(1_796_400_000.0042)


def test_a_failure_has_its_status_and_error_and_one_without_a_route_its_asked_model(kept: Kept) -> None:
    access = access_log(kept)
    access.observe([finished("r-2", InvalidArgument("input 'x': expected FP32"))])
    access.observe([finished("r-3", NotFound("no"), routed=False)])
    access.drain()
    bad, unknown = (fields(record) for record in kept.records)
    assert (bad["status"], bad["error"]) == ("INVALID_ARGUMENT", "input 'x': expected FP32")
    assert (unknown["status"], unknown["model"], unknown["arm"]) == ("NOT_FOUND", "digits", "")


def test_the_sample_keeps_the_same_ids_every_time_and_every_failure(kept: Kept) -> None:
    ids = [f"request-{index}" for index in range(400)]
    access = access_log(kept, sample=0.25)
    access.observe([finished(request_id) for request_id in ids])
    access.observe([finished("failed", InvalidArgument("bad"))])
    access.drain()
    logged = [fields(record)["request_id"] for record in kept.records]
    assert logged == [request_id for request_id in ids if sample_point(request_id) < 0.25] + ["failed"]
    assert 60 < len(logged) < 140  # about a quarter


def test_a_full_queue_drops_whole_batches_and_counts_them(kept: Kept, caplog: pytest.LogCaptureFixture) -> None:
    access = access_log(kept, capacity=4)
    access.observe([finished(f"a{index}") for index in range(3)])
    access.observe([finished(f"b{index}") for index in range(2)])  # 3 + 2 > 4: dropped
    access.observe([finished("c0")])
    assert access.dropped == 2
    with caplog.at_level(logging.WARNING, "gateway.logs.access"):
        access.close()
    assert [fields(record)["request_id"] for record in kept.records] == ["a0", "a1", "a2", "c0"]
    assert "access log: 2 lines dropped in all (its queue of 4 was full)" in caplog.text


def test_lines_are_written_by_the_access_logs_own_thread(kept: Kept) -> None:
    access = access_log(kept)
    access.start()
    try:
        access.observe([finished("r-1")])
        assert kept.arrived.wait(5)
    finally:
        access.close()
    assert kept.threads == {"access-log"}
