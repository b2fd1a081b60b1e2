"""The capture observer: what it keeps of a finished request, and which requests the sample keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.capture.observer import CaptureObserver
from gateway.capture.writer import CaptureConfig, CaptureLog
from gateway.errors import Unavailable
from gateway.routing.decide import Arm, Reason
from gateway.serving.inference_types import InferRequest
from gateway.serving.observers import Commit, Finished, Route, Timings, sample_point
from gateway.serving.tensors import Tensor
from runtimes.raw_tensors import RawTensor


def finished(request_id: str, failed: bool = False, commit: Commit | None = None) -> Finished:
    buffer = bytearray(8)
    tensor = RawTensor("FP32", (1, 2), memoryview(buffer))
    request = InferRequest("m", "", request_id, [Tensor("x", tensor)])
    route = Route("m", 2, Arm.CANARY, 4, Reason.STICKY)
    outputs = None if failed else {"y": RawTensor("FP32", (1, 2), memoryview(buffer))}
    error = Unavailable("gone") if failed else None
    timings = Timings(123, 0.004, 0.001, 0.002)
    return Finished(request, route, {"x": tensor}, 1, outputs, error, timings, commit, request_id or "assigned")


@pytest.fixture
def log(tmp_path: Path) -> CaptureLog:
    return CaptureLog(CaptureConfig(tmp_path), lambda model: None)


def test_a_record_holds_the_route_status_and_copies_of_the_bytes(log: CaptureLog) -> None:
    item = finished("id-1")
    CaptureObserver(log).observe([item])
    (record,) = log._buffer
    kept = record[0]
    assert (kept.request_id, kept.model, kept.version, kept.arm, kept.generation, kept.reason, kept.status) == (
        "id-1", "m", "2", "canary", 4, "sticky", "OK"
    )  # fmt: skip
    assert kept.latency_ms == pytest.approx(4.0) and kept.time_unix_ns == 123
    assert isinstance(kept.inputs["x"].data, bytes) and isinstance(kept.outputs["y"].data, bytes)


def test_a_request_without_an_id_is_recorded_under_the_one_the_seam_assigned(log: CaptureLog) -> None:
    CaptureObserver(log).observe([finished("")])
    assert log._buffer[0][0].request_id == "assigned"


def test_outputs_can_be_left_out(log: CaptureLog) -> None:
    CaptureObserver(log, outputs=False).observe([finished("id-1")])
    assert log._buffer[0][0].outputs == {}


def test_the_sample_keeps_the_same_ids_every_time_and_every_failure(log: CaptureLog) -> None:
    ids = [f"request-{index}" for index in range(2000)]
    observer = CaptureObserver(log, sample=0.25)
    observer.observe([finished(request_id) for request_id in ids])
    kept = [record.request_id for record, _ in log._buffer]
    assert kept == [request_id for request_id in ids if sample_point(request_id) < 0.25]
    assert 0.2 < len(kept) / len(ids) < 0.3
    assert log.stats.snapshot()["sampled_out"] == len(ids) - len(kept)
    log._buffer.clear()
    observer.observe([finished(request_id, failed=True) for request_id in ids[:50]])
    assert len(log._buffer) == 50  # failures are always kept


def test_a_request_left_out_of_the_sample_does_not_hold_its_caller(log: CaptureLog) -> None:
    commit = Commit()
    left_out = next(f"r{index}" for index in range(100) if sample_point(f"r{index}") >= 0.5)
    CaptureObserver(log, sample=0.5).observe([finished(left_out, commit=commit)])
    assert commit.kept is True and not log._buffer


def test_a_shadow_answer_is_a_record_with_arm_shadow(log: CaptureLog) -> None:
    CaptureObserver(log).observe_shadows([finished("id-7")])
    record = log._buffer[0][0]
    assert (record.request_id, record.arm) == ("id-7", "shadow")
