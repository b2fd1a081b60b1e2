"""CPU per traced request of building its spans, in-process: Turnout's way against the SDK's live spans; JSON.

The tracing observer builds each finished request's spans (server, queue, infer) as the SDK's
finished ``ReadableSpan`` and hands them to the span processor. The other way, the SDK's tracer,
opens each span and ends it (``start_span`` with explicit times, a context for the children). Both
feed the same batch span processor and in-memory exporter; each round times both over the same
events (batches of 64 finished requests, no caller's trace), interleaved, with process CPU time, and
the whole per-request path is timed too: the observers' ticket, the finished event, the hand-over
and the tracing thread's work. No sockets and no gateway, so the host's noise matters less than in
``tracing_cost.py``, which measures the same cost end to end.

    python benchmarks/span_building.py --rounds 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from memory_span_exporter import MemorySpanExporter
from opentelemetry import trace
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind
from rounds import commit_of
from run_rollouts import REPO_ROOT, median_interval, rounded

from gateway.routing.decide import Arm, Reason
from gateway.serving.inference_types import InferRequest
from gateway.serving.observers import Finished, RequestObservers, Route, Timings
from gateway.telemetry.tracing import TracingObserver
from gateway.telemetry.tracing_setup import TracingSetup

BATCH = 64
ROUTE = Route("digits", 1, Arm.STABLE, 0, Reason.NO_CANARY)


def events(batches: int) -> list[list[Finished]]:
    now = time.time_ns()
    request = InferRequest("digits", "", "", [])
    timings = Timings(now, 0.004, 0.001, 0.002)
    return [
        [Finished(request, ROUTE, None, 1, None, None, timings, None, f"{b}-{i}") for i in range(BATCH)]
        for b in range(batches)
    ]


def processor() -> BatchSpanProcessor:
    """The SDK's batch processor, with room for a whole cell's spans: none is dropped, all are exported."""
    return BatchSpanProcessor(MemorySpanExporter(), max_queue_size=1 << 20)


def tracing() -> TracingObserver:
    # A drain interval longer than any round: every span is built on this thread, where it is timed.
    return TracingObserver(TracingSetup.of([processor()]), lambda e: (2, "UNKNOWN"), drain_interval_s=3600)


def built_as_finished(batches: list[list[Finished]]) -> float:
    observer = tracing()
    started = time.process_time()
    for batch in batches:
        observer.observe(batch)
    observer._drain()
    spent = time.process_time() - started
    observer.close()
    return spent


def built_live(batches: list[list[Finished]]) -> float:
    """The same spans, opened and ended through the SDK's tracer, as instrumentation usually does."""
    setup = TracingSetup.of([processor()])
    tracer = setup.provider.get_tracer("turnout")
    started = time.process_time()
    for batch in batches:
        for item in batch:
            start = item.timings.received_unix_ns
            end = start + int(item.timings.latency_s * 1e9)
            attributes: dict[str, Any] = {
                "rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService", "rpc.method": "ModelInfer",
                "rpc.grpc.status_code": 0, "turnout.model": ROUTE.model, "turnout.request_id": item.request_id,
                "turnout.rows": item.rows, "turnout.version": ROUTE.version, "turnout.arm": ROUTE.arm.value,
                "turnout.generation": ROUTE.generation, "turnout.reason": ROUTE.reason.value,
                "turnout.batch_size": BATCH,
            }  # fmt: skip
            span = tracer.start_span("inference.GRPCInferenceService/ModelInfer", kind=SpanKind.SERVER,
                                     attributes=attributes, start_time=start)  # fmt: skip
            context = trace.set_span_in_context(span)
            queued_end = start + int(item.timings.queue_s * 1e9)
            tracer.start_span("queue", context=context, start_time=start).end(end_time=queued_end)
            tracer.start_span(
                "infer", context=context, attributes={"turnout.batch_size": BATCH, "turnout.rows": 1},
                start_time=queued_end,
            ).end(end_time=queued_end + int(item.timings.compute_s * 1e9))  # fmt: skip
            span.end(end_time=end)
    spent = time.process_time() - started
    setup.provider.shutdown()
    return spent


def whole_path(batches: list[list[Finished]]) -> float:
    """Ticket, finished event and hand-over as the dataplane and a dispatcher make them, plus the spans."""
    observer = tracing()
    observers = RequestObservers()
    observers.register(observer)
    request = InferRequest("digits", "", "", [])
    started = time.process_time()
    for _ in batches:
        finished = []
        for _ in range(BATCH):
            ticket = observers.ticket(request, ROUTE, time.monotonic_ns())
            timings = Timings(time.time_ns(), 0.004, 0.001, 0.002)
            finished.append(Finished(request, ROUTE, None, 1, None, None, timings, None, ticket.request_id))
        observers.batch_finished([], 0.0, 0.0)  # the dispatcher's call, with nothing of its own to add
        observer.observe(finished)
    observer._drain()
    spent = time.process_time() - started
    observer.close()
    return spent


WAYS: dict[str, Callable[[list[list[Finished]]], float]] = {
    "finished_spans": built_as_finished, "live_spans": built_live, "whole_path": whole_path,
}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", type=int, default=200, help=f"batches of {BATCH} requests per cell")
    args = parser.parse_args(argv)
    started = time.time()
    batches = events(args.batches)
    requests = args.batches * BATCH
    cells: dict[str, list[float]] = {way: [] for way in WAYS}
    names = list(WAYS)
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for way in names[shift:] + names[:shift]:
            cells[way].append(WAYS[way](batches) / requests * 1e6)
    ratios = [live / ours for live, ours in zip(cells["live_spans"], cells["finished_spans"], strict=True)]
    low, high = median_interval(ratios)
    median = rounded(statistics.median(ratios))
    live_over_finished = {"median_ratio": median, "interval_95": [rounded(low), rounded(high)]}
    document = {
        "command": " ".join(["python benchmarks/span_building.py", *(argv if argv is not None else sys.argv[1:])]),
        "commit": commit_of(REPO_ROOT),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "requests_per_cell": requests,
        "cpu_us_per_request": {way: rounded(statistics.median(values)) for way, values in cells.items()},
        "live_over_finished": live_over_finished,
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
