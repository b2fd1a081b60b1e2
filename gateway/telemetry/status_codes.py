"""The gRPC status name of each domain error, for metric labels, and Triton's failure reasons.

The edge maps errors to gRPC codes (``gateway.edge.status``) with grpc's own enum; metrics need only
the names, and this part imports no grpc. A unit test holds the two tables to the same answers.
"""

from __future__ import annotations

from gateway.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    TurnoutError,
    Unavailable,
)

OK = "OK"
NOT_FOUND = "NOT_FOUND"
CODE_BY_ERROR: dict[type[TurnoutError], str] = {
    NotFound: "NOT_FOUND",
    Unavailable: "UNAVAILABLE",
    InvalidArgument: "INVALID_ARGUMENT",
    ResourceExhausted: "RESOURCE_EXHAUSTED",
    FailedPrecondition: "FAILED_PRECONDITION",
    DeadlineExceeded: "DEADLINE_EXCEEDED",
    Internal: "INTERNAL",
}

# Triton's nv_inference_request_failure reasons. REJECTED: the server turned the request away
# (queue full or timed out, version not ready); CANCELED: the caller gave up (its deadline);
# BACKEND: the model's runtime failed; OTHER: anything else (a request that does not fit the model).
REASON_BY_CODE = {
    "UNAVAILABLE": "REJECTED",
    "RESOURCE_EXHAUSTED": "REJECTED",
    "DEADLINE_EXCEEDED": "CANCELED",
    "INTERNAL": "BACKEND",
}
OTHER = "OTHER"


def code_of(error: TurnoutError) -> str:
    """The gRPC status name the edge answers ``error`` with."""
    code = CODE_BY_ERROR.get(type(error))
    if code is not None:
        return code
    for kind in type(error).__mro__:
        code = CODE_BY_ERROR.get(kind)
        if code is not None:
            return code
    return "UNKNOWN"


def reason_of(code: str) -> str:
    """Triton's failure reason for a request that failed with ``code``."""
    return REASON_BY_CODE.get(code, OTHER)
