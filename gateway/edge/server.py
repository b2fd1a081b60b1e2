"""Builds the gRPC servers: the inference port (inference service, health, reflection, limits) and the
control listener (:mod:`gateway.edge.control_server`), which share one health service.

The health service says SERVING exactly while ServerReady says ready (Triton's health Check does the
same), so a Kubernetes gRPC readiness probe follows ``--strict-readiness``: a thread looks at
readiness a few times a second and tells the health service when it changes, so Watch streams hear
of it too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.edge.control_server import RolloutsElsewhere, bind, control_server
from gateway.edge.inference_servicer import InferenceServicer
from gateway.edge.lenient_handlers import add_leniently
from gateway.edge.listening_socket import stop_accepting
from gateway.edge.repository_servicer import RepositoryServicer
from gateway.edge.rollouts_servicer import RolloutsServicer
from gateway.edge.tls import ServerTls, inference_credentials
from gateway.settings import Settings, split_address
from gateway.wire import inference_pb2 as pb
from gateway.wire.turnout.v1 import rollouts_pb2

INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
ROLLOUTS_SERVICE = rollouts_pb2.DESCRIPTOR.services_by_name["Rollouts"].full_name
# After the inference calls drain, what is left (health Watch streams, metadata calls) gets this long.
_FINAL_GRACE_S = 0.5
# After the listener closes, how long calls on connections it accepted just before may still arrive and be
# served: the time to read a call off a new connection and start its handler, with room for a busy machine.
_SETTLE_S = 0.2
# How long after that the stop waits for the server's threads to return before it goes on without them.
_STOP_WAIT_S = 5.0
# How often the health service's status is brought in line with readiness.
_READINESS_POLL_S = 0.25

log = logging.getLogger(__name__)


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
        # Idle connections behind load balancers stay up: clients may ping every 10 s without calls.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 0),
        # Only the processes of one supervisor may share the port; otherwise a second gateway on a
        # busy port must fail rather than silently split its traffic.
        ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
    ]


class GatewayServer:
    """The running gRPC servers (inference port, control listener) and their health status."""

    def __init__(
        self,
        settings: Settings,
        servicer: InferenceServicer,
        rollouts: RolloutsServicer,
        control_repository: RepositoryServicer,
        is_ready: Callable[[], bool] | None = None,
        control_ready: Callable[[], bool] | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        """``is_ready``: what ServerReady answers; the health status follows it (None: SERVING while up).
        ``control_ready``: whether policy changes can be made (the routing state is usable); the health
        of the ``turnout.v1.Rollouts`` service follows it, the server's and inference's do not.
        ``tls``: the port serves TLS with it (None: plaintext)."""
        self._is_ready = is_ready or _always
        self._control_ready = control_ready or _always
        self._stopped = threading.Event()
        self._readiness: threading.Thread | None = None
        self._health = health.HealthServicer()
        # The control listener first: the inference port's refusals name where it really is.
        self._control = control_server(server_options(settings), rollouts, control_repository, self._health)
        control_host = split_address(settings.control_address)[0]
        self.control_port = bind(self._control, settings.control_address, control_credentials(settings, tls))
        self.control_address = f"{control_host}:{self.control_port}"
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.grpc_threads, thread_name_prefix="grpc"),
            options=server_options(settings),
            maximum_concurrent_rpcs=None,
        )
        self._servicer = servicer
        # Not the generated add_*_to_server: a body that does not decode is INVALID_ARGUMENT, not INTERNAL.
        add_leniently(servicer, pb.DESCRIPTOR.services_by_name["GRPCInferenceService"], self._server)
        self._server.add_generic_rpc_handlers((RolloutsElsewhere(self.control_address),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (INFERENCE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        inference_tls = None if tls is None else inference_credentials(settings, tls)
        self.port = bind(self._server, f"{settings.host}:{settings.port}", inference_tls)

    def start(self) -> None:
        self._control.start()
        self._server.start()
        serving, controlling = self._is_ready(), self._control_ready()
        self._set_health(serving, ("", INFERENCE_SERVICE))
        self._set_health(controlling, (ROLLOUTS_SERVICE,))
        self._readiness = threading.Thread(
            target=self._follow_readiness, args=(serving, controlling), name="health-readiness", daemon=True
        )
        self._readiness.start()

    def _set_health(self, serving: bool, services: tuple[str, ...]) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in services:
            self._health.set(service, status)  # ignored once the graceful stop has begun: NOT_SERVING stays

    def _follow_readiness(self, serving: bool, controlling: bool) -> None:
        while not self._stopped.wait(_READINESS_POLL_S):
            if (ready := self._is_ready()) != serving:
                serving = ready
                self._set_health(serving, ("", INFERENCE_SERVICE))
            if (control := self._control_ready()) != controlling:
                controlling = control
                self._set_health(controlling, (ROLLOUTS_SERVICE,))

    def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, stop accepting connections, refuse new calls, give in-flight calls ``grace_s``.

        The order keeps the callers of a load balancer in front whole:

        1. health says NOT_SERVING: balancers that check it, Kubernetes and Watch streams move away;
           the control listener takes no new calls (operators reach it directly, no balancer);
        2. the listening socket stops accepting. A refused connection is one a proxy knows it never
           sent a call on, so it sends the call to another instance (nginx's ``grpc_next_upstream
           error``) and marks this one down. A call refused any later, by an UNAVAILABLE status or
           during gRPC's own stop (GOAWAY), nginx has already sent and hands to its caller as a failure:
           behind nginx under steady load, a status refusal failed 3 calls per SIGTERM and gRPC's stop
           alone one call in every third; closing the listener first, none
           (tests/integration/test_load_balancer.py);
        3. for ``_SETTLE_S`` the connections accepted just before still deliver their calls, and they
           are served;
        4. then new calls are refused (UNAVAILABLE, for clients that ignore the health status), the
           ones in flight finish, and gRPC's stop ends what is left: open health Watch streams, which
           heard NOT_SERVING, are ended then instead of holding the stop for ``grace_s``.
        """
        deadline = time.monotonic() + grace_s
        self._health.enter_graceful_shutdown()
        self._stopped.set()
        # New control calls are refused from now on; one in flight (a change waiting for every
        # process) goes on while inference calls drain.
        self._control.stop(grace_s)
        if closed := stop_accepting(self.port):
            log.info("stopped accepting connections on port %d (%d listening sockets)", self.port, closed)
            time.sleep(min(_SETTLE_S, grace_s))
        left_s = max(deadline - time.monotonic(), 0.0)
        log.info("refusing new inference calls; up to %.1f s for %d in flight", left_s, self._servicer.calls.count)
        self._servicer.calls.close_and_wait(left_s)
        remaining = max(deadline - time.monotonic(), 0.0)
        final_grace_s = min(remaining, _FINAL_GRACE_S)
        # A second stop with a shorter grace wins: health Watch streams on the control listener end
        # with the inference port's instead of holding the stop for the whole grace period.
        control_stopped = self._control.stop(final_grace_s)
        # grpc cancels what is left after the grace, but the event waits for every handler thread to
        # return, and one stuck writing to a client that stopped reading may never do so: bound it.
        if not self._server.stop(final_grace_s).wait(final_grace_s + _STOP_WAIT_S):
            log.warning("the gRPC server had not stopped %.0f s after its grace period; stopping anyway", _STOP_WAIT_S)
        if not control_stopped.wait(_STOP_WAIT_S):
            log.warning("the control listener had not stopped %.0f s after its grace; stopping anyway", _STOP_WAIT_S)


def control_credentials(settings: Settings, tls: ServerTls | None) -> grpc.ServerCredentials | None:
    """The control listener's TLS: the inference port's certificate, plaintext without one.

    With ``--control-client-ca-file`` the handshake asks for a certificate from that CA and refuses
    a client without one (grpc's server credentials either require and verify a client certificate
    or never ask for one), so a certificate is then needed even by a caller that also has a token.
    """
    if tls is None:
        return None
    client_ca = settings.control_client_ca_file
    return tls.credentials(client_ca, require_client_auth=client_ca is not None)


def _always() -> bool:
    return True
