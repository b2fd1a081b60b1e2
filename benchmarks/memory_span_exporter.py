"""A trace exporter that keeps spans in memory, for measuring what tracing costs without a collector.

Registered for the benchmark's gateway only (``tracing_cost.py`` writes an entry point for it), so
``OTEL_TRACES_EXPORTER=in_memory`` chooses it exactly as an installed exporter would be chosen. It
keeps the latest spans (a ring, as a live view of traces would, so that a long run does not grow
without end), counts every span it was given, and on shutdown writes the count to the file named by
``TURNOUT_BENCH_SPANS_FILE``.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

_KEPT = 2048  # as many as the SDK's batch processor holds by default


class MemorySpanExporter(SpanExporter):
    def __init__(self) -> None:
        self.spans: deque[ReadableSpan] = deque(maxlen=_KEPT)
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        target = os.environ.get("TURNOUT_BENCH_SPANS_FILE")
        if target:
            Path(target).write_text(str(self.exported))
