"""The inference use case: route to a version, check the request, queue it, shape the answer.

Both transports of the edge use it: unary calls block in :meth:`Dataplane.infer`, streams pass a
callback to :meth:`Dataplane.submit` and keep reading while earlier requests are in flight. The
routing decision is made once per request from the routing table snapshot it started with.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway import headers
from gateway.errors import Internal, InvalidArgument, TurnoutError
from gateway.rollouts.shadow import ShadowMirror
from gateway.routing.decide import Arm, decide
from gateway.routing.table import RoutingTableHolder
from gateway.serving.batching import Pending
from gateway.serving.inference_types import InferRequest, InferResponse
from gateway.serving.model_manager import ModelManager
from gateway.serving.model_version import ModelVersion
from gateway.serving.request_checks import checked_inputs, checked_outputs
from gateway.serving.tensors import Tensor
from runtimes.raw_tensors import RawTensors

Done = Callable[[InferResponse | None, TurnoutError | None], None]


@dataclass(frozen=True, slots=True)
class _Routed:
    version: ModelVersion  # acquired: the caller must release it
    arm: Arm
    generation: int
    shadows: tuple[int, ...]


class Dataplane:
    """Answers inference requests with whichever version routing picks."""

    def __init__(self, manager: ModelManager, routes: RoutingTableHolder, shadows: ShadowMirror) -> None:
        self._manager = manager
        self._routes = routes
        self._shadows = shadows
        self._random = random.Random()

    def infer(self, request: InferRequest, timeout_s: float | None = None) -> InferResponse:
        """Serve one request, blocking the calling thread until its batch has run."""
        started = time.perf_counter_ns()
        routed = self._route(request)
        version = routed.version
        ok = False
        try:
            pending = self._pending(routed, request, None)
            version.submit(pending)
            response = self._response(routed, request, pending.wait(timeout_s))
            ok = True
            return response
        finally:
            version.release()
            version.statistics.record_request(ok, time.perf_counter_ns() - started)

    def submit(self, request: InferRequest, done: Done) -> None:
        """Queue one request; ``done`` runs on a dispatcher thread with the answer or the error.

        Errors found before queueing (unknown model, bad input) are raised here instead.
        """
        started = time.perf_counter_ns()
        routed = self._route(request)
        version = routed.version

        def finish(pending: Pending) -> None:
            response, error = None, pending.error
            if error is None:
                try:
                    assert pending.outputs is not None
                    response = self._response(routed, request, pending.outputs)
                except TurnoutError as problem:
                    error = problem
            version.release()
            version.statistics.record_request(error is None, time.perf_counter_ns() - started)
            done(response, error)

        try:
            version.submit(self._pending(routed, request, finish))
        except BaseException:
            version.release()
            version.statistics.record_request(False, time.perf_counter_ns() - started)
            raise

    def _route(self, request: InferRequest) -> _Routed:
        """Pick and acquire the version: pin, then the model's policy, else its highest READY version."""
        pin = request.model_version or request.routing_metadata.get(headers.PIN, "")
        route = self._routes.current.routes.get(request.model_name)
        if route is None:
            version = self._manager.acquire(request.model_name, pin)
            return _Routed(version, Arm.PINNED if pin else Arm.STABLE, 0, ())
        if pin and not pin.isdigit():
            raise InvalidArgument(f"model version {pin!r} is not a positive integer")
        policy = route.policy
        sticky = request.routing_metadata.get(policy.sticky_key) if policy.sticky_key else None
        decision = decide(policy, int(pin) if pin else None, sticky, self._random.random(), self._random.random())
        version = self._manager.acquire(request.model_name, str(decision.version))
        return _Routed(version, decision.arm, route.generation, decision.shadows)

    def _pending(self, routed: _Routed, request: InferRequest, on_done: Callable[[Pending], None] | None) -> Pending:
        """The checked request, ready to queue; copies for its shadows are made once it is answered."""
        plan = routed.version.plan
        if plan is None:
            raise Internal(f"{routed.version.label} is READY without a serving plan")
        inputs, rows = checked_inputs(request, plan.signature, plan.max_batch_size)
        outputs = checked_outputs(request, plan.signature)
        pending = Pending(inputs, rows, outputs, on_done)
        if routed.shadows:
            pending.shadows = routed.shadows
            pending.mirror = self._shadows.mirror_batch
        return pending

    @staticmethod
    def _response(routed: _Routed, request: InferRequest, outputs: RawTensors) -> InferResponse:
        version = routed.version
        assert version.plan is not None
        names = request.output_names or version.plan.output_names
        return InferResponse(
            request.model_name,
            str(version.version),
            request.id,
            [Tensor(name, outputs[name]) for name in names],
            routed.arm.value,
            routed.generation,
        )
