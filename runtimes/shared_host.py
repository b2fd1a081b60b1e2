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

from runtimes.broker import attach_request
from runtimes.contract import (
    HostUnavailable,
    RuntimeOptions,
    Signature,
)
from runtimes.ipc import ChannelClosed, Frame, Kind, raise_if_error, recv_frame, send_batch, send_frame
from runtimes.raw_tensors import RawTensor, RawTensors


class BrokerClient:
    """This gateway process's connection to the broker; one request at a time."""

    def __init__(self, path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(str(path))
        self._lock = threading.Lock()

    def _ask(self, kind: Kind, meta: dict[str, object]) -> Frame:
        with self._lock:
            send_frame(self._sock, kind, meta)
            frame = recv_frame(self._sock)
        raise_if_error(frame)
        return frame

    def attach(self, request: dict[str, object]) -> Path:
        return Path(str(self._ask(Kind.ATTACH, request).meta["path"]))

    def detach(self, request: dict[str, object]) -> None:
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
        self._request = attach_request(kind, artifact, options, self._label)
        # The same path the broker loaded, so the worker knows it is the model it already serves.
        self._load_meta = {"runtime": kind, "artifact": str(self._request["artifact"]), "options": options.to_json()}
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
            send_frame(sock, Kind.LOAD, self._load_meta)
            frame = recv_frame(sock)
            sock.settimeout(None)
        except (OSError, ChannelClosed) as error:
            sock.close()
            raise HostUnavailable(f"shared worker for {self._label} is not answering: {error}") from None
        try:
            raise_if_error(frame)
        except BaseException:
            sock.close()
            raise
        return sock, Signature.from_json(frame.meta["signature"])

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
        raise_if_error(frame)
        return frame.tensors

    def close(self) -> None:
        with self._call_lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
        with contextlib.suppress(OSError, ChannelClosed):  # a broker that is gone holds nothing
            self._broker.detach(self._request)
