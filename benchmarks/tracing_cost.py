"""What tracing costs the serving path: off, and every request traced to an in-memory exporter; prints JSON.

Two gateways with worker processes serve the example digits model (no policy): one without tracing
(``OTEL_TRACES_EXPORTER`` unset: no tracing observer at all), and one with every request sampled
(``OTEL_TRACES_SAMPLER=always_on``) and its spans (server, queue, infer) handed by the SDK's batch
processor to an exporter that keeps them in memory (``memory_span_exporter.py``, registered for this
gateway alone through an entry point written to a temporary directory, so the gateway chooses it by
name as it would choose ``otlp``). With ``--pin`` every gateway runs on CPU 0 and the load generator
on CPU 1. Each round loads each gateway at each concurrency (batch 1, unary), the order rotating from
round to round. Reported per concurrency: each mode's median throughput, p50/p99 latency and gateway
CPU per request, and the median over rounds of traced/off with a bootstrap 95% interval; and the
spans the traced gateway exported, read back from it when it stops.

    python benchmarks/tracing_cost.py --pin --rounds 5 --concurrency 1 64
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import rounds
from run_rollouts import Gateway

MODES = ("off", "traced")
BENCHMARKS = Path(__file__).resolve().parent


def register_memory_exporter(root: Path) -> Path:
    """A directory that, on ``PYTHONPATH``, makes ``in_memory`` a trace exporter entry point."""
    info = root / "turnout_benchmark_exporters-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: turnout-benchmark-exporters\nVersion: 0\n")
    (info / "entry_points.txt").write_text(
        "[opentelemetry_traces_exporter]\nin_memory = memory_span_exporter:MemorySpanExporter\n"
    )
    return root


def environment_of(mode: str, root: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    if mode == "off":
        return env
    path = os.pathsep.join([str(register_memory_exporter(root / "entry_points")), str(BENCHMARKS)])
    return env | {
        "PYTHONPATH": os.pathsep.join(filter(None, [path, env.get("PYTHONPATH")])),
        "OTEL_TRACES_EXPORTER": "in_memory",
        "OTEL_TRACES_SAMPLER": "always_on",
        "TURNOUT_BENCH_SPANS_FILE": str(root / "spans_exported"),
    }


def summary(cells: rounds.Cells, concurrency: int) -> dict[str, Any]:
    result = rounds.against_off(cells, concurrency, MODES, ("throughput_rps", "server_cpu_us_per_request", "p99_ms"))
    for mode in MODES:  # requests served, to compare with the spans exported
        result[mode]["requests"] = sum(int(run.get("requests", 0)) for run in cells[(mode, concurrency)])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = rounds.cost_arguments(__doc__).parse_args(argv)
    started = time.time()
    work = rounds.digits_work_directory("turnout-tracing-cost-")
    server_cpu, client_cpu = rounds.cpus_of(args.pin)
    starts = {mode: partial(Gateway, work / "models", server_cpu, env=environment_of(mode, work)) for mode in MODES}
    # Stopped at the block's end, the traced gateway flushes its spans and writes how many it exported.
    with rounds.started_gateways(starts) as gateways:
        cells = rounds.interleaved_cells(gateways, args.rounds, args.concurrency, args.duration_s, client_cpu)
    exported = work / "spans_exported"
    spans = int(exported.read_text()) if exported.exists() else None
    shutil.rmtree(work, ignore_errors=True)
    document = {
        **rounds.document_head("tracing_cost.py", argv, started, commit=True),
        "per_concurrency": {f"{c}_in_flight": summary(cells, c) for c in args.concurrency},
        "spans_exported": spans,
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
