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
    """Shut down reading on every listening TCP socket of this process bound to ``port``; how many.

    ``shutdown(SHUT_RD)`` on a listening socket makes the kernel refuse new connections to it (the
    ones already accepted carry on); gRPC's acceptor sees its next accept fail and retires, logging
    "Failed accept4: Invalid argument" once.
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
            probe.shutdown(socket.SHUT_RD)
        except OSError:
            return False
    return True
