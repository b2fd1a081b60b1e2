"""Domain errors to gRPC status codes: the one place where that mapping lives."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from gateway.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TurnoutError,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[TurnoutError], grpc.StatusCode] = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Internal: grpc.StatusCode.INTERNAL,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


# The longest message a caller is sent. Messages travel in the grpc-message trailer, and a client's
# metadata limit (8 KiB by default) turns a longer one into RESOURCE_EXHAUSTED, hiding the error.
MAX_MESSAGE_CHARS = 2048


def message_of(error: TurnoutError) -> str:
    """The error's message as a caller sees it: cut to :data:`MAX_MESSAGE_CHARS`, saying so."""
    text = str(error)
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    return f"{text[: MAX_MESSAGE_CHARS - 40]}... (cut from {len(text)} characters)"


def status_of(error: TurnoutError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        code = STATUS_BY_ERROR.get(kind)
        if code is not None:
            return code
    return grpc.StatusCode.UNKNOWN


def numbered_status_of(error: TurnoutError) -> tuple[int, str]:
    """The status an error becomes, as its number and name (``3, "INVALID_ARGUMENT"``), for telemetry."""
    code = status_of(error)
    return code.value[0], code.name


F = TypeVar("F", bound=Callable[..., Any])


def maps_errors(method: F) -> F:
    """Decorate a unary servicer method: a TurnoutError becomes its status and message."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except TurnoutError as error:
            code = status_of(error)
            if code is grpc.StatusCode.INTERNAL:
                log.error("%s failed: %s", method.__name__, error)
            context.abort(code, message_of(error))

    return wrapper  # type: ignore[return-value]
