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
is structure and how much is the gateway's own work. ``--tensors`` (with ``--handoff``) adds the
least tensor work any batching V2 server does when it runs a model instead of replaying bytes: each
call decodes its raw inputs into arrays and checks their size, the batching thread concatenates the
inputs of everything it took and cuts a batch-sized output into one slice per call, and each call
builds and serializes its own response from its slice. With all three flags the server is the
floor of a batching gateway: everything but routing, the checks against a model's signature, and
the model itself.

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


class Call:
    """One call waiting for its batch: its decoded inputs (if any) and, once released, its outputs."""

    __slots__ = ("done", "inputs", "outputs")

    def __init__(self, inputs: list[np.ndarray]) -> None:
        self.inputs = inputs
        self.outputs: list[np.ndarray] = []
        self.done = threading.Lock()
        self.done.acquire()


class Handoff:
    """Emulates the shape of a batching gateway with no model: each call queues itself and blocks;
    one dispatcher thread takes everything queued and releases each. It isolates what handing a
    request to a batching thread and back costs in a synchronous gRPC server. With ``merge`` the
    dispatcher also concatenates the calls' inputs and gives each call its rows of a fixed output,
    as a batching gateway must around its model."""

    def __init__(self, merge: bool = False) -> None:
        self._merge = merge
        self._queue: deque[Call] = deque()
        self._ready = threading.Condition(threading.Lock())
        threading.Thread(target=self._dispatch, name="dispatcher", daemon=True).start()

    def round_trip(self, call: Call) -> None:
        with self._ready:
            self._queue.append(call)
            self._ready.notify()
        call.done.acquire(timeout=30)

    def _dispatch(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                batch = list(self._queue)
                self._queue.clear()
            if self._merge:
                self._split(batch, np.concatenate([call.inputs[0] for call in batch]))
            for call in batch:
                call.done.release()

    @staticmethod
    def _split(batch: list[Call], merged: np.ndarray) -> None:
        # What a digits model would return for the merged batch, cut back into each call's rows.
        outputs = (np.zeros(len(merged), dtype=np.int64), np.full((len(merged), 10), 0.1, dtype=np.float32))
        start = 0
        for call in batch:
            rows = len(call.inputs[0])
            call.outputs = [output[start : start + rows] for output in outputs]
            start += rows


_DTYPES: dict[str, Any] = {"FP32": np.float32, "INT64": np.int64}


def decoded_inputs(request: Any) -> list[np.ndarray]:
    """Each raw input as an array of its datatype and shape; a size that does not fit is an error."""
    arrays = []
    for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
        shape = tuple(tensor.shape)
        array = np.frombuffer(raw, dtype=_DTYPES[tensor.datatype])
        if array.size != int(np.prod(shape)):
            raise ValueError(f"input {tensor.name!r} has {array.size} values for shape {shape}")
        arrays.append(array.reshape(shape))
    return arrays


def encoded_response(request: Any, outputs: Sequence[np.ndarray]) -> bytes:
    """A digits response built from output arrays, as a server that ran a model must build it."""
    response = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
    for name, datatype, array in zip(("label", "probabilities"), ("INT64", "FP32"), outputs, strict=True):
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
    response.raw_output_contents.extend([array.tobytes() for array in outputs])
    return bytes(response.SerializeToString())


# What Turnout's unary handler adds around the call itself: reading the request's text metadata and
# deadline, and three trailing metadata entries saying which version answered.
ROUTING_TRAILERS = (("turnout-version", "1"), ("turnout-arm", "stable"), ("turnout-generation", "0"))


def serve_sync(
    host: str, port: int, threads: int, handoff: bool = False, trailers: bool = False, tensors: bool = False
) -> None:
    answers = DigitsAnswers()
    batcher = Handoff(merge=tensors) if handoff else None

    def infer(request: Any, context: grpc.ServicerContext) -> bytes:
        if trailers:
            {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
            context.time_remaining()
        outputs: Sequence[np.ndarray] = ()
        if batcher is not None:
            call = Call(decoded_inputs(request) if tensors else [])
            batcher.round_trip(call)
            outputs = call.outputs
        if trailers:
            context.set_trailing_metadata(ROUTING_TRAILERS)
        return encoded_response(request, outputs) if tensors else answers.unary_bytes(request)

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
    parser.add_argument(
        "--tensors",
        action="store_true",
        help="with --handoff: decode inputs to arrays, merge and split them in the batching thread, encode responses",
    )
    args = parser.parse_args(argv)
    if args.tensors and not args.handoff:
        parser.error("--tensors needs --handoff: the batching thread is where inputs merge")
    if args.flavor == "sync":
        serve_sync(args.host, args.port, args.threads, args.handoff, args.trailers, args.tensors)
    else:
        asyncio.run(serve_aio(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
