"""The inference use case: route to a version, check the request, queue it, shape the answer.

Both transports of the edge use it: unary calls block in :meth:`Dataplane.infer`, streams pass a
callback to :meth:`Dataplane.submit` and keep reading while earlier requests are in flight. The
routing decision is made once per request from the routing table snapshot it started with. Once a
request is finished, the request observers that want it are told (:mod:`gateway.serving.observers`).

Limits: requests in flight in the process (:mod:`gateway.serving.admission`), the request's deadline
carried into its queue entry so that the batcher never runs a request nobody waits for, and the
element-by-element work of typed and BYTES inputs done only after the model's checks.
"""

from __future__ import annotations

import queue
import random
import time
from collections.abc import Callable

from gateway import headers
from gateway.errors import DeadlineExceeded, Internal, InvalidArgument, TurnoutError, Unavailable, echoed
from gateway.registry.repository import version_number
from gateway.routing.decide import Arm, Reason, decide
from gateway.routing.table import RoutingTableHolder
from gateway.serving.admission import InFlightLimit
from gateway.serving.batching import NO_DEADLINE, Pending
from gateway.serving.inference_types import InferRequest, InferResponse
from gateway.serving.model_manager import ModelManager
from gateway.serving.model_version import ModelVersion
from gateway.serving.observers import RequestObservers, Route, commit_of
from gateway.serving.request_checks import checked_inputs, checked_outputs
from gateway.serving.tensors import Tensor, finished_inputs
from runtimes.raw_tensors import RawTensors

Done = Callable[[InferResponse | None, TurnoutError | None], None]


def _not_kept() -> Unavailable:
    return Unavailable("the request was answered, but its capture record could not be committed; try again")


