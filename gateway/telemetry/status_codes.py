"""The gRPC status name of each domain error, for metric labels, and Triton's failure reasons.

The edge maps errors to gRPC codes (``gateway.edge.status``) with grpc's own enum; metrics need only
the names, read from :data:`gateway.errors.STATUS_NAME_BY_ERROR` (no grpc here); a unit test holds
the two tables to the same answers.
"""

from __future__ import annotations

from gateway.errors import STATUS_NAME_BY_ERROR, TurnoutError, status_name

OK = "OK"
NOT_FOUND = "NOT_FOUND"
CODE_BY_ERROR = STATUS_NAME_BY_ERROR  # one table for every part that names an outcome

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
    return status_name(error)


def reason_of(code: str) -> str:
    """Triton's failure reason for a request that failed with ``code``."""
    return REASON_BY_CODE.get(code, OTHER)
