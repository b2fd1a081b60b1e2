"""Makes a certificate authority and the server and client certificates it signs, as PEM files, for tests.

Every certificate names 127.0.0.1 and localhost, so a client can reach a test gateway by either
and check its name. Keys are P-256: quick to make, and what gRPC's TLS takes as well as RSA.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID = datetime.timedelta(days=2)
_NAMES = x509.SubjectAlternativeName(
    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
)


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, each in a PEM file."""

    certificate: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    """A self-signed CA: its files, and what signing with it needs."""

    files: KeyPair
    name: x509.Name
    private_key: ec.EllipticCurvePrivateKey

    @property
    def certificate(self) -> Path:
        return self.files.certificate

    def issue(self, directory: Path, common_name: str, *, client: bool = False) -> KeyPair:
        """A leaf certificate signed by this CA, for a server or (``client``) a client; written to
        ``directory/<common_name>.pem`` and ``directory/<common_name>.key``."""
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        certificate = (
            _builder(_name(common_name), self.name, key)
            .add_extension(_NAMES, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self.private_key, hashes.SHA256())
        )
        return _write(directory, common_name, certificate, key)


def make_authority(directory: Path, common_name: str) -> Authority:
    """A new CA, written to ``directory/<common_name>.pem`` and ``.key``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    certificate = (
        _builder(name, name, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Authority(_write(directory, common_name, certificate, key), name, key)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # a clock a little behind still accepts it
        .not_valid_after(now + _VALID)
    )


def _write(
    directory: Path, common_name: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> KeyPair:
    files = KeyPair(directory / f"{common_name}.pem", directory / f"{common_name}.key")
    files.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files
