"""``inference.GRPCInferenceService``: the Open Inference Protocol plus Triton's extensions.

Servicers stay thin: decode with :mod:`gateway.edge.codec`, call a use case, encode the answer.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from gateway.edge.codec import (
    infer_request_from_proto,
    infer_response_to_proto,
    model_config_to_proto,
    model_metadata_to_proto,
    routing_trailers,
    statistics_to_proto,
    text_metadata,
)
from gateway.edge.lenient_handlers import Undecodable
from gateway.edge.repository_servicer import RepositoryServicer
from gateway.edge.status import maps_errors, message_of, status_of
from gateway.edge.stream_slots import StreamSlots
from gateway.errors import Internal, InvalidArgument, ResourceExhausted, TurnoutError, Unavailable
from gateway.serving.dataplane import Dataplane
from gateway.serving.in_flight import InFlight
from gateway.serving.inference_types import InferRequest, InferResponse
from gateway.serving.model_views import ModelViews
from gateway.wire import inference_pb2 as pb
from gateway.wire import inference_pb2_grpc as pb_grpc

SERVER_NAME = "turnout"
EXTENSIONS = ["model_repository", "model_configuration", "statistics", "binary_tensor_data", "health"]

_END = object()
_SHUTTING_DOWN = "the server is shutting down and accepts no new inference calls"
_UNEXPECTED = "the gateway failed on this request unexpectedly; its log has the details"

log = logging.getLogger(__name__)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        dataplane: Dataplane,
        models: ModelViews,
        repository: RepositoryServicer,
        is_ready: Callable[[], bool],
        server_version: str,
        streams: StreamSlots,
        max_tensor_elements: int,
    ) -> None:
        """``streams``: the bounds on open ModelStreamInfer streams; ``max_tensor_elements``: the most
        elements one input tensor may have."""
        self._server_version = server_version
        self._streams = streams
        self._max_tensor_elements = max_tensor_elements
        self._dataplane = dataplane
        self._models = models
        self._repository = repository
        self._is_ready = is_ready
        # Inference calls in progress, so a graceful stop can refuse new ones and wait for the rest.
        # gRPC's own stop(grace) would also wait for health Watch streams, which never end by
        # themselves, and refuse health Checks at once; counting here lets the server keep
        # answering NOT_SERVING while only the inference calls drain.
        self.calls = InFlight()

    # --- health and metadata ---------------------------------------------------------------

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self._is_ready())

    @maps_errors
    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ModelReadyResponse(ready=self._models.is_ready(request.name, request.version))

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._server_version, extensions=EXTENSIONS)

    @maps_errors
    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return model_metadata_to_proto(self._models.metadata(request.name, request.version))

    @maps_errors
    def ModelConfig(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ModelConfigResponse(config=model_config_to_proto(self._models.config(request.name, request.version)))

    @maps_errors
    def ModelStatistics(self, request: Any, context: grpc.ServicerContext) -> Any:
        views = self._models.statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[statistics_to_proto(view) for view in views])

    # --- repository ------------------------------------------------------------------------

    # Served by the same servicer as on the control address; a load or unload needs the control
    # plane's credentials here too (a bearer token, or the --grpc-restricted-protocol header).

    def RepositoryIndex(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._repository.RepositoryIndex(request, context)

    def RepositoryModelLoad(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._repository.RepositoryModelLoad(request, context)

    def RepositoryModelUnload(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._repository.RepositoryModelUnload(request, context)

    # --- inference -------------------------------------------------------------------------

    @maps_errors
    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        if not self.calls.enter():
            raise Unavailable(_SHUTTING_DOWN)
        try:
            decoded = self._decode(request)
            decoded.routing_metadata = text_metadata(context.invocation_metadata())
            response = self._dataplane.infer(decoded, _timeout_s(context))
        finally:
            self.calls.leave()
        context.set_trailing_metadata(routing_trailers(response))
        return infer_response_to_proto(response)

    def _decode(self, message: Any) -> InferRequest:
        """The request in domain form; an unknown model is NOT_FOUND before its inputs are examined, as in Triton."""
        try:
            return infer_request_from_proto(message, self._max_tensor_elements)
        except (InvalidArgument, ResourceExhausted):
            self._dataplane.require_model(message.model_name)  # raises NotFound when unknown
            raise

    def ModelStreamInfer(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        """Answers each request on the stream as its batch completes; errors travel in-band."""
        if not self.calls.enter():
            context.abort(grpc.StatusCode.UNAVAILABLE, _SHUTTING_DOWN)
        try:
            # The peer address names the connection: each has its own client port.
            peer = context.peer()
            try:
                self._streams.take(peer)
            except ResourceExhausted as error:
                context.abort(status_of(error), message_of(error))
            try:
                yield from self._answer_stream(request_iterator, context)
            finally:
                self._streams.give_back(peer)
        finally:
            self.calls.leave()

    def _answer_stream(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        answers: queue.SimpleQueue[Any] = queue.SimpleQueue()
        submitted = [0]

        def answer(request_id: str) -> Callable[[InferResponse | None, TurnoutError | None], None]:
            def done(response: InferResponse | None, error: TurnoutError | None) -> None:
                answers.put(_stream_answer(request_id, response, error))

            return done

        metadata = text_metadata(context.invocation_metadata())

        def read() -> None:
            try:
                for message in request_iterator:
                    submitted[0] += 1
                    if isinstance(message, Undecodable):  # answered in-band; the stream goes on
                        answers.put(_stream_answer("", None, InvalidArgument(message.description)))
                        continue
                    try:
                        decoded = self._decode(message)
                        decoded.routing_metadata = metadata
                        decoded.via_stream = True
                        # The stream's deadline, if it has one, is every request's on it.
                        self._dataplane.submit(decoded, answer(message.id), _timeout_s(context))
                    except TurnoutError as error:
                        answers.put(_stream_answer(message.id, None, error))
                    except Exception:  # a bug costs this request its answer, never the stream its reader
                        log.exception("a request on a stream failed unexpectedly")
                        answers.put(_stream_answer(message.id, None, Internal(_UNEXPECTED)))
            except grpc.RpcError:
                pass  # the client went away; nothing left to answer
            finally:
                answers.put(_END)

        threading.Thread(target=read, name="stream-reader", daemon=True).start()
        sent, ended = 0, False
        while not ended or sent < submitted[0]:
            item = answers.get()
            if item is _END:
                ended = True
                continue
            if not context.is_active():
                return
            yield item
            sent += 1

    # --- shared memory, tracing, logging: not offered ----------------------------------------

    def _unimplemented(self, what: str, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"Turnout does not offer {what}; send tensors in the request")

    def SystemSharedMemoryStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unimplemented("system shared memory", context)

    def SystemSharedMemoryRegister(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unimplemented("system shared memory", context)

    def SystemSharedMemoryUnregister(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unimplemented("system shared memory", context)

    def CudaSharedMemoryStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unimplemented("CUDA shared memory", context)

    def CudaSharedMemoryRegister(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unimplemented("CUDA shared memory", context)

    def CudaSharedMemoryUnregister(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._unimplemented("CUDA shared memory", context)


def _timeout_s(context: grpc.ServicerContext) -> float | None:
    # Without a deadline gRPC reports an enormous remaining time that no lock can wait for.
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining < 86_400 else None


def _stream_answer(request_id: str, response: InferResponse | None, error: TurnoutError | None) -> Any:
    if error is not None or response is None:
        return pb.ModelStreamInferResponse(
            error_message=message_of(error) if error is not None else "no answer",
            infer_response=pb.ModelInferResponse(id=request_id),
        )
    return pb.ModelStreamInferResponse(infer_response=infer_response_to_proto(response, routing_parameters=True))
