"""TLS on the inference port, against a live gateway: tritonclient and the turnout commands over TLS,
mutual TLS refusing clients without the right certificate, certificates replaced on SIGHUP without
dropping open connections, and files that refuse to start naming themselves.

The certificates are made for each module by tests/support/certificates.py: a CA, a server
certificate for 127.0.0.1 and localhost, client certificates from that CA and from another one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.support.certificates import Authority, KeyPair, make_authority
from tests.support.gateway_process import REPO_ROOT, GatewayFailedToStart, GatewayProcess
from tests.support.model_repository import copy_digits

TIMEOUT_S = 10.0
BASE_FLAGS = ("--worker-mode", "inprocess", "--poll-interval-s", "0")


@dataclass(frozen=True)
class Certificates:
    ca: Authority
    server: KeyPair
    client: KeyPair  # signed by ca
    other_ca: Authority
    stranger: KeyPair  # a client certificate signed by other_ca


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("certificates")
    ca, other = make_authority(directory, "turnout-test-ca"), make_authority(directory, "other-ca")
    return Certificates(
        ca,
        ca.issue(directory, "gateway"),
        ca.issue(directory, "operator", client=True),
        other,
        other.issue(directory, "stranger", client=True),
    )


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls-models")
    copy_digits(directory, versions=(1,))
    return directory


def tls_flags(server: KeyPair) -> tuple[str, ...]:
    return ("--tls-cert-file", str(server.certificate), "--tls-key-file", str(server.key))


@pytest.fixture(scope="module")
def gateway(repository: Path, certificates: Certificates) -> Iterator[GatewayProcess]:
    with GatewayProcess(repository, *BASE_FLAGS, *tls_flags(certificates.server)) as running:
        yield running


@pytest.fixture(scope="module")
def mutual_gateway(repository: Path, certificates: Certificates) -> Iterator[GatewayProcess]:
    flags = (*tls_flags(certificates.server), "--tls-client-ca-file", str(certificates.ca.certificate))
    with GatewayProcess(repository, *BASE_FLAGS, *flags) as running:
        yield running


def channel_to(address: str, ca: Path | None, client: KeyPair | None = None) -> grpc.Channel:
    """A channel of its own connection (no subchannel shared with another channel): plaintext without ``ca``."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    if ca is None:
        return grpc.insecure_channel(address, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.certificate.read_bytes() if client else None,
    )
    return grpc.secure_channel(address, credentials, options=options)


def live(channel: grpc.Channel) -> bool:
    reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(
        service_pb2.ServerLiveRequest(), timeout=TIMEOUT_S
    )
    return bool(reply.live)


def refused_code(address: str, ca: Path | None, client: KeyPair | None = None) -> grpc.StatusCode:
    """The status a new connection's first call gets; it must fail."""
    with channel_to(address, ca, client) as channel, pytest.raises(grpc.RpcError) as failed:
        live(channel)
    code: grpc.StatusCode = failed.value.code()
    return code


def infer_digits(client: triton.InferenceServerClient, pixels: npt.NDArray[np.float32]) -> np.ndarray:
    batch = pixels[:3]
    inputs = [triton.InferInput("input", list(batch.shape), "FP32")]
    inputs[0].set_data_from_numpy(batch)
    result = client.infer("digits", inputs, client_timeout=TIMEOUT_S)
    probabilities = result.as_numpy("probabilities")
    assert probabilities is not None
    return probabilities


def turnout(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=REPO_ROOT, env=environment, capture_output=True, text=True,
        timeout=60,
    )


def test_tritonclient_infers_over_tls(
    gateway: GatewayProcess, certificates: Certificates, digits_pixels: npt.NDArray[np.float32]
) -> None:
    for host in ("127.0.0.1", "localhost"):  # the certificate names both
        address = f"{host}:{gateway.port}"
        with triton.InferenceServerClient(address, ssl=True, root_certificates=str(certificates.ca.certificate)) as c:
            assert c.is_server_ready()
            assert infer_digits(c, digits_pixels).shape == (3, 10)


