"""The worker broker: one set of worker processes shared by every gateway process on a host.

``turnout serve --processes N`` runs the broker in its supervisor. A gateway process asks it to
ATTACH a model instance (runtime kind, artifact, options, label); the first ask starts the worker
and loads the model, later asks get the same worker's socket path. Each worker keeps the broker's
listening socket across restarts, so a gateway that reconnects while the worker restarts simply
waits in the backlog. A worker stops when the last gateway process detaches or disconnects.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from runtimes.contract import RuntimeFailure
from runtimes.ipc import ChannelClosed, recv_frame, send_frame
from runtimes.process_host import WorkerProcessHost
from runtimes.worker_protocol import Attach, Kind, send_attached, send_error
from runtimes.zygote import Zygote

log = logging.getLogger(__name__)

@dataclass(slots=True)
class _SharedWorker:
    host: WorkerProcessHost
    listener: socket.socket
    path: Path
    refs: int = 0


class WorkerBroker:
    """Starts, shares, restarts (through WorkerProcessHost) and stops workers for gateway processes."""

    def __init__(self, socket_dir: Path, restart_wait_s: float = 30.0, zygote: Zygote | None = None) -> None:
        self.socket_dir = socket_dir
        self._zygote = zygote
        self.path = socket_dir / "broker.sock"
        self._restart_wait_s = restart_wait_s
        self._lock = threading.Lock()
        self._workers: dict[Attach, _SharedWorker] = {}
        self._creating: dict[Attach, threading.Lock] = {}
        self._next_id = 0
        self._closed = False
        self._listener = _listen(self.path)
        self._acceptor = threading.Thread(target=self._accept, name="broker-accept", daemon=True)
        self._acceptor.start()

    def worker_pids(self) -> list[int]:
        with self._lock:
            return sorted(pid for w in self._workers.values() if (pid := w.host.pid) is not None)

    def restarts(self) -> list[tuple[str, int]]:
        """(artifact path, restarts) for each running shared worker."""
        with self._lock:
            return [(key.artifact, w.host.restarts) for key, w in self._workers.items()]

    def _accept(self) -> None:
        while not self._closed:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve_client, args=(connection,), name="broker-client", daemon=True).start()

    def _serve_client(self, connection: socket.socket) -> None:
        attached: Counter[Attach] = Counter()
        try:
            while True:
                frame = recv_frame(connection)
                if frame.kind == Kind.ATTACH:
                    key = Attach.from_frame(frame)
                    try:
                        worker = self._attach(key)
                    except (RuntimeFailure, OSError) as error:
                        send_error(connection, error)
                        continue
                    attached[key] += 1
                    send_attached(connection, worker.path)
                elif frame.kind == Kind.DETACH:
                    key = Attach.from_frame(frame)
                    if attached[key] > 0:
                        attached[key] -= 1
                        self._release(key)
                    send_frame(connection, Kind.DETACHED)
        except (ChannelClosed, ConnectionError, OSError):
            pass  # the gateway process went away: whatever it held is released below
        finally:
            connection.close()
            for key, count in attached.items():
                for _ in range(count):
                    self._release(key)

    def _attach(self, key: Attach) -> _SharedWorker:
        with self._lock:
            creating = self._creating.setdefault(key, threading.Lock())
        with creating:  # one load per model instance, however many processes ask at once
            with self._lock:
                worker = self._workers.get(key)
                if worker is not None:
                    worker.refs += 1
                    return worker
            worker = self._start(key)
            with self._lock:
                worker.refs += 1
                self._workers[key] = worker
            return worker

    def _start(self, key: Attach) -> _SharedWorker:
        with self._lock:
            self._next_id += 1
            path = self.socket_dir / f"worker-{self._next_id}.sock"
        listener = _listen(path)
        try:
            host = WorkerProcessHost(
                key.kind,
                Path(key.artifact),
                key.runtime_options,
                label=key.label,
                restart_wait_s=self._restart_wait_s,
                listener=listener,
                zygote=self._zygote,
            )
        except BaseException:
            listener.close()
            path.unlink(missing_ok=True)
            raise
        log.info("worker for %s started, shared at %s", key.label, path)
        return _SharedWorker(host, listener, path)

    def _release(self, key: Attach) -> None:
        with self._lock:
            worker = self._workers.get(key)
            if worker is None:
                return
            worker.refs -= 1
            if worker.refs > 0:
                return
            del self._workers[key]
        self._stop(worker)

    @staticmethod
    def _stop(worker: _SharedWorker) -> None:
        worker.host.close()
        worker.listener.close()
        worker.path.unlink(missing_ok=True)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.path.unlink(missing_ok=True)
        with self._lock:
            workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            self._stop(worker)


def _listen(path: Path) -> socket.socket:
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(256)
    return listener
