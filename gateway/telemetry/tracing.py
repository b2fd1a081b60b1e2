"""Traces of served requests: spans built after the fact from what the request observers are told.

A request's spans are not opened and closed around the work as it happens: the request path would
pay for every span, under every lock it holds. They are built once the request is finished, on a
thread of their own, from the timings the observers' seam already measures:

    inference.GRPCInferenceService/ModelInfer   SERVER, the whole request as the dataplane saw it
      ├── queue                                  waiting in the version's batch queue
      ├── infer                                  its batch in the runtime (the worker process)
      └── shadow                                 each shadow copy, from its send to its answer

A caller's W3C ``traceparent`` (and ``tracestate``) header continues its trace; the edge already
hands every text header to the request (``InferRequest.routing_metadata``), so nothing is read on the
request path for tracing.

Since every span is finished when it is built, it is built as what the SDK exports, a
``ReadableSpan``, with the SDK's sampler, id generator, resource and span processors: the SDK's
live ``Span`` (a lock, attribute checks and limits, a context to enter) would cost four times as
much for nothing (``benchmarks/span_building.py``). The sampler is asked once per request, for its
server span; the children follow its decision, and a request it does not sample builds nothing. A
span processor is given each span at its end (``on_end``) only: there is no live span to start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Literal

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from gateway.errors import TurnoutError
from gateway.serving.observers import Finished, Route
from gateway.telemetry.tracing_setup import RpcConventions, TracingSetup

log = logging.getLogger(__name__)

# The gRPC status of a failed request, as (code number, code name): the edge's mapping, handed in by
# the composition root so that the mapping stays in one place.
StatusOf = Callable[[TurnoutError], tuple[int, str]]

SERVICE = "inference.GRPCInferenceService"
_TRACEPARENT = "traceparent"
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_OK = Status(StatusCode.UNSET)
# Primaries whose shadow copies may still answer, and shadow answers that came before their primary
# was traced (the two reach this thread from different threads): bounded, oldest forgotten first.
_REMEMBERED_PRIMARIES = 8192
_EARLY_SHADOWS = 1024
# A request id and its model. Clients that reuse ids may see a shadow span under the wrong request of
# theirs; the seam gives every request without an id a fresh one.
_Key = tuple[str, str]
_Work = tuple[Literal["primaries", "shadows"], Sequence[Finished]]
# How often the tracing thread takes what is waiting. Waking it per request (a queue's get) cost more
# CPU than the spans at one request in flight; at 100 wake-ups a second the waking costs nothing
# measurable, and what a wake-up finds stays small (a trace reaches the exporter this much later).
_DRAIN_INTERVAL_S = 0.01
Attributes = dict[str, AttributeValue]


class TracingObserver:
    """A request observer that turns finished requests and shadow answers into spans.

    ``observe`` and ``observe_shadows`` only append their events for the tracing thread, which takes
    them every ``drain_interval_s``; past ``max_backlog`` waiting events (a batch's requests are one)
    further requests are dropped, counted (``dropped``) and logged once, rather than held: an event
    holds its request's tensors until it is traced.
    """

    def __init__(
        self,
        setup: TracingSetup,
        status_of: StatusOf,
        instrumentation_version: str = "",
        max_backlog: int = 1024,
        drain_interval_s: float = _DRAIN_INTERVAL_S,
    ) -> None:
        self._setup = setup
        self._sampler = setup.provider.sampler
        self._ids = setup.provider.id_generator
        self._resource = setup.provider.resource
        # A span's end goes straight to the one processor there usually is (every exporter has one).
        processors = setup.processors
        self._on_end = processors[0].on_end if len(processors) == 1 else setup.processor.on_end
        self._scope = InstrumentationScope("turnout", instrumentation_version)
        self._status_of = status_of
        self._conventions = setup.conventions
        self._propagator = TraceContextTextMapPropagator()
        self._rpc = {method: self._rpc_template(method) for method in _METHODS}
        self._max_backlog = max_backlog
        self.dropped = 0  # events not traced because the tracing thread was that far behind
        self._primaries: OrderedDict[_Key, SpanContext | None] = OrderedDict()  # None: not sampled
        self._early: OrderedDict[_Key, list[Finished]] = OrderedDict()
        self._drain_interval_s = drain_interval_s
        self._work: deque[_Work] = deque()  # appended and taken without a lock: deque's ends are atomic
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._work_forever, name="tracing", daemon=True)
        self._thread.start()

    def wants(self, route: Route | None) -> bool:
        """Every request: the sampler decides on the tracing thread, where its cost is off the path."""
        return True

    def observe(self, finished: Sequence[Finished]) -> None:
        self._hand_over(("primaries", finished))

    def observe_shadows(self, finished: Sequence[Finished]) -> None:
        """The shadow mirror's listener: each answered (or failed) shadow copy."""
        self._hand_over(("shadows", finished))

    def _hand_over(self, work: _Work) -> None:
        if len(self._work) >= self._max_backlog:
            if not self.dropped:
                log.warning("tracing is %d batches behind; requests are not traced until it catches up",
                            self._max_backlog)  # fmt: skip
            self.dropped += len(work[1])  # a count two threads may race on; a lost increment is harmless
            return
        self._work.append(work)

    def close(self, timeout_s: float = 5.0) -> None:
        """Trace what is waiting, then flush and stop the exporters."""
        self._closing.set()
        self._thread.join(timeout_s)
        self._setup.provider.shutdown()
        if self.dropped:
            log.warning("%d requests were not traced: the tracing thread was behind", self.dropped)

    def _work_forever(self) -> None:
        while not self._closing.wait(self._drain_interval_s):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        while self._work:
            kind, finished = self._work.popleft()
            # Let the request threads in between batches: building a batch's spans holds the GIL for
            # a millisecond or two, and a waiting thread would otherwise get it only at the switch
            # interval (5 ms).
            time.sleep(0)
            try:
                if kind == "primaries":
                    self._trace_batch(finished)
                else:
                    for item in finished:
                        self._trace_shadow(item)
            except Exception:  # a span that cannot be built must not stop the ones after it
                log.exception("tracing %d finished requests failed", len(finished))

    # --- one request -----------------------------------------------------------------------

    def _trace_batch(self, finished: Sequence[Finished]) -> None:
        # Tracing wants every request, so one call from a dispatcher holds its whole batch: the batch
        # size is their rows together. (A request that failed alone comes in a call of its own.)
        batch_rows = sum(item.rows for item in finished)
        for item in finished:
            self._trace_request(item, batch_rows)

    def _trace_request(self, item: Finished, batch_rows: int) -> None:
        route = item.route
        key = (item.request_id, route.model) if route is not None and route.shadows else None
        name = _NAMES[item.request.via_stream]
        attributes = self._rpc_attributes(item)
        parent_context = self._parent_of(item)
        parent = trace.get_current_span(parent_context).get_span_context() if parent_context is not None else None
        if parent is not None and not parent.is_valid:  # a malformed traceparent: a trace of its own
            parent = None
        trace_id = parent.trace_id if parent is not None else self._ids.generate_trace_id()
        sampled = self._sampler.should_sample(parent_context, trace_id, name, SpanKind.SERVER, attributes)
        if sampled.decision is not Decision.RECORD_AND_SAMPLE:  # no span, no children, no shadow spans either
            if key is not None:
                self._remember(key, None)
            return
        if sampled.attributes:
            attributes.update(sampled.attributes)
        server = SpanContext(trace_id, self._ids.generate_span_id(), False, _SAMPLED, sampled.trace_state)
        timings = item.timings
        start = timings.received_unix_ns
        end = start + int(timings.latency_s * 1e9)
        ran = timings.compute_s > 0
        if ran:
            attributes["turnout.batch_size"] = batch_rows
        # Only the durations are measured, from the moment the dataplane took the request; placing
        # them from that moment puts the request's checks (microseconds) inside the queue's offset.
        if ran or timings.queue_s > 0:
            queued_end = min(start + int(timings.queue_s * 1e9), end)
            self._end("queue", self._child_of(server), server, None, start, queued_end)
            if ran:
                inferred_end = min(queued_end + int(timings.compute_s * 1e9), end)
                sizes: Attributes = {"turnout.batch_size": batch_rows, "turnout.rows": item.rows}
                self._end("infer", self._child_of(server), server, sizes, queued_end, inferred_end)
        status = _OK if item.error is None else Status(StatusCode.ERROR, str(item.error))
        self._end(name, server, parent, attributes, start, end, SpanKind.SERVER, status)
        if key is not None:
            self._remember(key, server)

    def _child_of(self, parent: SpanContext) -> SpanContext:
        return SpanContext(parent.trace_id, self._ids.generate_span_id(), False, _SAMPLED, parent.trace_state)

    def _end(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: Attributes | None,
        start: int,
        end: int,
        kind: SpanKind = SpanKind.INTERNAL,
        status: Status = _OK,
    ) -> None:
        """Hand the span processors a finished span."""
        span = ReadableSpan(
            name, context, parent, self._resource, attributes, kind=kind, status=status, start_time=start,
            end_time=end, instrumentation_scope=self._scope,
        )  # fmt: skip
        self._on_end(span)

    def _parent_of(self, item: Finished) -> Context | None:
        """The caller's context when it sent a W3C ``traceparent``; None starts a trace here."""
        headers = item.request.routing_metadata
        return self._propagator.extract(headers) if _TRACEPARENT in headers else None

    def _rpc_template(self, method: str) -> Attributes:
        """The RPC attributes of a request to ``method`` that succeeded, in the conventions chosen."""
        attributes: Attributes = {}
        if self._conventions is not RpcConventions.STABLE:
            attributes |= {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method,
                           "rpc.grpc.status_code": 0}  # fmt: skip
        if self._conventions is not RpcConventions.EXPERIMENTAL:
            attributes |= {"rpc.system.name": "grpc", "rpc.method": f"{SERVICE}/{method}",
                           "rpc.response.status_code": "OK"}  # fmt: skip
        return attributes

    def _rpc_attributes(self, item: Finished) -> Attributes:
        attributes = dict(self._rpc[_method_of(item)])
        if item.error is not None:
            code, code_name = self._status_of(item.error)
            if self._conventions is not RpcConventions.STABLE:
                attributes["rpc.grpc.status_code"] = code
            if self._conventions is not RpcConventions.EXPERIMENTAL:
                attributes["rpc.response.status_code"] = attributes["error.type"] = code_name
        route = item.route
        attributes["turnout.model"] = route.model if route is not None else item.request.model_name
        attributes["turnout.request_id"] = item.request_id
        attributes["turnout.rows"] = item.rows
        if route is not None:
            attributes |= {"turnout.version": route.version, "turnout.arm": route.arm.value,
                           "turnout.generation": route.generation, "turnout.reason": route.reason.value}  # fmt: skip
        return attributes

    # --- shadow copies ---------------------------------------------------------------------

    def _remember(self, key: _Key, context: SpanContext | None) -> None:
        self._primaries[key] = context
        if len(self._primaries) > _REMEMBERED_PRIMARIES:
            self._primaries.popitem(last=False)
        for early in self._early.pop(key, ()):
            self._trace_shadow(early)

    def _trace_shadow(self, item: Finished) -> None:
        route = item.route
        assert route is not None  # the mirror reports copies of routed requests only
        key = (item.request_id, route.model)
        if key not in self._primaries:  # its primary has not been traced yet: wait for it
            self._early.setdefault(key, []).append(item)
            if len(self._early) > _EARLY_SHADOWS:
                self._early.popitem(last=False)
            return
        parent = self._primaries[key]
        if parent is None:  # its primary was not sampled
            return
        start = item.timings.received_unix_ns
        attributes: Attributes = {
            "turnout.model": route.model, "turnout.version": route.version, "turnout.arm": "shadow",
            "turnout.generation": route.generation, "turnout.request_id": item.request_id, "turnout.rows": item.rows,
        }  # fmt: skip
        end = start + int(item.timings.latency_s * 1e9)
        status = _OK if item.error is None else Status(StatusCode.ERROR, str(item.error))
        self._end("shadow", self._child_of(parent), parent, attributes, start, end, status=status)


_METHODS = ("ModelInfer", "ModelStreamInfer")
_NAMES = {False: f"{SERVICE}/ModelInfer", True: f"{SERVICE}/ModelStreamInfer"}  # by via_stream


def _method_of(item: Finished) -> str:
    return "ModelStreamInfer" if item.request.via_stream else "ModelInfer"
