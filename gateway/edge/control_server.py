"""The control plane's own gRPC server: ``turnout.v1.Rollouts`` and the model-repository calls, on
``--control-address``, with health and reflection; and what the inference port answers instead.

grpc serves every service of one server on all of its ports, so a listener of its own is a server of
its own (a few threads: control calls are rare). The inference port keeps no route to Rollouts: a
call there is PERMISSION_DENIED, naming the control address.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.edge.lenient_handlers import add_leniently
from gateway.edge.repository_servicer import REPOSITORY_METHODS, RepositoryServicer
from gateway.edge.rollouts_servicer import RolloutsServicer
from gateway.wire import inference_pb2
from gateway.wire.turnout.v1 import rollouts_pb2

INFERENCE = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
ROLLOUTS = rollouts_pb2.DESCRIPTOR.services_by_name["Rollouts"]
# Control calls are an operator's, a few at a time; a policy change may wait up to --apply-timeout-s.
CONTROL_THREADS = 8


def bind(server: grpc.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Listen on ``address``, in TLS when ``credentials`` are given; returns the port bound."""
    try:
        if credentials is None:
            port: int = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:  # newer grpc raises where older returned 0
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address} (in use, or not an address of this host)")
    return port


def control_server(
    options: list[tuple[str, Any]],
    rollouts: RolloutsServicer,
    repository: RepositoryServicer,
    health_servicer: health.HealthServicer,
) -> grpc.Server:
    """The control listener's server, its services added; not yet bound nor started."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=CONTROL_THREADS, thread_name_prefix="control"), options=options
    )
    add_leniently(rollouts, ROLLOUTS, server)
    add_leniently(repository, INFERENCE, server, only=REPOSITORY_METHODS)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (ROLLOUTS.full_name, INFERENCE.full_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    return server


class RolloutsElsewhere(grpc.GenericRpcHandler):  # type: ignore[misc]
    """On the inference port: every ``turnout.v1.Rollouts`` call is PERMISSION_DENIED, naming where it is served."""

    def __init__(self, control_address: str) -> None:
        message = f"turnout.v1.Rollouts is served on the control address {control_address}, not on the inference port"
        self._handler = grpc.unary_unary_rpc_method_handler(_refusing(message))

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method or ""
        return self._handler if method.startswith(f"/{ROLLOUTS.full_name}/") else None


def _refusing(message: str) -> Callable[[Any, grpc.ServicerContext], Any]:
    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, message)

    return refuse
