"""``RepositoryModelLoad``/``Unload`` through one of two gateway processes act in both.

Behind SO_REUSEPORT each new connection may land on either process, as behind a load balancer, so a
model unloaded through one connection must be unloaded on every connection, and stay so in a gateway
process the supervisor starts again.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.support.gateway_process import GatewayProcess
from tests.support.model_repository import copy_digits, identity_model, save_version

CONNECTIONS = 16
# Loads and unloads on the inference port need the control plane's credentials: a token, whose name
# is the actor every process logs.
TOKEN = "repository-token-0123456789"
ACTOR = (("authorization", f"Bearer {TOKEN}"),)
REVOKED = "revoked-token-0123456789"  # revoked by the last test
FOLLOWED_UNLOAD = "unloaded model 'digits' as test-repository asked through another process"


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("control") / "tokens"
    path.write_text(f"test-repository {TOKEN}\nsoon-revoked {REVOKED}\n")
    return path


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, tokens: Path) -> Iterator[GatewayProcess]:
    repository = tmp_path_factory.mktemp("repository")
    copy_digits(repository, versions=(1,))
    save_version(repository, "identity", 1, identity_model("FP32"))
    flags = ("--processes", "2", "--poll-interval-s", "0", "--control-tokens-file", str(tokens))
    with GatewayProcess(repository, *flags) as running:
        yield running


def stub_on_own_connection(address: str) -> tuple[grpc.Channel, service_pb2_grpc.GRPCInferenceServiceStub]:
    # A private subchannel pool gives each stub its own TCP connection, which the kernel hands to
    # either process.
    channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


def load(address: str, model: str) -> None:
    channel, stub = stub_on_own_connection(address)
    with channel:
        stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name=model), metadata=ACTOR, timeout=60)


def unload(address: str, model: str) -> None:
    channel, stub = stub_on_own_connection(address)
    with channel:
        request = service_pb2.RepositoryModelUnloadRequest(model_name=model)
        stub.RepositoryModelUnload(request, metadata=ACTOR, timeout=60)


def digits_request() -> service_pb2.ModelInferRequest:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 64])
    return service_pb2.ModelInferRequest(
        model_name="digits", inputs=[tensor], raw_input_contents=[np.zeros((1, 64), np.float32).tobytes()]
    )


def identity_request() -> service_pb2.ModelInferRequest:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4])
    return service_pb2.ModelInferRequest(
        model_name="identity", inputs=[tensor], raw_input_contents=[np.ones((1, 4), np.float32).tobytes()]
    )


def digits_on_every_connection(address: str) -> list[tuple[bool, str]]:
    """(ModelReady, ModelInfer's status code name) for digits, each from a new connection; identity
    must serve on every one whatever happens to digits."""
    seen = []
    for _ in range(CONNECTIONS):
        channel, stub = stub_on_own_connection(address)
        with channel:
            ready = stub.ModelReady(service_pb2.ModelReadyRequest(name="digits"), timeout=10).ready
            try:
                stub.ModelInfer(digits_request(), timeout=10)
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name
            assert stub.ModelInfer(identity_request(), timeout=10).model_name == "identity"
            seen.append((ready, code))
    return seen


def gateway_children(supervisor: int) -> list[int]:
    listing = subprocess.run(["pgrep", "-P", str(supervisor)], capture_output=True, text=True, check=False)
    pids = [int(pid) for pid in listing.stdout.split()]
    return [pid for pid in pids if "--worker-broker" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]


def test_an_unload_and_a_load_through_one_process_act_in_every_process(gateway: GatewayProcess) -> None:
    assert set(digits_on_every_connection(gateway.address)) == {(True, "OK")}
    unload(gateway.address, "digits")
    # The call returned only once the other process had followed it.
    assert gateway.log().count(FOLLOWED_UNLOAD) == 1
    assert set(digits_on_every_connection(gateway.address)) == {(False, "UNAVAILABLE")}

    load(gateway.address, "digits")
    assert re.search(r"(?<!un)loaded model 'digits' as test-repository asked through another process", gateway.log())
    assert set(digits_on_every_connection(gateway.address)) == {(True, "OK")}


def test_a_restarted_process_follows_an_unload_made_before_it_started(gateway: GatewayProcess) -> None:
    assert gateway.process is not None
    unload(gateway.address, "digits")
    followed = gateway.log().count(FOLLOWED_UNLOAD)
    victim = gateway_children(gateway.process.pid)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while gateway.log().count(FOLLOWED_UNLOAD) == followed:  # the new process unloads it before it serves
        assert time.monotonic() < deadline, f"no restarted process followed the unload:\n{gateway.log()}"
        time.sleep(0.1)
    while len(gateway_children(gateway.process.pid)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(0.5)  # its port opens after it has followed the unload
    assert set(digits_on_every_connection(gateway.address)) == {(False, "UNAVAILABLE")}

    load(gateway.address, "digits")
    assert set(digits_on_every_connection(gateway.address)) == {(True, "OK")}


def test_loading_a_model_the_repository_lacks_is_refused_and_recorded_nowhere(gateway: GatewayProcess) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        load(gateway.address, "absent")
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND
    assert "absent" in (refused.value.details() or "")
    assert "model 'absent' as test-repository" not in gateway.log()


def listening_sockets(port: int) -> int:
    """How many sockets listen on ``port``, read from /proc/net (state 0A is LISTEN); grpc listens on
    IPv6 sockets with v4-mapped addresses, so both tables count."""
    rows = [row for table in ("tcp", "tcp6") for row in Path(f"/proc/net/{table}").read_text().splitlines()[1:]]
    return sum(1 for row in rows if row.split()[1].endswith(f":{port:04X}") and row.split()[3] == "0A")


def test_both_processes_serve_the_control_listener_on_one_port(gateway: GatewayProcess) -> None:
    port = int(gateway.control_address.rsplit(":", 1)[1])
    assert port not in (0, gateway.port)
    assert listening_sockets(port) == 2, "each gateway process listens on the control port (SO_REUSEPORT)"
    # Any connection, whichever process takes it, needs the token, and is served with it.
    for _ in range(4):
        channel, stub = stub_on_own_connection(gateway.control_address)
        with channel:
            with pytest.raises(grpc.RpcError) as refused:
                stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name="digits"), timeout=10)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
            index = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=10)
            assert {model.name for model in index.models} == {"digits", "identity"}


def test_sighup_to_the_supervisor_rereads_the_tokens_in_every_process(gateway: GatewayProcess, tokens: Path) -> None:
    assert gateway.process is not None
    load_identity = service_pb2.RepositoryModelLoadRequest(model_name="identity")
    revoked = (("authorization", f"Bearer {REVOKED}"),)
    channel, stub = stub_on_own_connection(gateway.control_address)
    with channel:
        stub.RepositoryModelLoad(load_identity, metadata=revoked, timeout=60)
    tokens.write_text(f"test-repository {TOKEN}\n")
    gateway.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while gateway.log().count("control tokens re-read") < 2:  # one line from each gateway process
        assert time.monotonic() < deadline, gateway.log()
        time.sleep(0.1)
    for _ in range(CONNECTIONS):  # whichever process a connection lands on
        channel, stub = stub_on_own_connection(gateway.control_address)
        with channel:
            with pytest.raises(grpc.RpcError) as refused:
                stub.RepositoryModelLoad(load_identity, metadata=revoked, timeout=60)
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
            stub.RepositoryModelLoad(load_identity, metadata=ACTOR, timeout=60)
