"""A model host that uses a worker shared through the broker, for gateways run with ``--processes N``.

Every gateway process attaches to the same worker (see :mod:`runtimes.broker`) and talks to it over
its own connection; batching stays in each gateway process. When the worker dies, the batch in
flight fails with ``HostUnavailable`` and the next call reconnects, waiting while the broker
restarts the worker.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from runtimes.contract import (
    FailureCallback,
    HostUnavailable,
    RuntimeOptions,
    Signature,
)
from runtimes.ipc import ChannelClosed, Frame, recv_frame, send_frame
from runtimes.raw_tensors import RawTensor, RawTensors
from runtimes.worker_protocol import (
    Attach,
    Kind,
    attached_path,
    loaded_signature,
    raise_if_error,
    result_tensors,
    send_batch,
    send_load,
)


class BrokerClient:
    """This gateway process's connection to the broker; one request at a time."""

    def __init__(self, path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(str(path))
        self._lock = threading.Lock()

    def _ask(self, kind: Kind, request: Attach) -> Frame:
        with self._lock:
            send_frame(self._sock, kind, request.fields())
            frame = recv_frame(self._sock)
        raise_if_error(frame)
        return frame

    def attach(self, request: Attach) -> Path:
        return attached_path(self._ask(Kind.ATTACH, request))

    def detach(self, request: Attach) -> None:
        self._ask(Kind.DETACH, request)

    def close(self) -> None:
        self._sock.close()


class SharedWorkerHost:
    """Hosts one model instance in a broker-managed worker that other gateway processes share."""

    def __init__(
        self,
        broker: BrokerClient,
        kind: str,
        artifact: Path,
        options: RuntimeOptions,
        *,
        label: str = "",
        restart_wait_s: float = 30.0,
    ) -> None:
        self._broker = broker
        self._label = label or artifact.parent.name
        self._restart_wait_s = restart_wait_s
        self._request = Attach.of(kind, artifact, options, self._label)
        self._options = options
        self._path = broker.attach(self._request)
        self._call_lock = threading.Lock()
        self._sock: socket.socket | None = None
        try:
            self._sock, self.signature = self._connect()
        except BaseException:
            broker.detach(self._request)
            raise

    def _connect(self) -> tuple[socket.socket, Signature]:
        """Connect and greet the worker; waits (in the listen backlog) while it is being restarted."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self._restart_wait_s)
            sock.connect(str(self._path))
            # The same path the broker loaded, so the worker knows it is the model it already serves.
            send_load(sock, self._request.kind, self._request.artifact, self._options)
            frame = recv_frame(sock)
            sock.settimeout(None)
        except (OSError, ChannelClosed) as error:
            sock.close()
            raise HostUnavailable(f"shared worker for {self._label} is not answering: {error}") from None
        try:
            return sock, loaded_signature(frame)
        except BaseException:
            sock.close()
            raise

    def infer(self, inputs: Mapping[str, Sequence[RawTensor]], output_names: Sequence[str]) -> RawTensors:
        with self._call_lock:
            if self._sock is None:
                self._sock, _ = self._connect()
            sock = self._sock
            try:
                send_batch(sock, inputs, output_names)
                frame = recv_frame(sock)
            except (OSError, ChannelClosed):
                sock.close()
                self._sock = None
                raise HostUnavailable(
                    f"shared worker for {self._label} died during the batch; it is being restarted"
                ) from None
        return result_tensors(frame)

    def watch_failure(self, callback: FailureCallback) -> None:
        """Not yet: the broker's host restarts the shared worker and knows when it cannot (a later
        change can pass that on); here a dead worker is seen as a batch that fails."""

    def close(self) -> None:
        with self._call_lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
        with contextlib.suppress(OSError, ChannelClosed):  # a broker that is gone holds nothing
            self._broker.detach(self._request)
