"""Drives a V2 (Open Inference Protocol) gRPC server with many requests in flight; prints JSON.

One asyncio process per ``--processes``, each with one ``grpc.aio`` channel. The request is
serialized once and sent as bytes (the channel has no serializer), so the client spends its time on
the transport, not on protobuf. Every status is checked: a unary call's gRPC status, and on
``ModelStreamInfer`` the in-band ``error_message`` of every response. Every ``--sample-every``-th
response is decoded and its raw outputs checked for the expected byte counts.

It imports tritonclient's generated messages, never Turnout's: the two register the same protobuf
symbols and cannot share a process (see tests/support/gateway_process.py).

    python benchmarks/loadgen.py --target 127.0.0.1:8001 --model digits --batch 1 --concurrency 64 \
        --duration-s 5 --mode unary
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 1 << 30),
    ("grpc.max_send_message_length", 1 << 30),
]
# The digits example: one FP32 [batch, 64] input; INT64 label and FP32 [batch, 10] probabilities.
DIGITS_OUTPUT_ROW_BYTES = {"label": 8, "probabilities": 40}


@dataclass(frozen=True)
class Plan:
    """What one load-generating process does; picklable so it can cross to spawned processes."""

    target: str
    model: str
    model_version: str
    batch: int
    concurrency: int
    streams: int
    mode: str
    duration_s: float | None
    requests: int | None
    warmup_s: float
    timeout_s: float
    sample_every: int
    input_name: str
    features: int
    output_row_bytes: dict[str, int]
    seed: int
    tls_ca: bytes | None = None  # PEM CA certificates: a TLS channel trusting them; None: plaintext


@dataclass
class Tally:
    """What one process measured."""

    latencies_ns: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    first_error: str = ""
    sampled: int = 0
    bad_samples: int = 0
    window_start: float = math.inf
    window_end: float = 0.0

    def error(self, code: str, message: str) -> None:
        self.errors[code] += 1
        if not self.first_error:
            self.first_error = f"{code}: {message}"[:500]

    def to_json(self) -> dict[str, Any]:
        return {
            "latencies_ns": self.latencies_ns,
            "errors": dict(self.errors),
            "first_error": self.first_error,
            "sampled": self.sampled,
            "bad_samples": self.bad_samples,
            "window_start": self.window_start,
            "window_end": self.window_end,
        }


def request_bytes(plan: Plan) -> bytes:
    """One serialized ModelInferRequest with ``batch`` rows of digit-like pixels (0..16)."""
    rng = np.random.default_rng(plan.seed)
    data = rng.integers(0, 17, size=(plan.batch, plan.features)).astype(np.float32)
    request = pb.ModelInferRequest(model_name=plan.model, model_version=plan.model_version)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = plan.input_name, "FP32"
    tensor.shape.extend(data.shape)
    request.raw_input_contents.append(data.tobytes())
    return bytes(request.SerializeToString())


def with_id(payload: bytes, request_id: str) -> bytes:
    # Concatenated protobuf messages merge: appending a message holding only `id` sets the id.
    return payload + bytes(pb.ModelInferRequest(id=request_id).SerializeToString())


def output_problem(response: Any, plan: Plan) -> str:
    """Why a decoded ModelInferResponse has the wrong outputs, or "" when it is right."""
    names = [output.name for output in response.outputs]
    if names != list(plan.output_row_bytes):
        return f"outputs {names}, expected {list(plan.output_row_bytes)}"
    sizes = [len(raw) for raw in response.raw_output_contents]
    expected = [plan.batch * row for row in plan.output_row_bytes.values()]
    if sizes != expected:
        return f"raw_output_contents sizes {sizes}, expected {expected}"
    return ""


class Window:
    """The measurement window: requests started in it count, those before it are warm-up."""

    def __init__(self, plan: Plan, tally: Tally) -> None:
        self.start = time.perf_counter() + plan.warmup_s
        self.end = self.start + plan.duration_s if plan.duration_s is not None else math.inf
        self.remaining = plan.requests if plan.requests is not None else -1
        self.tally = tally

    def may_start(self, now: float) -> bool:
        """Whether another request may start now; counts it against ``--requests`` if measured."""
        if now >= self.end:
            return False
        if now < self.start or self.remaining < 0:
            return True
        if self.remaining == 0:
            return False
        self.remaining -= 1
        return True

    def record(self, started: float, ended: float) -> bool:
        """Record a finished request's latency; False when it was warm-up."""
        if started < self.start:
            return False
        tally = self.tally
        tally.latencies_ns.append(int((ended - started) * 1e9))
        tally.window_start = min(tally.window_start, started)
        tally.window_end = max(tally.window_end, ended)
        return True


