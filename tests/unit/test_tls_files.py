"""Reading the TLS files: what is refused and named, what a reload keeps, and settings that do not go together."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.edge.tls import ServerTls, TlsFileError, read_certificates, read_key_pair
from gateway.settings import Settings
from tests.support.certificates import Authority, make_authority


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return make_authority(tmp_path_factory.mktemp("ca"), "unit-ca")


def test_a_certificate_and_its_key_are_read(ca: Authority, tmp_path: Path) -> None:
    server = ca.issue(tmp_path, "gateway")
    chain, key = read_key_pair(server.certificate, server.key)
    assert chain.startswith(b"-----BEGIN CERTIFICATE-----") and b"PRIVATE KEY" in key


@pytest.mark.parametrize("content", ["", "hello\n", "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n"])
def test_what_is_not_a_pem_certificate_is_refused_by_name(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.pem"
    path.write_text(content)
    with pytest.raises(TlsFileError, match=f"client CA file {path} holds no valid PEM certificate"):
        read_certificates(path, "client CA file")


def test_a_missing_file_and_a_key_of_another_certificate_are_refused_by_name(ca: Authority, tmp_path: Path) -> None:
    server, other = ca.issue(tmp_path, "gateway"), ca.issue(tmp_path, "other")
    with pytest.raises(TlsFileError, match=f"cannot read the certificate file {tmp_path / 'nope.pem'}"):
        read_key_pair(tmp_path / "nope.pem", server.key)
    with pytest.raises(TlsFileError, match=f"key file {other.key} holds no valid PEM private key"):
        read_key_pair(server.certificate, other.key)


def test_a_reload_with_a_broken_file_keeps_the_old_material_and_says_why(
    ca: Authority, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = ca.issue(tmp_path, "gateway")
    tls = ServerTls(server.certificate, server.key)
    tls.credentials(ca.certificate, require_client_auth=True)
    assert tls.reload()
    ca.issue(tmp_path, "gateway")  # new files in the same place
    assert tls.reload()
    server.key.write_text("gone\n")
    with caplog.at_level(logging.ERROR, logger="gateway.edge.tls"):
        assert not tls.reload()
    (line,) = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert line.startswith("TLS certificates not reloaded, the old ones stay in use") and str(server.key) in line


def test_client_certificates_need_a_ca(ca: Authority, tmp_path: Path) -> None:
    server = ca.issue(tmp_path, "gateway")
    with pytest.raises(ValueError, match="needs a client CA file"):
        ServerTls(server.certificate, server.key).credentials(None, require_client_auth=True)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tls_cert_file": "c.pem"}, "--tls-cert-file needs --tls-key-file too"),
        ({"tls_key_file": "k.pem"}, "--tls-key-file needs --tls-cert-file too"),
        ({"tls_client_ca_file": "ca.pem"}, "--tls-client-ca-file needs --tls-cert-file and --tls-key-file"),
    ],
)
def test_half_a_tls_configuration_is_not_settings(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**fields)  # type: ignore[arg-type]
