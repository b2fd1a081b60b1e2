"""``turnout.v1`` progressive rollout messages <-> :mod:`gateway.rollouts.progressive`'s requests and records."""

from __future__ import annotations

import json

from gateway.rollouts.progressive import DEFAULT_STEPS, RolloutRequest
from gateway.state.rollout_record import RolloutLimits, RolloutRecord
from gateway.wire.turnout.v1 import rollouts_pb2 as pb

_DEFAULT_LIMITS = RolloutLimits()


def rollout_request_from_proto(message: pb.StartRolloutRequest) -> RolloutRequest:
    """A field left at 0 takes ``turnout rollout``'s default; range checks are the use case's."""
    limits = RolloutLimits(
        alpha=message.alpha or _DEFAULT_LIMITS.alpha,
        max_error_increase=message.max_error_increase or _DEFAULT_LIMITS.max_error_increase,
        max_latency_ratio=message.max_latency_ratio or _DEFAULT_LIMITS.max_latency_ratio,
        max_divergence=message.max_divergence or None,
        min_requests=message.min_requests or _DEFAULT_LIMITS.min_requests,
    )
    return RolloutRequest(
        model=message.model,
        version=message.version,
        steps=tuple(message.steps) or DEFAULT_STEPS,
        step_s=message.step_s or 60.0,
        sticky_key=message.sticky_key,
        limits=limits,
        reason=message.reason,
    )


def rollout_to_proto(record: RolloutRecord) -> pb.RolloutState:
    limits = record.limits
    return pb.RolloutState(
        model=record.model,
        version=record.version,
        stable=record.stable,
        phase=record.phase,
        steps=list(record.steps),
        step_index=record.step_index,
        weight_percent=record.weight_percent,
        step_s=record.step_s,
        started_at_unix_s=record.started_at,
        step_started_at_unix_s=record.step_started_at,
        sticky_key=record.sticky_key,
        reason=record.reason,
        actor=record.actor,
        message=record.message,
        evidence_json=json.dumps(record.evidence) if record.evidence else "",
        alpha=limits.alpha,
        max_error_increase=limits.max_error_increase,
        max_latency_ratio=limits.max_latency_ratio,
        max_divergence=limits.max_divergence or 0.0,
        min_requests=limits.min_requests,
    )
