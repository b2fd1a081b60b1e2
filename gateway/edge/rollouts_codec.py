"""``turnout.v1`` messages <-> the rollout domain (policies, views, history, shadow figures, arm traffic)."""

from __future__ import annotations

from gateway.rollouts.control import PolicyView, VersionView
from gateway.rollouts.fleet import FleetView
from gateway.rollouts.shadow import ShadowFigures
from gateway.routing.policy import Canary, Policy, Shadow
from gateway.serving.model_views import TrafficView
from gateway.state.store import PolicyChange, RefusedCall
from gateway.wire.turnout.v1 import rollouts_pb2 as pb


def policy_to_proto(policy: Policy) -> pb.Policy:
    message = pb.Policy(
        stable=policy.stable,
        shadows=[pb.Shadow(version=s.version, fraction=s.fraction) for s in policy.shadows],
        sticky_key=policy.sticky_key or "",
    )
    if policy.canary is not None:
        message.canary.CopyFrom(pb.Canary(version=policy.canary.version, weight_bp=policy.canary.weight_bp))
    return message


def policy_from_proto(message: pb.Policy) -> Policy:
    """The domain policy; validation is the use case's job (it names the fault)."""
    canary = Canary(message.canary.version, message.canary.weight_bp) if message.HasField("canary") else None
    return Policy(
        stable=message.stable,
        canary=canary,
        shadows=tuple(Shadow(s.version, s.fraction) for s in message.shadows),
        sticky_key=message.sticky_key or None,
    )


def policy_state_to_proto(view: PolicyView) -> pb.PolicyState:
    return pb.PolicyState(
        model=view.model,
        policy=policy_to_proto(view.policy),
        generation=view.generation,
        explicit=view.explicit,
        applied_by=list(view.applied_by),
    )


def history_to_proto(model: str, changes: list[PolicyChange | RefusedCall]) -> pb.HistoryResponse:
    entries = []
    for change in changes:
        if isinstance(change, RefusedCall):  # no generation, no policies: the call changed nothing
            entries.append(
                pb.PolicyChange(
                    at_unix_ms=round(change.at * 1000),
                    actor=change.actor,
                    action=f"refused {change.action}",
                    reason=change.detail,
                )
            )
            continue
        entry = pb.PolicyChange(
            generation=change.generation,
            at_unix_ms=round(change.at * 1000),
            actor=change.actor,
            action=change.action,
            reason=change.reason,
            after=policy_to_proto(change.after),
        )
        if change.before is not None:
            entry.before.CopyFrom(policy_to_proto(change.before))
        entries.append(entry)
    return pb.HistoryResponse(model=model, changes=entries)


def versions_to_proto(model: str, view: PolicyView | None, versions: list[VersionView]) -> pb.ListVersionsResponse:
    return pb.ListVersionsResponse(
        model=model,
        generation=view.generation if view is not None else 0,
        versions=[
            pb.VersionInfo(
                version=v.version, state=v.state, reason=v.reason, artifact_sha256=v.sha256, role=v.role
            )
            for v in versions
        ],
    )


def shadow_figures_to_proto(model: str, figures: list[ShadowFigures]) -> pb.ShadowComparisonResponse:
    items = []
    for f in figures:
        with f.lock:
            items.append(
                pb.ShadowFigures(
                    primary_version=f.primary_version,
                    shadow_version=f.shadow_version,
                    mirrored=f.mirrored,
                    compared=f.compared,
                    failed=f.failed,
                    dropped=f.dropped,
                    paused=f.paused,
                    top1_agreed=f.top1_agreed,
                    top1_rows=f.top1_rows,
                    mean_shadow_latency_ms=(f.latency_sum_s / f.compared * 1000) if f.compared else 0.0,
                    outputs=[
                        pb.OutputDivergence(
                            output=name,
                            max_abs_diff=d.max_abs_diff,
                            mean_max_abs_diff=d.sum_max_abs_diff / d.compared if d.compared else 0.0,
                            equal_elements=d.equal_elements,
                            elements=d.elements,
                        )
                        for name, d in sorted(f.outputs.items())
                    ],
                )
            )
    return pb.ShadowComparisonResponse(model=model, figures=items)


def traffic_to_proto(view: TrafficView) -> pb.TrafficResponse:
    return pb.TrafficResponse(
        model=view.model,
        window_s=view.window_s,
        processes=view.processes,
        kept=view.kept,
        arms=[
            pb.ArmTraffic(
                version=arm.version,
                arm=arm.arm,
                requests=arm.requests,
                errors=arm.errors,
                requests_per_s=arm.requests_per_s,
                error_rate=arm.error_rate,
                p50_ms=(arm.p50_s or 0.0) * 1e3,
                p99_ms=(arm.p99_s or 0.0) * 1e3,
            )
            for arm in view.arms
        ],
    )


def fleet_to_proto(view: FleetView) -> pb.FleetResponse:
    return pb.FleetResponse(
        generation=view.generation,
        liveness_s=view.liveness_s,
        processes=[
            pb.GatewayProcess(
                host=p.report.host,
                process_id=p.report.process_id,
                pid=p.report.pid,
                applied_generation=p.report.applied_generation,
                last_heartbeat_unix_ms=round(p.report.seen_at * 1000),
                live=p.live,
            )
            for p in view.processes
        ],
    )
