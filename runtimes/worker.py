"""The worker process: loads one model and answers inference frames until told to stop.

Started by :class:`runtimes.process_host.WorkerProcessHost` as ``python -m runtimes.worker --fd N``
with one end of a socket pair. It exits when the socket closes, so it never outlives its gateway.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
from pathlib import Path

from runtimes.catalog import open_runtime
from runtimes.contract import Runtime, RuntimeFailure, RuntimeOptions
from runtimes.ipc import ChannelClosed, Kind, recv_frame, send_frame


def _serve(sock: socket.socket) -> None:
    runtime: Runtime | None = None
    while True:
        try:
            frame = recv_frame(sock)
        except (ChannelClosed, ConnectionError):
            return
        if frame.kind is Kind.SHUTDOWN:
            return
        try:
            if frame.kind is Kind.LOAD:
                runtime = open_runtime(
                    frame.meta["runtime"],
                    Path(frame.meta["artifact"]),
                    RuntimeOptions.from_json(frame.meta["options"]),
                )
                send_frame(sock, Kind.LOADED, {"signature": runtime.signature.to_json()})
            elif frame.kind is Kind.INFER:
                if runtime is None:
                    raise RuntimeFailure("no model is loaded in this worker")
                outputs = runtime.infer(frame.tensors, frame.meta["outputs"])
                send_frame(sock, Kind.RESULT, None, {name: [array] for name, array in outputs.items()})
            else:
                raise RuntimeFailure(f"unexpected frame {frame.kind.name}")
        except RuntimeFailure as error:
            send_frame(sock, Kind.ERROR, {"error": type(error).__name__, "message": str(error)})
        except Exception as error:  # a bug must fail one batch, not kill every request of the model
            send_frame(sock, Kind.ERROR, {"error": "InferenceFailed", "message": f"{type(error).__name__}: {error}"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="file descriptor of the gateway's socket")
    args = parser.parse_args()
    # The gateway may go away mid-reply; there is nobody left to tell.
    with socket.socket(fileno=args.fd) as sock, contextlib.suppress(ConnectionError):
        _serve(sock)


if __name__ == "__main__":
    main()
