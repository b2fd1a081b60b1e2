"""gateway/edge/listening_socket.py on real sockets: new connections refused, accepted ones untouched."""

from __future__ import annotations

import socket

import pytest

from gateway.edge.listening_socket import stop_accepting


def test_closing_the_listener_refuses_new_connections_and_keeps_accepted_ones() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert stop_accepting(port) == 1
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection(("127.0.0.1", port), timeout=2).close()
                client.sendall(b"still here")
                assert accepted.recv(64) == b"still here"
        # The owner's descriptor number now holds an inert socket its own close can take.
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0


def test_other_ports_are_left_alone() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.create_server(("127.0.0.1", 0)) as other:
        assert stop_accepting(other.getsockname()[1]) == 1
        port = listener.getsockname()[1]
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