def test_a_plaintext_client_or_one_trusting_another_ca_gets_nothing(
    gateway: GatewayProcess, certificates: Certificates
) -> None:
    assert refused_code(gateway.address, None) is grpc.StatusCode.UNAVAILABLE
    assert refused_code(gateway.address, certificates.other_ca.certificate) is grpc.StatusCode.UNAVAILABLE
    with triton.InferenceServerClient(gateway.address) as plaintext, pytest.raises(InferenceServerException):
        plaintext.is_server_live(client_timeout=TIMEOUT_S)


def test_turnout_commands_talk_tls_with_the_ca_file(gateway: GatewayProcess, certificates: Certificates) -> None:
    # The control commands talk to the control address, which serves TLS with the same certificate.
    server, ca = ("--server", gateway.control_address), ("--tls-ca-file", str(certificates.ca.certificate))
    done = turnout("policy", "digits", "--stable", "1", "--reason", "over TLS", *server, *ca)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert "stable  v1" in done.stdout
    history = turnout("history", "digits", *server, *ca)
    assert history.returncode == 0 and "over TLS" in history.stdout
    assert turnout("status", "digits", *server, *ca).returncode == 0
    inference = ("--server", gateway.address)
    assert turnout("health", *inference, *ca).stdout.strip() == "SERVING"
    plaintext = turnout("status", "digits", *server)
    assert plaintext.returncode == 1 and "UNAVAILABLE" in plaintext.stderr
    assert turnout("health", *inference).stdout.startswith("UNREACHABLE")
    half = turnout("status", *server, *ca, "--tls-cert-file", str(certificates.client.certificate))
    assert half.returncode == 2 and "--tls-cert-file and --tls-key-file go together" in half.stderr


def test_the_ca_file_also_comes_from_the_environment(gateway: GatewayProcess, certificates: Certificates) -> None:
    environment = {**os.environ, "TURNOUT_TLS_CA_FILE": str(certificates.ca.certificate)}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "status", "digits", "--server", gateway.control_address],
        cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")


def test_mutual_tls_refuses_clients_without_a_certificate_from_its_ca(
    mutual_gateway: GatewayProcess, certificates: Certificates
) -> None:
    address, ca = mutual_gateway.address, certificates.ca.certificate
    assert refused_code(address, ca) is grpc.StatusCode.UNAVAILABLE, "no client certificate"
    assert refused_code(address, ca, certificates.stranger) is grpc.StatusCode.UNAVAILABLE, "another CA's"
    assert refused_code(address, None) is grpc.StatusCode.UNAVAILABLE, "plaintext"
    with channel_to(address, ca, certificates.client) as channel:
        assert live(channel)


def test_mutual_tls_with_tritonclient_and_the_turnout_commands(
    mutual_gateway: GatewayProcess, certificates: Certificates, digits_pixels: npt.NDArray[np.float32]
) -> None:
    client = certificates.client
    with triton.InferenceServerClient(
        mutual_gateway.address,
        ssl=True,
        root_certificates=str(certificates.ca.certificate),
        private_key=str(client.key),
        certificate_chain=str(client.certificate),
    ) as connected:
        assert infer_digits(connected, digits_pixels).shape == (3, 10)
    ca = ("--tls-ca-file", str(certificates.ca.certificate))
    mine = ("--tls-cert-file", str(client.certificate), "--tls-key-file", str(client.key))
    inference = ("--server", mutual_gateway.address)
    assert turnout("health", *inference, *ca, *mine).stdout.strip() == "SERVING"
    assert turnout("health", *inference, *ca).stdout.startswith("UNREACHABLE"), "no client certificate"
    other = certificates.stranger
    stranger = ("--tls-cert-file", str(other.certificate), "--tls-key-file", str(other.key))
    assert turnout("health", *inference, *ca, *stranger).stdout.startswith("UNREACHABLE")
    # The inference port's client CA is not the control plane's: that one is --control-client-ca-file.
    done = turnout("status", "digits", "--server", mutual_gateway.control_address, *ca, *mine)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr


