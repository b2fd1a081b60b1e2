"""The worker process: loads one model and answers inference frames until its owner goes away.

Forked from the zygote (:mod:`runtimes.zygote`), or started as ``python -m runtimes.worker --fd N``,
with one end of a socket pair, by
:class:`runtimes.process_host.WorkerProcessHost` (the gateway owns it) or by
:class:`runtimes.broker.WorkerBroker` (several gateway processes share it). With ``--listen-fd M``
it also accepts connections on that listening socket, one thread each, so every gateway process
of a host talks to the same loaded model. It exits when the owner's socket closes, so it never
outlives its owner.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import threading
from pathlib import Path

from runtimes.catalog import open_runtime
from runtimes.contract import Runtime, RuntimeFailure
from runtimes.heap import freeze_startup_heap
from runtimes.ipc import ChannelClosed, Frame, recv_frame
from runtimes.raw_tensors import array_of, raw_of
from runtimes.worker_protocol import (
    Kind,
    kind_name,
    load_fields,
    requested_outputs,
    send_error,
    send_loaded,
    send_result,
)


class _LoadedModel:
    """The one model of this worker, loaded by the first LOAD; later LOADs of the same artifact reuse it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None
        self._source: tuple[str, str] | None = None

    def load(self, frame: Frame) -> Runtime:
        runtime, artifact, options = load_fields(frame)
        source = (runtime, artifact)
        with self._lock:
            if self._runtime is None:
                self._runtime = open_runtime(runtime, Path(artifact), options)
                self._source = source
                freeze_startup_heap()  # the model is this worker's start-up heap
            elif source != self._source:
                raise RuntimeFailure(f"this worker serves {self._source}, not {source}")
            return self._runtime

    @property
    def runtime(self) -> Runtime | None:
        return self._runtime


def _serve(sock: socket.socket, model: _LoadedModel) -> None:
    """Answer one connection's frames in order until it closes or says SHUTDOWN."""
    while True:
        try:
            frame = recv_frame(sock)
        except (ChannelClosed, ConnectionError):
            return
        if frame.kind == Kind.SHUTDOWN:
            return
        try:
            if frame.kind == Kind.LOAD:
                send_loaded(sock, model.load(frame).signature)
            elif frame.kind == Kind.INFER:
                loaded = model.runtime
                if loaded is None:
                    raise RuntimeFailure("no model is loaded in this worker")
                inputs = {name: array_of(tensor) for name, tensor in frame.tensors.items()}
                outputs = loaded.infer(inputs, requested_outputs(frame))
                send_result(sock, {name: raw_of(array) for name, array in outputs.items()})
            else:
                raise RuntimeFailure(f"unexpected frame {kind_name(frame)}")
        except Exception as error:  # a bug must fail one batch, not kill every request of the model
            send_error(sock, error)


def _serve_quietly(sock: socket.socket, model: _LoadedModel) -> None:
    # A peer may go away mid-reply; there is nobody left to tell.
    with sock, contextlib.suppress(ConnectionError):
        _serve(sock, model)


def _accept_forever(listener: socket.socket, model: _LoadedModel) -> None:
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=_serve_quietly, args=(connection, model), daemon=True).start()


def run(fd: int, listen_fd: int | None = None) -> None:
    """Serve the owner's socket ``fd`` (and connections on ``listen_fd``) until the owner goes away."""
    model = _LoadedModel()
    if listen_fd is not None:
        listener = socket.socket(fileno=listen_fd)
        threading.Thread(target=_accept_forever, args=(listener, model), name="accept", daemon=True).start()
    _serve_quietly(socket.socket(fileno=fd), model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="file descriptor of the owner's socket")
    parser.add_argument("--listen-fd", type=int, help="a listening Unix socket other gateway processes connect to")
    args = parser.parse_args()
    # Started in a process group of its own (a background group of any terminal): a log line must
    # not stop it where the terminal has `tostop` set.
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    run(args.fd, args.listen_fd)


if __name__ == "__main__":
    main()
