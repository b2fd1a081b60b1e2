"""Server TLS credentials whose certificate, key and client CAs can be re-read while serving.

One :class:`ServerTls` holds the server's certificate and key and every client CA a listener asked
for. Each listener gets its own ``grpc`` credentials from :meth:`ServerTls.credentials` (the
inference port with ``--tls-client-ca-file``; another listener may name another CA, or none).
They are gRPC's dynamic credentials: gRPC asks a fetcher at each new handshake, and the fetcher
hands over new material only after :meth:`ServerTls.reload` read some, so connections already
open keep the session they have while new ones get the new certificate.

Files are checked with the standard ``ssl`` module before gRPC sees them: gRPC takes any bytes and
fails every handshake later, and an operator must hear which file is wrong at start, not from
clients.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from gateway.settings import Settings

log = logging.getLogger(__name__)


class TlsFileError(ValueError):
    """A certificate, key or CA file that cannot be read or is not valid PEM; the message names it."""


@dataclass(frozen=True)
class _Material:
    """One reading of every file, with the number of the reading that produced it."""

    generation: int
    certificate_chain: bytes
    private_key: bytes
    client_cas: dict[Path, bytes]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TlsFileError(f"cannot read the {what} {path}: {error.strerror or error}") from None


def read_certificates(path: Path, what: str) -> bytes:
    """The PEM certificates in ``path``; TlsFileError naming the file when there are none or they do not parse."""
    data = _read(path, what)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cadata=data.decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as error:
        raise TlsFileError(f"the {what} {path} holds no valid PEM certificate ({error})") from None
    return data


def read_key_pair(certificate: Path, key: Path) -> tuple[bytes, bytes]:
    """The certificate chain and private key, checked to parse and to belong together."""
    chain = read_certificates(certificate, "certificate file")
    private_key = _read(key, "key file")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certificate, key)
    except (ssl.SSLError, ValueError) as error:
        raise TlsFileError(
            f"the key file {key} holds no valid PEM private key for the certificate in {certificate} ({error})"
        ) from None
    return chain, private_key


class ServerTls:
    """The server's certificate and key, and the client CAs its listeners trust; reloadable."""

    def __init__(self, certificate: Path, key: Path) -> None:
        """Reads and checks both files now: TlsFileError names the one that is wrong."""
        self._certificate = certificate
        self._key = key
        self._lock = threading.Lock()
        chain, private_key = read_key_pair(certificate, key)
        self._material = _Material(0, chain, private_key, {})

    def credentials(self, client_ca: Path | None, require_client_auth: bool) -> grpc.ServerCredentials:
        """Credentials for one listener: this certificate, and clients checked against ``client_ca``.

        With ``require_client_auth`` a client without a certificate from ``client_ca`` is refused at
        the handshake. ``client_ca`` is read now (TlsFileError names it) and again on each reload.
        """
        if require_client_auth and client_ca is None:
            raise ValueError("requiring client certificates needs a client CA file")
        if client_ca is not None:
            self._add_client_ca(client_ca)
        initial = self._configuration(self._material, client_ca)
        return grpc.dynamic_ssl_server_credentials(
            initial, self._fetcher(client_ca), require_client_authentication=require_client_auth
        )

    def _add_client_ca(self, client_ca: Path) -> None:
        cas = read_certificates(client_ca, "client CA file")
        with self._lock:
            material = self._material
            self._material = _Material(
                material.generation, material.certificate_chain, material.private_key,
                {**material.client_cas, client_ca: cas},
            )

    def reload(self) -> bool:
        """Re-read every file. New handshakes use what was read; open connections are left alone.

        When a file is missing or invalid nothing changes, the old certificates stay in use, and one
        line says which file and why. Returns whether the new files were taken.
        """
        with self._lock:
            old = self._material
            try:
                chain, private_key = read_key_pair(self._certificate, self._key)
                cas = {path: read_certificates(path, "client CA file") for path in old.client_cas}
            except TlsFileError as error:
                log.error("TLS certificates not reloaded, the old ones stay in use: %s", error)
                return False
            self._material = _Material(old.generation + 1, chain, private_key, cas)
        log.info("TLS certificates reloaded from %s", self._certificate)
        return True

    def _fetcher(self, client_ca: Path | None) -> Callable[[], grpc.ServerCertificateConfiguration | None]:
        """gRPC calls this at each new handshake: a new configuration once per reload, else None (keep)."""
        handed_out = self._material.generation

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal handed_out
            material = self._material  # one reference read: a reload swaps the whole object
            if material.generation == handed_out:
                return None
            handed_out = material.generation
            return self._configuration(material, client_ca)

        return fetch

    @staticmethod
    def _configuration(material: _Material, client_ca: Path | None) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(material.private_key, material.certificate_chain)],
            root_certificates=material.client_cas[client_ca] if client_ca is not None else None,
        )


def server_tls(settings: Settings) -> ServerTls | None:
    """The gateway's TLS when ``--tls-cert-file`` is given; TlsFileError names a file that is wrong."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    tls = ServerTls(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_client_ca_file is not None:  # checked now too, before the gateway opens anything else
        read_certificates(settings.tls_client_ca_file, "client CA file")
    return tls


def inference_credentials(settings: Settings, tls: ServerTls) -> grpc.ServerCredentials:
    """The inference port's credentials: with ``--tls-client-ca-file``, only that CA's clients get in."""
    client_ca = settings.tls_client_ca_file
    return tls.credentials(client_ca, require_client_auth=client_ca is not None)
