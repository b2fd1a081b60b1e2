"""The worker protocol's messages survive the framing, and a failure comes back as its own class."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtimes.contract import (
    ArtifactInvalid,
    HostUnavailable,
    InferenceFailed,
    RuntimeFailure,
    RuntimeOptions,
    Signature,
    TensorSpec,
)
from runtimes.ipc import Frame, recv_frame, send_frame
from runtimes.worker_protocol import (
    ERROR_CODES,
    Attach,
    Kind,
    kind_name,
    load_fields,
    loaded_signature,
    raise_if_error,
    send_error,
    send_load,
    send_loaded,
)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        yield ours, theirs


class NotOurs(InferenceFailed):
    """A failure class the table does not name: it travels as its nearest ancestor's code."""


@pytest.mark.parametrize("failure", [*ERROR_CODES.values(), NotOurs])
def test_every_failure_comes_back_as_its_class(
    pair: tuple[socket.socket, socket.socket], failure: type[RuntimeFailure]
) -> None:
    ours, theirs = pair
    send_error(ours, failure("the model said no"))
    with pytest.raises(RuntimeFailure, match="the model said no") as raised:
        raise_if_error(recv_frame(theirs))
    expected = InferenceFailed if failure is NotOurs else failure
    assert type(raised.value) is expected


def test_a_bug_in_a_worker_fails_the_batch_as_an_inference_failure(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    send_error(ours, KeyError("probabilities"))
    with pytest.raises(InferenceFailed, match="KeyError: 'probabilities'"):
        raise_if_error(recv_frame(theirs))


def test_an_unknown_error_code_is_still_a_runtime_failure() -> None:
    with pytest.raises(RuntimeFailure, match="from a newer worker"):
        raise_if_error(Frame(Kind.ERROR, {"error": "teleport_failed", "message": "from a newer worker"}, {}))


def test_load_and_loaded_carry_their_fields(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    options = RuntimeOptions(2, 1, {"graph_optimization": "all"})
    send_load(ours, "onnxruntime", "/models/digits/1/model.onnx", options)
    assert load_fields(recv_frame(theirs)) == ("onnxruntime", "/models/digits/1/model.onnx", options)
    signature = Signature((TensorSpec("input", "FP32", (-1, 64)),), (TensorSpec("label", "INT64", (-1,)),), "onnx")
    send_loaded(theirs, signature)
    assert loaded_signature(recv_frame(ours)) == signature


def test_a_load_that_failed_raises_instead_of_giving_a_signature(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    send_error(ours, ArtifactInvalid("not a loadable ONNX model"))
    with pytest.raises(ArtifactInvalid):
        loaded_signature(recv_frame(theirs))


def test_an_attach_request_is_the_same_key_on_both_sides(
    tmp_path: Path, pair: tuple[socket.socket, socket.socket]
) -> None:
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"onnx")
    request = Attach.of("onnxruntime", artifact, RuntimeOptions(1, 1), "digits/1#0")
    ours, theirs = pair
    send_frame(ours, Kind.ATTACH, request.fields())
    received = Attach.from_frame(recv_frame(theirs))
    assert received == request and hash(received) == hash(request)
    assert received.runtime_options == RuntimeOptions(1, 1)


def test_frames_name_their_kind_even_an_unknown_one() -> None:
    assert kind_name(Frame(Kind.SHUTDOWN, {}, {})) == "SHUTDOWN"
    assert kind_name(Frame(99, {}, {})) == "kind 99"


def test_host_unavailable_has_a_code_of_its_own() -> None:
    assert ERROR_CODES["host_unavailable"] is HostUnavailable
