"""``turnout.v1.Rollouts``: the control plane's gRPC face, one use case of :mod:`gateway.rollouts.control` a call.

Every call, reading or changing, passes the control gate first; the actor it names (a token's name, a
certificate's subject) is what the audit history records.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from gateway.edge.control_gate import ControlGate
from gateway.edge.rollout_codec import rollout_request_from_proto, rollout_to_proto
from gateway.edge.rollouts_codec import (
    fleet_to_proto,
    history_to_proto,
    policy_from_proto,
    policy_state_to_proto,
    shadow_figures_to_proto,
    traffic_to_proto,
    versions_to_proto,
)
from gateway.edge.status import maps_errors
from gateway.errors import InvalidArgument
from gateway.rollouts.control import PolicyView, Rollouts
from gateway.rollouts.fleet import Fleet
from gateway.rollouts.progressive import ProgressiveRollouts
from gateway.serving.model_views import TrafficView
from gateway.wire.turnout.v1 import rollouts_pb2 as pb
from gateway.wire.turnout.v1 import rollouts_pb2_grpc as pb_grpc


def _model(name: str) -> str:  # checked after the gate: an unauthenticated caller learns nothing
    if not name:
        raise InvalidArgument("model is required")
    return name


class RolloutsServicer(pb_grpc.RolloutsServicer):  # type: ignore[misc]
    def __init__(
        self,
        rollouts: Rollouts,
        traffic: Callable[[str], TrafficView],
        gate: ControlGate,
        fleet: Fleet,
        progressive: ProgressiveRollouts,
    ) -> None:
        self._rollouts = rollouts
        self._progressive = progressive
        self._fleet = fleet
        self._gate = gate
        self._traffic = traffic  # a model's last minute per arm, over every gateway process

    @maps_errors
    def GetPolicy(self, request: pb.GetPolicyRequest, context: grpc.ServicerContext) -> pb.PolicyState:
        self._gate.admit(context, "GetPolicy", request.model, request)
        return policy_state_to_proto(self._rollouts.policy(_model(request.model)))

    @maps_errors
    def SetPolicy(self, request: pb.SetPolicyRequest, context: grpc.ServicerContext) -> pb.PolicyState:
        actor = self._gate.admit(context, "SetPolicy", request.model, request)
        if not request.HasField("policy"):
            raise InvalidArgument("policy is required")
        model = _model(request.model)
        note = self._progressive.end_for_manual_change(model, actor, "policy change")
        view = self._rollouts.set_policy(model, policy_from_proto(request.policy), actor, request.reason)
        return _with_note(view, note)

    @maps_errors
    def SetCanary(self, request: pb.SetCanaryRequest, context: grpc.ServicerContext) -> pb.PolicyState:
        actor = self._gate.admit(context, "SetCanary", request.model, request)
        model = _model(request.model)
        note = self._progressive.end_for_manual_change(model, actor, "canary")
        if request.clear:
            return _with_note(self._rollouts.clear_canary(model, actor, request.reason), note)
        view = self._rollouts.set_canary(
            model, request.version, request.weight_percent, request.sticky_key, actor, request.reason
        )
        return _with_note(view, note)

    @maps_errors
    def SetShadow(self, request: pb.SetShadowRequest, context: grpc.ServicerContext) -> pb.PolicyState:
        actor = self._gate.admit(context, "SetShadow", request.model, request)
        view = self._rollouts.set_shadow(
            _model(request.model), request.version, request.fraction, actor, request.reason
        )
        return policy_state_to_proto(view)

    @maps_errors
    def Promote(self, request: pb.PromoteRequest, context: grpc.ServicerContext) -> pb.PolicyState:
        actor = self._gate.admit(context, "Promote", request.model, request)
        model = _model(request.model)
        note = self._progressive.end_for_manual_change(model, actor, "promote")
        return _with_note(self._rollouts.promote(model, actor, request.reason), note)

    @maps_errors
    def Rollback(self, request: pb.RollbackRequest, context: grpc.ServicerContext) -> pb.PolicyState:
        actor = self._gate.admit(context, "Rollback", request.model, request)
        model = _model(request.model)
        note = self._progressive.end_for_manual_change(model, actor, "rollback")
        return _with_note(self._rollouts.rollback(model, actor, request.reason), note)

    @maps_errors
    def History(self, request: pb.HistoryRequest, context: grpc.ServicerContext) -> pb.HistoryResponse:
        self._gate.admit(context, "History", request.model, request)
        model = _model(request.model)
        return history_to_proto(model, self._rollouts.history(model, request.limit))

    @maps_errors
    def ListVersions(self, request: pb.ListVersionsRequest, context: grpc.ServicerContext) -> pb.ListVersionsResponse:
        self._gate.admit(context, "ListVersions", request.model, request)
        model = _model(request.model)
        view, versions = self._rollouts.versions(model)
        return versions_to_proto(model, view, versions)

    @maps_errors
    def GetShadowComparison(
        self, request: pb.ShadowComparisonRequest, context: grpc.ServicerContext
    ) -> pb.ShadowComparisonResponse:
        self._gate.admit(context, "GetShadowComparison", request.model, request)
        model = _model(request.model)
        return shadow_figures_to_proto(model, self._rollouts.shadow_figures(model))

    @maps_errors
    def GetTraffic(self, request: pb.TrafficRequest, context: grpc.ServicerContext) -> pb.TrafficResponse:
        self._gate.admit(context, "GetTraffic", request.model, request)
        return traffic_to_proto(self._traffic(_model(request.model)))

    @maps_errors
    def GetFleet(self, request: pb.FleetRequest, context: grpc.ServicerContext) -> pb.FleetResponse:
        self._gate.admit(context, "GetFleet", "", request)
        return fleet_to_proto(self._fleet.view())

    @maps_errors
    def StartRollout(self, request: pb.StartRolloutRequest, context: grpc.ServicerContext) -> pb.RolloutState:
        actor = self._gate.admit(context, "StartRollout", request.model, request)
        _model(request.model)
        return rollout_to_proto(self._progressive.start(rollout_request_from_proto(request), actor))

    @maps_errors
    def ChangeRollout(self, request: pb.ChangeRolloutRequest, context: grpc.ServicerContext) -> pb.RolloutState:
        actor = self._gate.admit(context, "ChangeRollout", request.model, request)
        model = _model(request.model)
        if request.action == pb.ChangeRolloutRequest.PAUSE:
            return rollout_to_proto(self._progressive.pause(model, actor))
        if request.action == pb.ChangeRolloutRequest.RESUME:
            return rollout_to_proto(self._progressive.resume(model, actor))
        if request.action == pb.ChangeRolloutRequest.ABORT:
            return rollout_to_proto(self._progressive.abort(model, actor, request.reason))
        raise InvalidArgument("action is required: PAUSE, RESUME or ABORT")

    @maps_errors
    def GetRollout(self, request: pb.GetRolloutRequest, context: grpc.ServicerContext) -> pb.RolloutState:
        self._gate.admit(context, "GetRollout", request.model, request)
        return rollout_to_proto(self._progressive.rollout(_model(request.model)))


def _with_note(view: PolicyView, note: str) -> pb.PolicyState:
    state = policy_state_to_proto(view)
    state.note = note
    return state
