"""What a runtime's failure means to a caller: the one table from runtime errors to domain errors.

A worker reports its failures as :class:`runtimes.contract.RuntimeFailure` subclasses (decoded from
its error frames by :mod:`runtimes.worker_protocol`); the serving path turns each into the domain
error the edge maps to a gRPC status.
"""

from __future__ import annotations

from gateway.errors import FailedPrecondition, Internal, TurnoutError, Unavailable
from runtimes.contract import ArtifactInvalid, HostUnavailable, InferenceFailed, RuntimeFailure

DOMAIN_ERROR_BY_FAILURE: dict[type[RuntimeFailure], type[TurnoutError]] = {
    HostUnavailable: Unavailable,  # the worker died or is restarting: worth a retry
    InferenceFailed: Internal,  # the runtime failed a valid batch
    ArtifactInvalid: FailedPrecondition,  # the model cannot be loaded as it is
    RuntimeFailure: Internal,
}


def domain_error(failure: RuntimeFailure, label: str) -> TurnoutError:
    """The domain error for ``failure`` of the model version called ``label``."""
    for kind in type(failure).__mro__:
        error = DOMAIN_ERROR_BY_FAILURE.get(kind)
        if error is not None:
            return error(f"{label}: {failure}")
    return Internal(f"{label}: {failure}")