class Dataplane:
    """Answers inference requests with whichever version routing picks."""

    def __init__(
        self, manager: ModelManager, routes: RoutingTableHolder, observers: RequestObservers, max_in_flight: int = 0
    ) -> None:
        """``max_in_flight``: requests this process serves at once, unary and streamed (0: no limit)."""
        self._manager = manager
        self._routes = routes
        self._observers = observers
        self._random = random.Random()
        self.in_flight = InFlightLimit(max_in_flight) if max_in_flight > 0 else None

    def require_model(self, name: str) -> None:
        """NOT_FOUND unless the model is known; lets the edge say so before it examines a request's inputs."""
        self._manager.record(name)

    def infer(self, request: InferRequest, timeout_s: float | None = None) -> InferResponse:
        """Serve one request, blocking the calling thread until its batch has run (or ``timeout_s`` passes)."""
        in_flight = self.in_flight
        if in_flight is not None:
            try:
                in_flight.try_enter()
            except queue.Empty:
                raise in_flight.refusal() from None
        try:
            started = time.monotonic_ns()
            version, route = self._route(request, started)
            ok = False
            try:
                pending = self._queue(version, route, request, None, started, timeout_s)
                try:
                    outputs = pending.wait(timeout_s)
                except DeadlineExceeded as error:  # the dispatcher never answers an abandoned request
                    self._observers.failed_early(request, route, error, started, pending)
                    raise
                response = self._response(version, route, request, outputs)
                commit = commit_of(pending)
                # Synchronous capture: answered once recorded, and within the caller's deadline.
                if commit is not None and not commit.wait(timeout_s):
                    raise _not_kept()
                ok = True
                return response
            finally:
                version.release()
                version.statistics.record_request(ok, time.monotonic_ns() - started)
        finally:
            if in_flight is not None:
                in_flight.leave()

    def submit(self, request: InferRequest, done: Done, timeout_s: float | None = None) -> None:
        """Queue one request; ``done`` runs on a dispatcher thread with the answer or the error.

        Errors found before queueing (too many in flight, unknown model, bad input) are raised here
        instead. A request still queued ``timeout_s`` from now is answered DEADLINE_EXCEEDED unrun.
        """
        in_flight = self.in_flight
        if in_flight is None:
            self._submit(request, done, timeout_s)
            return
        in_flight.enter()
        try:
            self._submit(request, done, timeout_s, in_flight.leave)
        except BaseException:
            in_flight.leave()
            raise

    def _submit(
        self, request: InferRequest, done: Done, timeout_s: float | None, leave: Callable[[], None] | None = None
    ) -> None:
        started = time.monotonic_ns()
        version, route = self._route(request, started)

        def finish(pending: Pending) -> None:
            if leave is not None:
                leave()
            response, error = None, pending.error
            if error is None:
                try:
                    assert pending.outputs is not None
                    response = self._response(version, route, request, pending.outputs)
                except TurnoutError as problem:
                    error = problem
            version.release()
            version.statistics.record_request(error is None, time.monotonic_ns() - started)
            commit = commit_of(pending)
            if commit is None:
                done(response, error)
            else:  # synchronous capture: the stream's answer goes out once its record is kept
                commit.then(lambda kept: done(response, error) if kept else done(None, error or _not_kept()))

        try:
            self._queue(version, route, request, finish, started, timeout_s)
        except BaseException:
            version.release()
            version.statistics.record_request(False, time.monotonic_ns() - started)
            raise

    def _route(self, request: InferRequest, started: int) -> tuple[ModelVersion, Route]:
        """Pick and acquire the version (the caller must release it); a failure is observed here."""
        try:
            return self._acquire_routed(request)
        except TurnoutError as error:
            self._observers.failed_early(request, None, error, started, None)
            raise

    def _acquire_routed(self, request: InferRequest) -> tuple[ModelVersion, Route]:
        """Pin, then the model's policy, else its highest READY version."""
        name = request.model_name
        pin = request.model_version or request.routing_metadata.get(headers.PIN, "")
        model_route = self._routes.current.routes.get(name)
        if model_route is None:
            version = self._manager.acquire(name, pin)
            arm, reason = (Arm.PINNED, Reason.PIN) if pin else (Arm.STABLE, Reason.NO_CANARY)
            return version, Route(name, version.version, arm, 0, reason)
        pinned = version_number(pin) if pin else None
        if pin and pinned is None:
            raise InvalidArgument(f"model version {echoed(pin)} is not a positive integer")
        policy = model_route.policy
        sticky = request.routing_metadata.get(policy.sticky_key) if policy.sticky_key else None
        decision = decide(policy, pinned, sticky, self._random.random(), self._random.random())
        version = self._manager.acquire(name, str(decision.version))
        route = Route(name, decision.version, decision.arm, model_route.generation, decision.reason, decision.shadows)
        return version, route

    def _queue(
        self,
        version: ModelVersion,
        route: Route,
        request: InferRequest,
        on_done: Callable[[Pending], None] | None,
        started: int,
        timeout_s: float | None,
    ) -> Pending:
        """Check the request against the version's signature and queue it; failures here are observed here."""
        pending = None
        try:
            plan = version.plan
            if plan is None:
                raise Internal(f"{version.label} is READY without a serving plan")
            inputs, rows = checked_inputs(request, plan.signature, plan.max_batch_size)
            outputs = checked_outputs(request, plan.signature)
            if request.unfinished:  # typed or BYTES inputs: their per-element work, now that they fit
                inputs = finished_inputs(request.inputs, inputs)
                request.unfinished = False
            observers = self._observers
            wanted = observers.every or observers.wants(route)  # metrics want every request: no asking
            ticket = observers.ticket(request, route, started) if wanted else None
            deadline = NO_DEADLINE if timeout_s is None else started / 1e9 + timeout_s
            pending = Pending(inputs, rows, outputs, on_done, ticket, deadline)
            version.submit(pending)
            return pending
        except TurnoutError as error:
            self._observers.failed_early(request, route, error, started, pending)
            raise

    @staticmethod
    def _response(version: ModelVersion, route: Route, request: InferRequest, outputs: RawTensors) -> InferResponse:
        assert version.plan is not None
        names = request.output_names or version.plan.output_names
        return InferResponse(
            request.model_name,
            str(route.version),
            request.id,
            [Tensor(name, outputs[name]) for name in names],
            route.arm.value,
            route.generation,
        )