def test_a_client_certificate_from_the_control_ca_is_the_control_credential_and_its_subject_the_actor(
    repository: Path, certificates: Certificates
) -> None:
    flags = (*tls_flags(certificates.server), "--control-client-ca-file", str(certificates.ca.certificate))
    with GatewayProcess(repository, *BASE_FLAGS, *flags) as gateway:
        control = ("--server", gateway.control_address, "--tls-ca-file", str(certificates.ca.certificate))
        client = certificates.client
        mine = ("--tls-cert-file", str(client.certificate), "--tls-key-file", str(client.key))
        done = turnout("policy", "digits", "--stable", "1", "--reason", "by certificate", *control, *mine)
        assert (done.returncode, done.stderr) == (0, ""), done.stderr
        history = turnout("history", "digits", *control, *mine)
        assert history.returncode == 0 and "CN=operator" in history.stdout, history.stdout
        # Without a certificate, or with one from another CA, the handshake itself is refused.
        bare = turnout("policy", "digits", "--stable", "1", "--reason", "no certificate", *control)
        assert bare.returncode == 1 and "UNAVAILABLE" in bare.stderr, bare.stderr
        other = certificates.stranger
        stranger = ("--tls-cert-file", str(other.certificate), "--tls-key-file", str(other.key))
        assert turnout("status", "digits", *control, *stranger).returncode == 1
        # The inference port does not ask for a certificate: only the control listener does.
        with triton.InferenceServerClient(
            gateway.address, ssl=True, root_certificates=str(certificates.ca.certificate)
        ) as connected:
            assert connected.is_server_ready()


def replace_files(source: KeyPair, target: KeyPair) -> None:
    """Put new certificate files in place as an operator's tooling would: written beside, then renamed."""
    for new, old in ((source.certificate, target.certificate), (source.key, target.key)):
        staged = old.with_suffix(".new")
        shutil.copyfile(new, staged)
        os.replace(staged, old)


@pytest.fixture
def serving_files(tmp_path: Path, certificates: Certificates) -> KeyPair:
    """The server's certificate and key, copied where a test may replace them."""
    files = KeyPair(tmp_path / "serving.pem", tmp_path / "serving.key")
    replace_files(certificates.server, files)
    return files


def test_sighup_takes_new_certificates_for_new_connections_and_keeps_open_ones(
    repository: Path, tmp_path: Path, certificates: Certificates, serving_files: KeyPair
) -> None:
    new_ca = make_authority(tmp_path / "new", "rotated-ca")
    old_ca = certificates.ca.certificate
    with GatewayProcess(repository, *BASE_FLAGS, *tls_flags(serving_files)) as gateway:
        address = gateway.address
        with channel_to(address, old_ca) as open_before:
            assert all(live(open_before) for _ in range(5))
            replace_files(new_ca.issue(tmp_path / "new", "gateway"), serving_files)
            assert gateway.process is not None
            gateway.process.send_signal(signal.SIGHUP)
            gateway.wait_for_log("TLS certificates reloaded")
            assert all(live(open_before) for _ in range(5)), "the connection made before the reload still serves"
            with channel_to(address, new_ca.certificate) as trusting_new:
                assert live(trusting_new)
            assert refused_code(address, old_ca) is grpc.StatusCode.UNAVAILABLE

            # Files that are wrong change nothing: the certificates in use stay, and one line says why.
            serving_files.certificate.write_text("not a certificate\n")
            gateway.process.send_signal(signal.SIGHUP)
            log = gateway.wait_for_log("TLS certificates not reloaded")
            assert str(serving_files.certificate) in log
            with channel_to(address, new_ca.certificate) as still_new:
                assert live(still_new)
            assert live(open_before)
        assert gateway.process.poll() is None, "SIGHUP does not stop the gateway"


def test_sighup_rereads_the_client_ca(
    repository: Path, tmp_path: Path, certificates: Certificates, serving_files: KeyPair
) -> None:
    client_ca = tmp_path / "clients.pem"
    shutil.copyfile(certificates.ca.certificate, client_ca)
    flags = (*BASE_FLAGS, *tls_flags(serving_files), "--tls-client-ca-file", str(client_ca))
    server_ca = certificates.ca.certificate
    with GatewayProcess(repository, *flags) as gateway:
        with channel_to(gateway.address, server_ca, certificates.client) as channel:
            assert live(channel)
        assert refused_code(gateway.address, server_ca, certificates.stranger) is grpc.StatusCode.UNAVAILABLE
        shutil.copyfile(certificates.other_ca.certificate, client_ca)
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGHUP)
        gateway.wait_for_log("TLS certificates reloaded")
        with channel_to(gateway.address, server_ca, certificates.stranger) as channel:
            assert live(channel), "a client of the new CA gets in"
        assert refused_code(gateway.address, server_ca, certificates.client) is grpc.StatusCode.UNAVAILABLE


