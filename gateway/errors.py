"""Domain errors. The edge maps each class to one gRPC status, in one place (``gateway.edge.status``).

::

    TurnoutError
    ├── NotFound            unknown model or version
    ├── Unavailable         version not ready or unloading, queue full or timed out, worker died,
    │                       server shutting down
    ├── InvalidArgument     request that does not fit the model (name, shape, datatype, byte count)
    ├── ResourceExhausted   request larger than a configured limit
    ├── FailedPrecondition  an operation the current state does not allow (e.g. loading a broken artifact)
    ├── DeadlineExceeded    the caller's deadline passed before the answer was ready
    ├── Internal            the runtime failed on a valid request
    ├── Unauthenticated     a control call that carries no credentials
    └── PermissionDenied    a control call whose credentials are wrong or revoked, or one made on the
                            inference port that only the control address serves
"""

from __future__ import annotations

# A caller's string echoed in an error message is cut to this many characters: a 10 KB model name
# echoed in full would overflow the client's metadata limit and turn the error into another one.
ECHO_LIMIT = 64


def echoed(text: str) -> str:
    """``repr`` of a caller's string for an error message, cut to :data:`ECHO_LIMIT` characters."""
    if len(text) <= ECHO_LIMIT:
        return repr(text)
    return f"{text[:ECHO_LIMIT]!r}... ({len(text)} characters)"


class TurnoutError(Exception):
    """Base of every error Turnout reports to a caller."""


class NotFound(TurnoutError):
    pass


class Unavailable(TurnoutError):
    pass


class InvalidArgument(TurnoutError):
    pass


class ResourceExhausted(TurnoutError):
    pass


class FailedPrecondition(TurnoutError):
    pass


class DeadlineExceeded(TurnoutError):
    pass


class Internal(TurnoutError):
    pass


class Unauthenticated(TurnoutError):
    pass


class PermissionDenied(TurnoutError):
    pass


# The gRPC status code name of each domain error. The edge owns the real mapping (gateway/edge/status.py);
# the parts that name a request's outcome (capture, the access log) may not import grpc, so they read
# these names, and a unit test holds the two tables equal.
STATUS_NAME_BY_ERROR: dict[type[TurnoutError], str] = {
    NotFound: "NOT_FOUND",
    Unavailable: "UNAVAILABLE",
    InvalidArgument: "INVALID_ARGUMENT",
    ResourceExhausted: "RESOURCE_EXHAUSTED",
    FailedPrecondition: "FAILED_PRECONDITION",
    DeadlineExceeded: "DEADLINE_EXCEEDED",
    Internal: "INTERNAL",
    Unauthenticated: "UNAUTHENTICATED",
    PermissionDenied: "PERMISSION_DENIED",
}


def status_name(error: TurnoutError | None) -> str:
    """The gRPC status code name a caller saw for ``error``: OK when there was none."""
    if error is None:
        return "OK"
    for kind in type(error).__mro__:
        name = STATUS_NAME_BY_ERROR.get(kind)
        if name is not None:
            return name
    return "UNKNOWN"