async def unary_worker(call: Any, payload: bytes, plan: Plan, window: Window, counter: list[int]) -> None:
    tally = window.tally
    while window.may_start(started := time.perf_counter()):
        try:
            answer = await call(payload, timeout=plan.timeout_s)
        except grpc.aio.AioRpcError as error:
            if started >= window.start:
                tally.error(error.code().name, error.details() or "")
            continue
        ended = time.perf_counter()
        if not window.record(started, ended):
            continue
        counter[0] += 1
        if counter[0] % plan.sample_every == 0:
            check_sample(pb.ModelInferResponse.FromString(answer), plan, tally)


def check_sample(response: Any, plan: Plan, tally: Tally) -> None:
    tally.sampled += 1
    problem = output_problem(response, plan)
    if problem:
        tally.bad_samples += 1
        tally.error("BAD_OUTPUT", problem)


async def run_unary(channel: grpc.aio.Channel, plan: Plan, window: Window) -> None:
    call = channel.unary_unary(INFER_METHOD)
    payload = request_bytes(plan)
    counter = [0]
    await asyncio.gather(*(unary_worker(call, payload, plan, window, counter) for _ in range(plan.concurrency)))


async def stream_worker(channel: grpc.aio.Channel, plan: Plan, window: Window, in_flight: int, name: str) -> None:
    """One ModelStreamInfer stream keeping ``in_flight`` requests outstanding."""
    tally = window.tally
    payload = request_bytes(plan)
    call = channel.stream_stream(STREAM_METHOD)()
    slots = asyncio.Semaphore(in_flight)
    started_at: dict[str, float] = {}
    counter = 0

    async def write() -> None:
        sequence = 0
        try:
            while True:
                await slots.acquire()
                if not window.may_start(now := time.perf_counter()):
                    break
                request_id = f"{name}-{sequence}"
                sequence += 1
                started_at[request_id] = now
                await call.write(with_id(payload, request_id))
            await call.done_writing()
        except grpc.aio.AioRpcError:
            pass  # the reader sees the stream's status

    writer = asyncio.create_task(write())
    try:
        while (raw := await next_answer(call, plan.timeout_s)) is not grpc.aio.EOF:
            ended = time.perf_counter()
            answer = pb.ModelStreamInferResponse.FromString(raw)
            started = started_at.pop(answer.infer_response.id, None)
            slots.release()
            if started is None:
                tally.error("UNKNOWN_ID", f"response id {answer.infer_response.id!r} was never sent")
                continue
            if answer.error_message:
                if started >= window.start:
                    tally.error("STREAM_ERROR", answer.error_message)
                continue
            if not window.record(started, ended):
                continue
            counter += 1
            if counter % plan.sample_every == 0:
                check_sample(answer.infer_response, plan, tally)
    except grpc.aio.AioRpcError as error:
        tally.error(error.code().name, error.details() or "")
        tally.errors["LOST_ON_STREAM"] += len(started_at)
    except TimeoutError:
        tally.error("STREAM_STALLED", f"no answer for {plan.timeout_s}s with {len(started_at)} requests outstanding")
        tally.errors["LOST_ON_STREAM"] += len(started_at)
        call.cancel()
    finally:
        writer.cancel()
        slots.release()  # unblock a writer waiting for a slot


async def next_answer(call: Any, timeout_s: float) -> Any:
    """The stream's next message or EOF; TimeoutError when the server stays silent for ``timeout_s``."""
    return await asyncio.wait_for(call.read(), timeout_s)


