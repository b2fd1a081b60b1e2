"""A client for ``grpc.health.v1.Health/Check``, used by ``turnout health`` and the Docker health check."""

from __future__ import annotations

import argparse

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.client.channel import open_channel


def probe(args: argparse.Namespace) -> str:
    """The health status name of the gateway ``args`` names (``--server``, TLS flags), or ``UNREACHABLE: <why>``."""
    with open_channel(args) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=args.timeout_s)
        except grpc.RpcError as error:
            return f"UNREACHABLE: {error.code().name}"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
