"""A gRPC service's handlers whose request decoding never raises, so a body that is not a valid
protobuf message is refused as INVALID_ARGUMENT, in the service's own words, instead of INTERNAL.

The generated ``add_*Servicer_to_server`` functions give grpc the message's ``FromString``; when it
raises, grpc logs a traceback and answers INTERNAL ("Exception deserializing request!"), and each
such request leaks about 19 KB in grpcio itself. Here the deserializer catches the decode error and
hands the servicer an :class:`Undecodable` in the message's place: a unary method answers
INVALID_ARGUMENT for it before the servicer is called; a streaming method receives it in its
request iterator and answers it in-band. The log says so at most once a minute.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError

log = logging.getLogger(__name__)

_LOG_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What a request that could not be decoded is replaced with."""

    message_type: str
    size: int
    error: str

    @property
    def description(self) -> str:
        return f"the request is not a valid {self.message_type} message ({self.size} bytes): {self.error}"


class _RateLimitedLog:
    def __init__(self) -> None:
        self._next = 0.0
        self._unlogged = 0

    def undecodable(self, request: Undecodable) -> None:
        now = time.monotonic()
        if now < self._next:
            self._unlogged += 1  # a race here costs a miscount of a log line, nothing else
            return
        more, self._unlogged, self._next = self._unlogged, 0, now + _LOG_EVERY_S
        suffix = f" ({more} more since the last line)" if more else ""
        log.warning("refused a request that does not decode: %s%s", request.description, suffix)


def _deserializer(message_class: Any, said: _RateLimitedLog) -> Callable[[bytes], Any]:
    parse = message_class.FromString
    name = message_class.DESCRIPTOR.full_name

    def decode(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as error:  # RuntimeWarning-free: upb raises DecodeError for every malformed body
            undecodable = Undecodable(name, len(data), str(error) or "malformed")
            said.undecodable(undecodable)
            return undecodable

    return decode


def _refusing_undecodable(method: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.description)
        return method(request, context)

    return unary


def _handler(method: MethodDescriptor, servicer: Any, said: _RateLimitedLog) -> grpc.RpcMethodHandler:
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    behaviour = getattr(servicer, method.name)
    decode = _deserializer(request_class, said)
    encode = response_class.SerializeToString
    if method.client_streaming and method.server_streaming:
        return grpc.stream_stream_rpc_method_handler(behaviour, request_deserializer=decode, response_serializer=encode)
    if method.client_streaming:
        return grpc.stream_unary_rpc_method_handler(behaviour, request_deserializer=decode, response_serializer=encode)
    refusing = _refusing_undecodable(behaviour)
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler(refusing, request_deserializer=decode, response_serializer=encode)
    return grpc.unary_unary_rpc_method_handler(refusing, request_deserializer=decode, response_serializer=encode)


def add_leniently(
    servicer: Any, service: ServiceDescriptor, server: grpc.Server, only: Collection[str] | None = None
) -> None:
    """Serve every method of ``service`` (or those named in ``only``; the rest are UNIMPLEMENTED) from
    ``servicer`` (named as in the .proto), leniently decoded.

    A streaming method's request iterator may yield :class:`Undecodable`; it must answer those itself.
    """
    said = _RateLimitedLog()
    methods = [method for method in service.methods if only is None or method.name in only]
    handlers = {method.name: _handler(method, servicer, said) for method in methods}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