async def run_stream(channel: grpc.aio.Channel, plan: Plan, window: Window) -> None:
    streams = max(1, min(plan.streams, plan.concurrency))
    shares = [plan.concurrency // streams + (1 if i < plan.concurrency % streams else 0) for i in range(streams)]
    await asyncio.gather(*(stream_worker(channel, plan, window, share, f"s{i}") for i, share in enumerate(shares)))


def open_channel(plan: Plan) -> grpc.aio.Channel:
    if plan.tls_ca is None:
        return grpc.aio.insecure_channel(plan.target, options=CHANNEL_OPTIONS)
    credentials = grpc.ssl_channel_credentials(root_certificates=plan.tls_ca)
    return grpc.aio.secure_channel(plan.target, credentials, options=CHANNEL_OPTIONS)


async def drive(plan: Plan, ready: Any = None) -> Tally:
    """Run one process's share of the load and return what it measured."""
    tally = Tally()
    async with open_channel(plan) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        if ready is not None:
            ready.wait()  # every process starts its warm-up together
        window = Window(plan, tally)
        await (run_unary if plan.mode == "unary" else run_stream)(channel, plan, window)
    return tally


def drive_in_child(plan: Plan, ready: Any, results: Any) -> None:
    results.put(asyncio.run(drive(plan, ready)).to_json())


def share_of(plan: Plan, index: int, processes: int) -> Plan:
    """The part of the load that process ``index`` of ``processes`` generates."""

    def split(total: int) -> int:
        return total // processes + (1 if index < total % processes else 0)

    return Plan(
        **{
            **plan.__dict__,
            "concurrency": split(plan.concurrency),
            "streams": max(1, split(plan.streams)),
            "requests": None if plan.requests is None else split(plan.requests),
            "seed": plan.seed + index,
        }
    )


def run(plan: Plan, processes: int) -> list[dict[str, Any]]:
    if processes <= 1:
        return [asyncio.run(drive(plan)).to_json()]
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(processes)
    results = context.Queue()
    children = [
        context.Process(target=drive_in_child, args=(share_of(plan, i, processes), ready, results))
        for i in range(processes)
    ]
    for child in children:
        child.start()
    tallies = [results.get() for _ in children]
    for child in children:
        child.join()
    return tallies


def percentile_ms(sorted_ns: np.ndarray[Any, Any], q: float) -> float:
    if not len(sorted_ns):
        return math.nan
    return round(float(np.percentile(sorted_ns, q)) / 1e6, 3)


def summary(plan: Plan, processes: int, tallies: Sequence[dict[str, Any]]) -> dict[str, Any]:
    latencies = np.sort(np.concatenate([np.asarray(t["latencies_ns"], dtype=np.int64) for t in tallies]))
    errors: Counter[str] = Counter()
    for tally in tallies:
        errors.update(tally["errors"])
    start = min(t["window_start"] for t in tallies)
    end = max(t["window_end"] for t in tallies)
    elapsed = end - start if end > start else math.nan
    requests = len(latencies)
    return {
        "target": plan.target,
        "model": plan.model,
        "mode": plan.mode,
        "batch": plan.batch,
        "concurrency": plan.concurrency,
        "streams": plan.streams if plan.mode == "stream" else None,
        "processes": processes,
        "elapsed_s": round(elapsed, 3),
        "requests": requests,
        "errors": dict(errors),
        "error_count": sum(errors.values()),
        "first_error": next((t["first_error"] for t in tallies if t["first_error"]), ""),
        "sampled": sum(t["sampled"] for t in tallies),
        "bad_samples": sum(t["bad_samples"] for t in tallies),
        "throughput_rps": round(requests / elapsed, 1) if requests else 0.0,
        "inferences_per_s": round(requests * plan.batch / elapsed, 1) if requests else 0.0,
        "latency_ms": {
            "p50": percentile_ms(latencies, 50),
            "p90": percentile_ms(latencies, 90),
            "p99": percentile_ms(latencies, 99),
            "mean": round(float(latencies.mean()) / 1e6, 3) if requests else math.nan,
            "max": round(float(latencies[-1]) / 1e6, 3) if requests else math.nan,
        },
    }


def parse_row_bytes(items: Sequence[str]) -> dict[str, int]:
    if not items:
        return dict(DIGITS_OUTPUT_ROW_BYTES)
    pairs = [item.split("=", 1) for item in items]
    return {name: int(size) for name, size in pairs}


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:8001", help="HOST:PORT of the server")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--model-version", default="", help='"" lets the server choose')
    parser.add_argument("--batch", type=int, default=1, help="rows per request")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight, over all processes")
    parser.add_argument("--mode", choices=["unary", "stream"], default="unary")
    parser.add_argument("--streams", type=int, default=1, help="ModelStreamInfer streams sharing --concurrency")
    parser.add_argument("--processes", type=int, default=1, help="load-generating processes (asyncio each)")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--duration-s", type=float, default=None, help="measure for this long (default 5)")
    amount.add_argument("--requests", type=int, default=None, help="measure this many requests instead")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="unmeasured load before the window")
    parser.add_argument(
        "--timeout-s", type=float, default=10.0, help="deadline of each unary call; longest silence on a stream"
    )
    parser.add_argument("--sample-every", type=int, default=100, help="decode and check every Nth response")
    parser.add_argument(
        "--tls-ca-file", type=Path, default=None, help="PEM CA of the server's certificate: TLS (default: plaintext)"
    )
    parser.add_argument("--input-name", default="input")
    parser.add_argument("--features", type=int, default=64, help="FP32 values per row")
    parser.add_argument(
        "--output-row-bytes",
        action="append",
        default=[],
        metavar="NAME=BYTES",
        help="expected outputs in order and their bytes per row (default: digits' label=8 probabilities=40)",
    )
    args = parser.parse_args(argv)
    if args.duration_s is None and args.requests is None:
        args.duration_s = 5.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(argv)
    plan = Plan(
        target=args.target,
        model=args.model,
        model_version=args.model_version,
        batch=args.batch,
        concurrency=args.concurrency,
        streams=args.streams,
        mode=args.mode,
        duration_s=args.duration_s,
        requests=args.requests,
        warmup_s=args.warmup_s,
        timeout_s=args.timeout_s,
        sample_every=max(1, args.sample_every),
        input_name=args.input_name,
        features=args.features,
        output_row_bytes=parse_row_bytes(args.output_row_bytes),
        seed=0,
        tls_ca=args.tls_ca_file.read_bytes() if args.tls_ca_file is not None else None,
    )
    processes = max(1, min(args.processes, args.concurrency))
    print(json.dumps(summary(plan, processes, run(plan, processes)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