def test_sighup_to_the_supervisor_reaches_every_gateway_process(
    repository: Path, tmp_path: Path, serving_files: KeyPair
) -> None:
    new_ca = make_authority(tmp_path / "new", "rotated-ca")
    flags = (*BASE_FLAGS, "--processes", "2", *tls_flags(serving_files))
    with GatewayProcess(repository, *flags) as supervisor:
        replace_files(new_ca.issue(tmp_path / "new", "gateway"), serving_files)
        assert supervisor.process is not None
        supervisor.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + TIMEOUT_S
        while supervisor.log().count("TLS certificates reloaded") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert supervisor.log().count("TLS certificates reloaded") == 2, "each gateway process reloaded"
        # The kernel spreads new connections over the two processes: each must have taken them.
        for _ in range(8):
            with channel_to(supervisor.address, new_ca.certificate) as channel:
                assert live(channel)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("processes", ["1", "2"])
def test_files_that_are_not_pem_refuse_to_start_naming_the_file(
    repository: Path, tmp_path: Path, certificates: Certificates, processes: str
) -> None:
    garbage = write(tmp_path / "garbage.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    missing = tmp_path / "missing.pem"
    server, other_key = certificates.server, certificates.client.key
    cases = [
        (("--tls-cert-file", str(missing), "--tls-key-file", str(server.key)), str(missing)),
        (("--tls-cert-file", str(garbage), "--tls-key-file", str(server.key)), str(garbage)),
        (("--tls-cert-file", str(server.certificate), "--tls-key-file", str(garbage)), str(garbage)),
        (("--tls-cert-file", str(server.certificate), "--tls-key-file", str(other_key)), str(other_key)),
        ((*tls_flags(server), "--tls-client-ca-file", str(garbage)), str(garbage)),
    ]
    for flags, named in cases:
        with pytest.raises(GatewayFailedToStart) as refused:
            GatewayProcess(repository, *BASE_FLAGS, "--processes", processes, *flags).start()
        assert "exit 2" in str(refused.value) and named in str(refused.value), str(refused.value)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--tls-cert-file", "c.pem"), "--tls-cert-file needs --tls-key-file too"),
        (("--tls-key-file", "k.pem"), "--tls-key-file needs --tls-cert-file too"),
        (("--tls-client-ca-file", "ca.pem"), "--tls-client-ca-file needs --tls-cert-file and --tls-key-file"),
    ],
)
def test_half_a_tls_configuration_refuses_to_start(repository: Path, flags: tuple[str, ...], message: str) -> None:
    with pytest.raises(GatewayFailedToStart, match=message):
        GatewayProcess(repository, *BASE_FLAGS, *flags).start()


def test_tritons_tls_flags_serve_tls(
    repository: Path, certificates: Certificates, digits_pixels: npt.NDArray[np.float32]
) -> None:
    server, client = certificates.server, certificates.client
    triton_flags = (
        "--grpc-use-ssl-mutual=true", f"--grpc-server-cert={server.certificate}",
        f"--grpc-server-key={server.key}", f"--grpc-root-cert={certificates.ca.certificate}",
    )
    with GatewayProcess(repository, *BASE_FLAGS, *triton_flags) as gateway:
        assert refused_code(gateway.address, certificates.ca.certificate) is grpc.StatusCode.UNAVAILABLE
        with triton.InferenceServerClient(
            gateway.address, ssl=True, root_certificates=str(certificates.ca.certificate),
            private_key=str(client.key), certificate_chain=str(client.certificate),
        ) as connected:
            assert infer_digits(connected, digits_pixels).shape == (3, 10)
