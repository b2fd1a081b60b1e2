"""The channel the ``turnout`` commands talk to a gateway over: plaintext, TLS, or TLS with a client certificate."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import grpc

TLS_CA_ENV = "TURNOUT_TLS_CA_FILE"
# The client certificate has flags only: TURNOUT_TLS_CERT_FILE and TURNOUT_TLS_KEY_FILE already
# name the server's own certificate for `turnout serve`, and a command run beside a gateway would
# otherwise present the server's certificate as its own.


class ClientTlsError(ValueError):
    """TLS flags that do not go together, or a file that cannot be read; the message says which."""


def add_tls_flags(parser: argparse.ArgumentParser) -> None:
    """``--tls-ca-file`` (the gateway's CA; TLS on) and the client certificate for mutual TLS."""
    parser.add_argument(
        "--tls-ca-file",
        type=Path,
        default=os.environ.get(TLS_CA_ENV) or None,
        metavar="FILE",
        help=f"PEM CA certificates that signed the gateway's certificate; turns TLS on"
        f" (default: none, plaintext; env {TLS_CA_ENV})",
    )
    parser.add_argument(
        "--tls-cert-file", type=Path, metavar="FILE",
        help="PEM client certificate, for a gateway that requires one (mutual TLS); turns TLS on (default: none)",
    )
    parser.add_argument(
        "--tls-key-file", type=Path, metavar="FILE", help="PEM private key of --tls-cert-file (default: none)"
    )


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    """A channel to ``args.server``: TLS when any of the TLS flags is given, else plaintext."""
    ca, certificate, key = args.tls_ca_file, args.tls_cert_file, args.tls_key_file
    if (certificate is None) != (key is None):
        raise ClientTlsError("--tls-cert-file and --tls-key-file go together: a client certificate needs its key")
    if ca is None and certificate is None:
        return grpc.insecure_channel(args.server)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "--tls-ca-file") if ca is not None else None,  # None: the system's CAs
        private_key=_read(key, "--tls-key-file") if key is not None else None,
        certificate_chain=_read(certificate, "--tls-cert-file") if certificate is not None else None,
    )
    return grpc.secure_channel(args.server, credentials)


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ClientTlsError(f"{flag} {path}: {error.strerror or error}") from None
