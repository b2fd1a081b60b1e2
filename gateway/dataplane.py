"""The inference use case: pick the version, check the request, queue it, and shape the answer.

Both transports of the edge use it: unary calls block in :meth:`Dataplane.infer`, streams pass a
callback to :meth:`Dataplane.submit` and keep reading while earlier requests are in flight.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.batching import Arrays, Pending
from gateway.errors import Internal, TurnoutError
from gateway.inference_types import InferRequest, InferResponse
from gateway.model_manager import ModelManager
from gateway.model_version import ModelVersion
from gateway.request_checks import checked_inputs, checked_outputs
from gateway.tensors import Tensor

Done = Callable[[InferResponse | None, TurnoutError | None], None]


class Dataplane:
    """Answers inference requests with whichever version the manager says serves them."""

    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager

    def infer(self, request: InferRequest, timeout_s: float | None = None) -> InferResponse:
        """Serve one request, blocking the calling thread until its batch has run."""
        started = time.perf_counter_ns()
        version = self._manager.acquire(request.model_name, request.model_version)
        ok = False
        try:
            pending = self._pending(version, request, None)
            version.submit(pending)
            outputs = pending.wait(timeout_s)
            response = self._response(version, request, outputs)
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
        version = self._manager.acquire(request.model_name, request.model_version)

        def finish(pending: Pending) -> None:
            response, error = None, pending.error
            if error is None:
                try:
                    assert pending.outputs is not None
                    response = self._response(version, request, pending.outputs)
                except TurnoutError as problem:
                    error = problem
            version.release()
            version.statistics.record_request(error is None, time.perf_counter_ns() - started)
            done(response, error)

        try:
            pending = self._pending(version, request, finish)
            version.submit(pending)
        except BaseException:
            version.release()
            version.statistics.record_request(False, time.perf_counter_ns() - started)
            raise

    @staticmethod
    def _pending(version: ModelVersion, request: InferRequest, on_done: Callable[[Pending], None] | None) -> Pending:
        plan = version.plan
        if plan is None:
            raise Internal(f"{version.label} is READY without a serving plan")
        inputs, rows = checked_inputs(request, plan.signature, plan.max_batch_size)
        outputs = checked_outputs(request, plan.signature)
        return Pending(inputs, rows, outputs, on_done)

    @staticmethod
    def _response(version: ModelVersion, request: InferRequest, outputs: Arrays) -> InferResponse:
        assert version.plan is not None
        specs = {spec.name: spec for spec in version.plan.signature.outputs}
        names = request.output_names or list(specs)
        return InferResponse(
            request.model_name,
            str(version.version),
            request.id,
            [Tensor(name, specs[name].datatype, outputs[name]) for name in names],
        )
