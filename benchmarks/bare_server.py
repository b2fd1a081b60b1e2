"""The transport yardstick: a bare gRPC server answering ModelInfer with a fixed digits response.

It does what any Python V2 server must do per call and nothing more: decode the request (protobuf),
answer with a correctly shaped response for the request's batch size (bytes built once per batch
size, then reused), and, on ModelStreamInfer, echo each request's id. No model runs. Its throughput
is the ceiling of Python gRPC on this machine; Turnout is measured against it in the same run.

``--flavor sync`` is ``grpc.server`` with a thread pool (what Turnout uses), ``--flavor aio`` is
``grpc.aio``. Messages come from tritonclient's generated ``service_pb2`` (the same wire as
Turnout's own stubs), so this process shares no code with the gateway it is compared to.

``--handoff`` and ``--trailers`` add to the sync flavor's unary call the two pieces of structure a
batching gateway like Turnout has by design (a hand-off to a batching thread and back; request
metadata read and routing trailers set), so a run can tell how much of the gap to the bare server
is structure and how much is the gateway's own work.

Prints ``bare: serving on HOST:PORT`` once listening; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"
OPTIONS = [
    ("grpc.max_receive_message_length", 1 << 30),
    ("grpc.max_send_message_length", 1 << 30),
    ("grpc.so_reuseport", 0),
]


class DigitsAnswers:
    """Serialized digits responses (INT64 label [b], FP32 probabilities [b, 10]), one per batch size."""

    def __init__(self, model_name: str = "digits", version: str = "1") -> None:
        self._model, self._version = model_name, version
        self._by_batch: dict[int, Any] = {}

    def response(self, request: Any) -> Any:
        batch = request.inputs[0].shape[0] if request.inputs and request.inputs[0].shape else 1
        answer = self._by_batch.get(batch)
        if answer is None:
            answer = self._by_batch[batch] = self._build(batch)
        return answer

    def _build(self, batch: int) -> Any:
        label = np.zeros(batch, dtype=np.int64)
        probabilities = np.full((batch, 10), 0.1, dtype=np.float32)
        response = pb.ModelInferResponse(model_name=self._model, model_version=self._version)
        for name, datatype, array in (("label", "INT64", label), ("probabilities", "FP32", probabilities)):
            output = response.outputs.add()
            output.name, output.datatype = name, datatype
            output.shape.extend(array.shape)
            response.raw_output_contents.append(array.tobytes())
        return response

    def unary_bytes(self, request: Any) -> bytes:
        return bytes(self.response(request).SerializeToString())

    def stream_bytes(self, request: Any) -> bytes:
        answer = pb.ModelStreamInferResponse(infer_response=self.response(request))
        answer.infer_response.id = request.id
        return bytes(answer.SerializeToString())


def _handlers(
    infer: Callable[..., Any], stream: Callable[..., Any], stream_kind: Callable[..., grpc.RpcMethodHandler]
) -> grpc.GenericRpcHandler:
    # Responses are serialized by hand (once per batch size), so the handlers return bytes.
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                infer, request_deserializer=pb.ModelInferRequest.FromString
            ),
            "ModelStreamInfer": stream_kind(stream, request_deserializer=pb.ModelInferRequest.FromString),
        },
    )


class Handoff:
    """Emulates the shape of a batching gateway with no model: each call queues a lock and blocks on
    it; one dispatcher thread takes everything queued and releases each. It isolates what handing a
    request to a batching thread and back costs in a synchronous gRPC server."""

    def __init__(self) -> None:
        self._queue: deque[threading.Lock] = deque()
        self._ready = threading.Condition(threading.Lock())
        threading.Thread(target=self._dispatch, name="dispatcher", daemon=True).start()

    def round_trip(self) -> None:
        done = threading.Lock()
        done.acquire()
        with self._ready:
            self._queue.append(done)
            self._ready.notify()
        done.acquire(timeout=30)

    def _dispatch(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                batch = list(self._queue)
                self._queue.clear()
            for done in batch:
                done.release()


# What Turnout's unary handler adds around the call itself: reading the request's text metadata and
# deadline, and three trailing metadata entries saying which version answered.
ROUTING_TRAILERS = (("turnout-version", "1"), ("turnout-arm", "stable"), ("turnout-generation", "0"))


def serve_sync(host: str, port: int, threads: int, handoff: bool = False, trailers: bool = False) -> None:
    answers = DigitsAnswers()
    batcher = Handoff() if handoff else None

    def infer(request: Any, context: grpc.ServicerContext) -> bytes:
        if trailers:
            {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
            context.time_remaining()
        if batcher is not None:
            batcher.round_trip()
        if trailers:
            context.set_trailing_metadata(ROUTING_TRAILERS)
        return answers.unary_bytes(request)

    def stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[bytes]:
        for request in requests:
            yield answers.stream_bytes(request)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=OPTIONS)
    server.add_generic_rpc_handlers((_handlers(infer, stream, grpc.stream_stream_rpc_method_handler),))
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    print(f"bare: serving on {host}:{bound}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()


async def serve_aio(host: str, port: int) -> None:
    answers = DigitsAnswers()

    async def infer(request: Any, context: grpc.aio.ServicerContext) -> bytes:
        return answers.unary_bytes(request)

    async def stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for request in requests:
            yield answers.stream_bytes(request)

    server = grpc.aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers((_handlers(infer, stream, grpc.stream_stream_rpc_method_handler),))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"bare: serving on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flavor", choices=["sync", "aio"], default="sync")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--threads", type=int, default=128, help="thread pool size of the sync flavor")
    parser.add_argument(
        "--handoff", action="store_true", help="sync, unary: hand each call to a batching thread and back (no model)"
    )
    parser.add_argument(
        "--trailers", action="store_true", help="sync, unary: read metadata and deadline, set 3 trailing metadata"
    )
    args = parser.parse_args(argv)
    if args.flavor == "sync":
        serve_sync(args.host, args.port, args.threads, args.handoff, args.trailers)
    else:
        asyncio.run(serve_aio(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
