"""Capture records and the write-ahead log: encoding round trips, damaged logs, status names, sampling."""

from __future__ import annotations

import zlib

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import errors
from gateway.capture.record import CaptureRecord, RecordCorrupt, decode, encode
from gateway.capture.wal import MAGIC, frame, read_frames
from gateway.edge.status import STATUS_BY_ERROR
from gateway.errors import STATUS_NAME_BY_ERROR, status_name
from gateway.serving.observers import sample_point
from runtimes.datatypes import DATATYPES
from runtimes.raw_tensors import RawTensor


def record(request_id: str = "r1", inputs: dict[str, RawTensor] | None = None) -> CaptureRecord:
    return CaptureRecord(
        request_id, 1_700_000_000_123_456_789, "digits", "2", "canary", 7, "random", "OK", 1.25, 1,
        inputs if inputs is not None else {"input": RawTensor("FP32", (1, 2), b"\x00\x00\x80?\x00\x00\x00@")},
        {"label": RawTensor("INT64", (1,), b"\x03" + b"\x00" * 7)},
    )  # fmt: skip


tensors = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.builds(
        RawTensor,
        st.sampled_from(DATATYPES),
        st.lists(st.integers(0, 5), max_size=3).map(tuple),
        st.binary(max_size=64),
    ),
    max_size=3,
)


@given(
    request_id=st.text(max_size=20),
    inputs=tensors,
    outputs=tensors,
    latency=st.floats(allow_nan=False, allow_infinity=False),
    generation=st.integers(0, 2**40),
)
def test_a_record_comes_back_as_it_was_encoded(
    request_id: str, inputs: dict[str, RawTensor], outputs: dict[str, RawTensor], latency: float, generation: int
) -> None:
    original = CaptureRecord(request_id, 5, "m", "1", "shadow", generation, "pin", "INTERNAL", latency, 3,
                             inputs, outputs)  # fmt: skip
    assert decode(encode(original)) == original


@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_keeps_its_bytes(datatype: str) -> None:
    data = bytes(range(24))
    original = record(inputs={"x": RawTensor(datatype, (2, 3), data)})
    assert decode(encode(original)).inputs["x"] == RawTensor(datatype, (2, 3), data)


def test_bytes_that_are_no_record_are_refused() -> None:
    with pytest.raises(RecordCorrupt):
        decode(b"\x02\x00\x00\x00{}")
    with pytest.raises(RecordCorrupt):
        decode(encode(record())[:-1])


def log_of(count: int) -> tuple[bytes, list[bytes]]:
    payloads = [encode(record(f"r{i}")) for i in range(count)]
    return b"".join(frame(payload) for payload in payloads), payloads


def test_an_intact_log_reads_back_whole() -> None:
    data, payloads = log_of(5)
    read = read_frames(data)
    assert (read.payloads, read.skipped) == (payloads, 0)


@pytest.mark.parametrize("cut", [1, 5, 11, 12, 40])
def test_a_torn_last_record_is_skipped_and_counted(cut: int) -> None:
    data, payloads = log_of(5)
    read = read_frames(data[:-cut])
    assert read.payloads == payloads[:4]
    assert read.skipped == 1


def test_a_flipped_byte_costs_exactly_its_record() -> None:
    data, payloads = log_of(5)
    second = len(frame(payloads[0]))
    for where in (second + 20, second + 6, second + 1):  # inside the payload, the length, the magic
        damaged = bytearray(data)
        damaged[where] ^= 0x40
        read = read_frames(bytes(damaged))
        assert read.payloads == [payloads[0], *payloads[2:]], where
        assert read.skipped == 1


def test_the_checksum_covers_the_length() -> None:
    payload = encode(record())
    framed = frame(payload)
    assert framed[:4] == MAGIC
    assert int.from_bytes(framed[8:12], "little") == zlib.crc32(payload, zlib.crc32(framed[4:8]))


def test_status_names_agree_with_the_edge() -> None:
    assert {kind: name for kind, name in STATUS_NAME_BY_ERROR.items()} == {
        kind: code.name for kind, code in STATUS_BY_ERROR.items()
    }
    assert status_name(None) == grpc.StatusCode.OK.name
    assert status_name(errors.TurnoutError("?")) == "UNKNOWN"


def test_the_sample_decision_depends_on_the_id_alone() -> None:
    points = [sample_point(f"request-{i}") for i in range(4000)]
    assert points == [sample_point(f"request-{i}") for i in range(4000)]
    assert all(0.0 <= point < 1.0 for point in points)
    assert 0.45 < sum(point < 0.5 for point in points) / len(points) < 0.55
