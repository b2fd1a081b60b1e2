"""A client for ``grpc.health.v1.Health/Check``, used by ``turnout health`` and the Docker health check."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def probe(server: str, timeout_s: float) -> str:
    """The server's overall health status name, or ``UNREACHABLE: <why>``."""
    with grpc.insecure_channel(server) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError as error:
            return f"UNREACHABLE: {error.code().name}"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
