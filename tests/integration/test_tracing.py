"""Traces of real requests: through the in-process dataplane into the SDK's in-memory exporter, and end
to end from a gateway process to an OTLP/gRPC receiver that this test runs.

The receiver implements OpenTelemetry's trace collector service from ``opentelemetry-proto``; its
messages live in a protobuf package of their own, so they share the test process's descriptor pool
with tritonclient's without a clash (the gateway's own ``inference`` messages would not).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as triton
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.registry.repository import ModelRepository
from gateway.routing.table import RoutingTableHolder
from gateway.serving.dataplane import Dataplane
from gateway.serving.inference_types import InferRequest
from gateway.serving.model_manager import ModelManager
from gateway.serving.observers import RequestObservers
from gateway.serving.tensors import Tensor
from gateway.telemetry.tracing import TracingObserver
from gateway.telemetry.tracing_setup import TracingSetup
from gateway.wire.turnout.v1 import rollouts_pb2 as pb
from gateway.wire.turnout.v1 import rollouts_pb2_grpc as pb_grpc
from runtimes.contract import ModelHost, RuntimeOptions
from runtimes.inprocess_host import InProcessHost
from runtimes.raw_tensors import raw_of
from tests.support.gateway_process import GatewayFailedToStart, GatewayProcess
from tests.support.model_repository import copy_digits

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
SERVER = "inference.GRPCInferenceService/ModelInfer"
STREAMED = "inference.GRPCInferenceService/ModelStreamInfer"
TIMEOUT_S = 20.0


def in_process(kind: str, artifact: Path, options: RuntimeOptions, label: str) -> ModelHost:
    return InProcessHost(kind, artifact, options)


def test_concurrent_requests_through_the_dataplane_are_traced_as_one_batch(
    tmp_path: Path, digits_pixels: npt.NDArray[np.float32]
) -> None:
    copy_digits(tmp_path, versions=(1,))
    exporter = InMemorySpanExporter()
    tracing = TracingObserver(TracingSetup.of([SimpleSpanProcessor(exporter)]), lambda error: (2, "UNKNOWN"))
    observers = RequestObservers()
    observers.register(tracing)
    manager = ModelManager(
        ModelRepository(tmp_path), in_process, RuntimeOptions(1, 1), poll_interval_s=0, drain_timeout_s=5,
        on_batch_finished=observers.batch_finished,
    )  # fmt: skip
    manager.start()
    try:
        dataplane = Dataplane(manager, RoutingTableHolder(), observers)
        requests = [
            InferRequest("digits", "", f"r{index}", [Tensor("input", raw_of(digits_pixels[index : index + 1]))])
            for index in range(16)
        ]
        with futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(dataplane.infer, requests))
    finally:
        manager.close()
        tracing.close()
    spans = exporter.get_finished_spans()
    servers = {span.context.span_id: span for span in spans if span.kind is SpanKind.SERVER}
    assert len(servers) == 16 and {span.name for span in servers.values()} == {SERVER}
    children = [span for span in spans if span.kind is not SpanKind.SERVER]
    assert sorted(span.name for span in children) == ["infer"] * 16 + ["queue"] * 16
    for child in children:
        assert child.parent is not None
        server = servers[child.parent.span_id]
        assert server.start_time is not None and server.end_time is not None
        assert child.start_time is not None and child.end_time is not None
        assert server.start_time <= child.start_time <= child.end_time <= server.end_time
    sizes = [int(str((span.attributes or {})["turnout.batch_size"])) for span in servers.values()]
    assert sum(sizes) >= 16 and all(1 <= size <= 16 for size in sizes)


# --- end to end: a gateway process exporting over OTLP/gRPC ----------------------------------------


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span it is sent, as a collector would receive them."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.resources: list[dict[str, str]] = []
        self.arrived = threading.Condition()

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.arrived:
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
                    self.resources.extend(attributes for _ in scope_spans.spans)
            self.arrived.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def wait_for(self, counts: dict[str, int], timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
        """The spans by name (the last of each) once at least ``counts`` of each name arrived, or time ran out."""
        deadline = time.monotonic() + timeout_s
        with self.arrived:
            while any(Counter(span.name for span in self.spans)[name] < n for name, n in counts.items()):
                if not self.arrived.wait(max(deadline - time.monotonic(), 0)):
                    break
            return {span.name: span for span in self.spans}


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(4))
    collector = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield collector, port
    server.stop(None)


def test_a_traced_request_reaches_an_otlp_receiver_under_the_callers_trace(
    tmp_path: Path, receiver: tuple[Receiver, int], digits_pixels: npt.NDArray[np.float32]
) -> None:
    collector, port = receiver
    copy_digits(tmp_path, versions=(1, 2))
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "turnout-under-test",
    }
    with GatewayProcess(tmp_path, "--poll-interval-s", "0", env=env) as gateway:
        with grpc.insecure_channel(gateway.control_address) as channel:
            policy = pb.Policy(stable=1, shadows=[pb.Shadow(version=2, fraction=1.0)])
            pb_grpc.RolloutsStub(channel).SetPolicy(pb.SetPolicyRequest(model="digits", policy=policy), timeout=10)
        with triton.InferenceServerClient(gateway.address) as client:
            pixels = triton.InferInput("input", [1, 64], "FP32")
            pixels.set_data_from_numpy(digits_pixels[:1])
            headers = {"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01", "tracestate": "caller=kept"}
            client.infer("digits", [pixels], request_id="traced-1", headers=headers)
            # On a stream, the stream's headers are each request's parent.
            answered: queue.SimpleQueue[Any] = queue.SimpleQueue()
            client.start_stream(callback=lambda result, error: answered.put(error), headers=headers)
            client.async_stream_infer("digits", [pixels], request_id="streamed-1")
            assert answered.get(timeout=TIMEOUT_S) is None
            client.stop_stream()
        spans = collector.wait_for({SERVER: 1, STREAMED: 1, "queue": 2, "infer": 2, "shadow": 2})
        assert "Traceback" not in gateway.log()
    assert {SERVER, STREAMED, "queue", "infer", "shadow"} <= set(spans), sorted(spans)
    server = spans[SERVER]
    assert server.trace_id.hex() == TRACE_ID and server.parent_span_id.hex() == CALLER_SPAN
    assert server.trace_state == "caller=kept"
    attributes = {a.key: a.value for a in server.attributes}
    assert attributes["rpc.grpc.status_code"].int_value == 0
    assert attributes["turnout.request_id"].string_value == "traced-1"
    assert (attributes["turnout.version"].int_value, attributes["turnout.arm"].string_value) == (1, "stable")
    children = [span for span in collector.spans if span.parent_span_id == server.span_id]
    assert sorted(span.name for span in children) == ["infer", "queue", "shadow"]
    assert {span.trace_id.hex() for span in children} == {TRACE_ID}
    assert collector.resources[0]["service.name"] == "turnout-under-test"
    streamed = spans[STREAMED]
    assert streamed.trace_id.hex() == TRACE_ID and streamed.parent_span_id.hex() == CALLER_SPAN
    assert {a.key: a.value.string_value for a in streamed.attributes}["rpc.method"] == "ModelStreamInfer"


def test_a_gateway_asked_for_an_exporter_it_does_not_have_refuses_to_start(tmp_path: Path) -> None:
    copy_digits(tmp_path, versions=(1,))
    gateway = GatewayProcess(tmp_path, env={"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(GatewayFailedToStart, match="'zipkin', but no such trace exporter is installed"):
        gateway.start(timeout_s=30)
