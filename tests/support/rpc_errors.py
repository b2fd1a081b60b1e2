"""Assertions that a call fails with a given gRPC status and a message holding given fragments, for
calls on the raw stubs (``grpc.RpcError``) and on tritonclient (``InferenceServerException``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from tritonclient.utils import InferenceServerException


def _assert_holds(message: str, fragments: tuple[str, ...]) -> None:
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def expect_rpc_error(code: grpc.StatusCode, call: Callable[[], object], *fragments: str) -> str:
    """Run ``call`` on a raw stub, which must fail with ``code`` and a message holding every fragment;
    the message."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error: Any = raised.value  # the error a stub raises is also a grpc.Call, with code() and details()
    message = str(error.details())
    assert error.code() == code, message
    _assert_holds(message, fragments)
    return message


def expect_client_error(code: grpc.StatusCode, call: Callable[[], object], *fragments: str) -> str:
    """Run ``call`` on a tritonclient client, which must fail with ``code`` and a message holding every
    fragment; the message."""
    with pytest.raises(InferenceServerException) as raised:
        call()
    message = str(raised.value.message())
    assert raised.value.status() == str(code), message
    _assert_holds(message, fragments)
    return message
