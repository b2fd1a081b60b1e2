"""The tracing observer: finished requests and shadow answers become spans in the SDK's in-memory exporter.

Events are built by hand, as the request observers' seam hands them over; the spans are what the SDK
would export: names, kinds, parents, attributes, times and status.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler
from opentelemetry.trace import SpanKind, StatusCode

from gateway.errors import InvalidArgument, TurnoutError, Unavailable
from gateway.routing.decide import Arm, Reason
from gateway.serving.inference_types import InferRequest
from gateway.serving.observers import Finished, Route, Timings
from gateway.telemetry.tracing import TracingObserver
from gateway.telemetry.tracing_setup import RpcConventions, TracingSetup

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
SERVER = "inference.GRPCInferenceService/ModelInfer"


def status_of(error: TurnoutError) -> tuple[int, str]:
    return (3, "INVALID_ARGUMENT") if isinstance(error, InvalidArgument) else (14, "UNAVAILABLE")


class Traced:
    """A tracing observer whose spans land in memory; ``spans()`` waits for its thread to finish."""

    def __init__(
        self,
        sampler: Sampler | None = None,
        conventions: RpcConventions = RpcConventions.EXPERIMENTAL,
        max_backlog: int = 10_000,
    ) -> None:
        self.exporter = InMemorySpanExporter()
        setup = TracingSetup.of([SimpleSpanProcessor(self.exporter)], sampler, conventions=conventions)
        self.observer = TracingObserver(setup, status_of, max_backlog=max_backlog)

    def spans(self) -> dict[str, ReadableSpan]:
        self.observer.close()
        spans = self.exporter.get_finished_spans()
        by_name = {span.name: span for span in spans}
        assert len(by_name) == len(spans), [span.name for span in spans]
        return by_name


@pytest.fixture
def traced() -> Iterator[Traced]:
    traced = Traced()
    yield traced
    traced.observer.close()


def request(headers: dict[str, str] | None = None, request_id: str = "r1", stream: bool = False) -> InferRequest:
    return InferRequest("digits", "", request_id, [], routing_metadata=headers or {}, via_stream=stream)


def finished(
    item: InferRequest | None = None,
    *,
    shadows: Sequence[int] = (),
    rows: int = 2,
    error: TurnoutError | None = None,
    queue_s: float = 0.002,
    compute_s: float = 0.003,
    version: int = 2,
    request_id: str = "r1",
    received: int | None = None,
) -> Finished:
    route = Route("digits", version, Arm.CANARY, 7, Reason.RANDOM, tuple(shadows))
    timings = Timings(received or time.time_ns(), 0.010, queue_s, compute_s)
    return Finished(item or request(), route, None, rows, None, error, timings, None, request_id)


def test_an_answered_request_is_a_server_span_with_queue_and_infer_children(traced: Traced) -> None:
    traced.observer.observe([finished()])
    spans = traced.spans()
    assert set(spans) == {SERVER, "queue", "infer"}
    server, queued, inferred = spans[SERVER], spans["queue"], spans["infer"]
    assert server.kind is SpanKind.SERVER and server.parent is None
    assert server.status.status_code is StatusCode.UNSET
    for child in (queued, inferred):
        assert child.parent is not None and child.parent.span_id == server.context.span_id
        assert child.context.trace_id == server.context.trace_id
    assert server.attributes is not None and dict(server.attributes) == {
        "rpc.system": "grpc",
        "rpc.service": "inference.GRPCInferenceService",
        "rpc.method": "ModelInfer",
        "rpc.grpc.status_code": 0,
        "turnout.model": "digits",
        "turnout.version": 2,
        "turnout.arm": "canary",
        "turnout.generation": 7,
        "turnout.reason": "random",
        "turnout.request_id": "r1",
        "turnout.rows": 2,
        "turnout.batch_size": 2,
    }
    assert server.start_time is not None and server.end_time is not None
    assert server.end_time - server.start_time == 10_000_000  # the request's latency, 10 ms
    assert queued.start_time == server.start_time and queued.end_time == server.start_time + 2_000_000
    assert inferred.start_time == queued.end_time and inferred.end_time == queued.end_time + 3_000_000
    assert inferred.end_time <= server.end_time


def test_a_callers_traceparent_and_tracestate_continue_its_trace(traced: Traced) -> None:
    headers = {"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01", "tracestate": "vendor=opaque"}
    traced.observer.observe([finished(request(headers))])
    server = traced.spans()[SERVER]
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert server.parent is not None and f"{server.parent.span_id:016x}" == CALLER_SPAN and server.parent.is_remote
    assert server.context.trace_state.get("vendor") == "opaque"


def test_a_failed_request_has_an_error_status_with_its_message_and_no_children(traced: Traced) -> None:
    error = InvalidArgument("input 'x': expected shape [-1, 64], got [2, 5]")
    traced.observer.observe([finished(error=error, queue_s=0.0, compute_s=0.0)])
    spans = traced.spans()
    assert set(spans) == {SERVER}
    server = spans[SERVER]
    assert server.status.status_code is StatusCode.ERROR and server.status.description == str(error)
    assert server.attributes is not None and server.attributes["rpc.grpc.status_code"] == 3
    assert "turnout.batch_size" not in server.attributes


def test_one_call_from_a_dispatcher_is_one_batch(traced: Traced) -> None:
    traced.observer.observe([finished(rows=3, request_id="a"), finished(rows=5, request_id="b")])
    traced.observer.close()
    servers = [span for span in traced.exporter.get_finished_spans() if span.kind is SpanKind.SERVER]
    assert sorted(int(str((s.attributes or {})["turnout.rows"])) for s in servers) == [3, 5]
    assert {(s.attributes or {})["turnout.batch_size"] for s in servers} == {8}


def test_a_stream_request_is_named_for_model_stream_infer(traced: Traced) -> None:
    traced.observer.observe([finished(request(stream=True))])
    spans = traced.spans()
    assert "inference.GRPCInferenceService/ModelStreamInfer" in spans


def test_a_shadow_copy_is_a_child_of_its_primarys_server_span(traced: Traced) -> None:
    shared = request()
    traced.observer.observe([finished(shared, shadows=[3])])
    answered = time.time_ns()
    traced.observer.observe_shadows([finished(shared, version=3, received=answered)])
    spans = traced.spans()
    shadow, server = spans["shadow"], spans[SERVER]
    assert shadow.parent is not None and shadow.parent.span_id == server.context.span_id
    assert shadow.context.trace_id == server.context.trace_id
    assert shadow.attributes is not None and shadow.attributes["turnout.version"] == 3
    assert shadow.attributes["turnout.arm"] == "shadow" and shadow.start_time == answered


def test_a_shadow_answer_that_comes_before_its_primary_is_traced_once_the_primary_is(traced: Traced) -> None:
    shared = request()
    traced.observer.observe_shadows([finished(shared, version=3, error=Unavailable("no shadow answer"))])
    traced.observer.observe([finished(shared, shadows=[3])])
    spans = traced.spans()
    shadow = spans["shadow"]
    assert shadow.parent is not None and shadow.parent.span_id == spans[SERVER].context.span_id
    assert shadow.status.status_code is StatusCode.ERROR and shadow.status.description == "no shadow answer"


def test_a_request_the_sampler_declines_builds_no_span_nor_its_shadows() -> None:
    traced = Traced(sampler=ALWAYS_OFF)
    shared = request()
    traced.observer.observe([finished(shared, shadows=[3])])
    traced.observer.observe_shadows([finished(shared, version=3)])
    assert traced.spans() == {}


def test_a_caller_that_did_not_sample_its_trace_is_followed_by_a_parent_based_sampler() -> None:
    traced = Traced(sampler=ParentBased(ALWAYS_OFF))
    traced.observer.observe([finished(request({"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-00"}))])
    traced.observer.observe([finished(request({"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"}))])
    spans = traced.spans()
    assert set(spans) == {SERVER, "queue", "infer"}  # only the sampled caller's request


def test_the_stable_rpc_conventions_when_opted_in() -> None:
    traced = Traced(conventions=RpcConventions.STABLE)
    traced.observer.observe([finished(error=Unavailable("queue full"), compute_s=0.0)])
    attributes = traced.spans()[SERVER].attributes
    assert attributes is not None
    assert attributes["rpc.system.name"] == "grpc" and attributes["rpc.method"] == SERVER
    assert attributes["rpc.response.status_code"] == "UNAVAILABLE" and attributes["error.type"] == "UNAVAILABLE"
    assert "rpc.system" not in attributes and "rpc.grpc.status_code" not in attributes


def test_a_backlog_past_its_bound_is_dropped_and_counted() -> None:
    traced = Traced(max_backlog=0)  # every event finds the backlog full
    traced.observer.observe([finished(), finished(request_id="r2")])
    assert traced.spans() == {} and traced.observer.dropped == 2
