"""Stops the gRPC server's listening socket from accepting, ahead of the server's own stop.

gRPC's stop closes the listener and sends GOAWAY in one step, and a call that reaches the server
during that step is cancelled. A proxy such as nginx has already sent such a call and cannot retry
it; a connection refused outright it can. Closing the listener first, while the server keeps
serving the connections it has, turns every late arrival into a refused connection. grpcio has no
call for that, so this finds the socket among the process's descriptors by its port.
"""

from __future__ import annotations

import os
import socket
import stat

# Linux lists a process's descriptors here; elsewhere nothing is closed early and gRPC's stop does it.
_OWN_DESCRIPTORS = "/proc/self/fd"


def stop_accepting(port: int) -> int:
    """Close every listening TCP socket of this process bound to ``port``; how many.

    Once a listening socket is closed the kernel refuses new connections to its port (the ones
    already accepted carry on). gRPC's descriptor number is kept pointing at an inert socket rather
    than closed: gRPC closes that number itself at its stop, and it must not be a file opened since.
    Shutting the socket down in place would refuse connections too, but gRPC's acceptor then fails
    its next accept and writes an error line to stderr, outside the gateway's (JSON) log.
    """
    try:
        descriptors = [int(name) for name in os.listdir(_OWN_DESCRIPTORS)]
    except OSError:
        return 0
    return sum(_shut_if_listening(descriptor, port) for descriptor in descriptors)


def _shut_if_listening(descriptor: int, port: int) -> bool:
    try:
        if not stat.S_ISSOCK(os.fstat(descriptor).st_mode):
            return False
        # A duplicate, so closing our socket object leaves gRPC's descriptor open; shutdown acts on
        # the socket both descriptors share.
        probe = socket.socket(fileno=os.dup(descriptor))
    except OSError:  # closed meanwhile, or not a socket Python can wrap
        return False
    with probe:
        try:
            if probe.type != socket.SOCK_STREAM or probe.family not in (socket.AF_INET, socket.AF_INET6):
                return False
            if not probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) or probe.getsockname()[1] != port:
                return False
            # Put an inert socket in its place under the same descriptor number, so gRPC's later
            # close closes that one; the listening socket itself closes with our duplicate below.
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as inert:
                os.dup2(inert.fileno(), descriptor)
        except OSError:
            return False
    return True
