"""The control plane's door at the edge: reads a call's credentials off gRPC (metadata, the TLS peer)
and lets :mod:`gateway.rollouts.control_access` decide; a refusal is recorded, then raised as the
domain error that :mod:`gateway.edge.status` maps to UNAUTHENTICATED or PERMISSION_DENIED."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import text_format

from gateway.rollouts.control_access import ControlAccess, Presented, Refused
from gateway.rollouts.control_refusals import RefusedCalls

AUTHORIZATION = "authorization"
# Set by grpc on a TLS connection whose client certificate was verified.
_SUBJECT = "x509_subject"
# The calls the restricted model-repository header may admit (not RepositoryIndex, which needs no credentials).
_LOAD_AND_UNLOAD = frozenset({"RepositoryModelLoad", "RepositoryModelUnload"})


def peer_host(peer: str) -> str:
    """``ipv4:127.0.0.1:5000`` -> ``127.0.0.1``; ``ipv6:[::1]:5000`` -> ``::1``; else what came."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0].strip("[]")
    return kind or "unknown"


def certificate_subject(context: grpc.ServicerContext) -> str | None:
    subjects = (context.auth_context() or {}).get(_SUBJECT) or []
    return subjects[0].decode(errors="replace") if subjects else None


class ControlGate:
    """Admits control calls on one listener: the control address, or the inference port."""

    def __init__(self, access: ControlAccess, refusals: RefusedCalls, *, control_listener: bool) -> None:
        self._access = access
        self._refusals = refusals
        self._control_listener = control_listener

    def admit(self, context: grpc.ServicerContext, method: str, model: str, request: Any) -> str:
        """The call's actor for the audit history; raises Unauthenticated or PermissionDenied."""
        metadata = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
        header = self._access.header_key
        presented = Presented(
            authorization=metadata.get(AUTHORIZATION),
            restricted_header=metadata.get(header) if header is not None else None,
            certificate_subject=certificate_subject(context) if self._control_listener else None,
            peer_host=peer_host(context.peer() or ""),
        )
        try:
            return self._access.admit(
                presented, repository=method in _LOAD_AND_UNLOAD, control_listener=self._control_listener
            )
        except Refused as refused:
            detail = f"{method} {{{text_format.MessageToString(request, as_one_line=True)}}}"
            self._refusals.record(model, method, detail, refused.refusal)
            raise refused.refusal.error() from None
