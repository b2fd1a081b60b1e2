"""Routing policy in one gateway process: the implicit stable, pins, canary splits, refusals, loading on
demand, promote and rollback with their audit trail, shadows that never touch the caller, restarts.

Every scenario family owns its own model (a copy of the digits example under another name), so the
tests share one gateway without sharing a policy. Answers are read with a raw gRPC stub because
tritonclient does not expose trailing metadata, where the routing decision travels.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.routing.decide import bucket_of
from gateway.state.sqlite_store import SqliteStateStore
from gateway.wire.turnout.v1 import rollouts_pb2 as pb
from gateway.wire.turnout.v1 import rollouts_pb2_grpc as pb_grpc
from tests.support.gateway_process import GatewayProcess
from tests.support.model_repository import EXAMPLES

Pixels = npt.NDArray[np.float32]
Metadata = Sequence[tuple[str, str]]

# With no tokens on a loopback control address, every local caller may act, recorded by its host.
ACTOR = "local:127.0.0.1"
STICKY = "x-user-id"
TIMEOUT_S = 20.0
Z_999 = 3.2905  # two-sided 99.9% normal quantile
LATEST_ONE_YAML = "version_policy: {latest: {num_versions: 1}}\n"


# --- building repositories -----------------------------------------------------------------------


def add_digits(repository: Path, name: str, versions: dict[int, int], model_yaml: str | None = None) -> Path:
    """Model ``name`` whose version N is a copy of digits version ``versions[N]``."""
    target = repository / name
    for number, source in versions.items():
        shutil.copytree(EXAMPLES / "digits" / str(source), target / str(number))
    (target / "model.yaml").write_text(
        model_yaml if model_yaml is not None else (EXAMPLES / "digits" / "model.yaml").read_text()
    )
    return target


def add_echo_version(model_dir: Path, version: int, **behaviour: object) -> None:
    """An echo version taking the digits input; ``delay_ms`` and ``fail`` make it slow or broken."""
    declaration = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}], **behaviour}
    (model_dir / str(version)).mkdir(parents=True)
    (model_dir / str(version) / "model.echo.json").write_text(json.dumps(declaration))


def add_corrupt_version(model_dir: Path, version: int) -> None:
    (model_dir / str(version)).mkdir(parents=True)
    (model_dir / str(version) / "model.onnx").write_bytes(np.random.default_rng(7).bytes(4096))


# --- talking to the gateway ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    version: str
    arm: str
    generation: int
    outputs: tuple[tuple[str, bytes], ...]  # (name, raw bytes) in the response's order

    @property
    def decision(self) -> tuple[str, str, int]:
        return self.version, self.arm, self.generation

    def output(self, name: str, dtype: type[np.generic], width: int | None = None) -> npt.NDArray[Any]:
        values = np.frombuffer(dict(self.outputs)[name], dtype)
        return values.reshape(-1, width) if width else values


def infer_request(model: str, pixels: Pixels, version: str = "") -> service_pb2.ModelInferRequest:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=list(pixels.shape))
    return service_pb2.ModelInferRequest(
        model_name=model,
        model_version=version,
        inputs=[tensor],
        raw_input_contents=[np.ascontiguousarray(pixels, dtype=np.float32).tobytes()],
    )


class Client:
    """Two channels to a gateway: inference through the raw stub, control through Rollouts on the control address."""

    def __init__(self, address: str, control_address: str, metadata: Metadata = ()) -> None:
        self.channel = grpc.insecure_channel(address)
        self.control_channel = grpc.insecure_channel(control_address)
        self.inference = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.rollouts = pb_grpc.RolloutsStub(self.control_channel)
        self.metadata = tuple(metadata)

    def close(self) -> None:
        self.channel.close()
        self.control_channel.close()

    # inference

    def infer(self, model: str, pixels: Pixels, version: str = "", metadata: Metadata = ()) -> Answer:
        response, call = self.inference.ModelInfer.with_call(
            infer_request(model, pixels, version), metadata=tuple(metadata), timeout=TIMEOUT_S
        )
        trailers = dict(call.trailing_metadata())
        assert trailers["turnout-version"] == response.model_version
        return Answer(
            response.model_version,
            str(trailers["turnout-arm"]),
            int(trailers["turnout-generation"]),
            tuple(zip([o.name for o in response.outputs], response.raw_output_contents, strict=True)),
        )

    def index(self) -> dict[tuple[str, str], str]:
        """(model, version) -> state, from the repository index."""
        found = self.inference.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=TIMEOUT_S)
        return {(entry.name, entry.version): entry.state for entry in found.models}

    # control

    def policy(self, model: str) -> pb.PolicyState:
        return self.rollouts.GetPolicy(pb.GetPolicyRequest(model=model), timeout=TIMEOUT_S)

    def set_policy(self, model: str, policy: pb.Policy, reason: str = "") -> pb.PolicyState:
        request = pb.SetPolicyRequest(model=model, policy=policy, reason=reason)
        return self.rollouts.SetPolicy(request, metadata=self.metadata, timeout=TIMEOUT_S)

    def canary(self, model: str, version: int, weight: float, sticky_key: str = "", reason: str = "") -> pb.PolicyState:
        request = pb.SetCanaryRequest(
            model=model, version=version, weight_percent=weight, sticky_key=sticky_key, reason=reason
        )
        return self.rollouts.SetCanary(request, metadata=self.metadata, timeout=TIMEOUT_S)

    def shadow(self, model: str, version: int, fraction: float, reason: str = "") -> pb.PolicyState:
        request = pb.SetShadowRequest(model=model, version=version, fraction=fraction, reason=reason)
        return self.rollouts.SetShadow(request, metadata=self.metadata, timeout=TIMEOUT_S)

    def promote(self, model: str, reason: str = "") -> pb.PolicyState:
        request = pb.PromoteRequest(model=model, reason=reason)
        return self.rollouts.Promote(request, metadata=self.metadata, timeout=TIMEOUT_S)

    def rollback(self, model: str, reason: str = "") -> pb.PolicyState:
        request = pb.RollbackRequest(model=model, reason=reason)
        return self.rollouts.Rollback(request, metadata=self.metadata, timeout=TIMEOUT_S)

    def history(self, model: str) -> list[pb.PolicyChange]:
        return list(self.rollouts.History(pb.HistoryRequest(model=model), timeout=TIMEOUT_S).changes)

    def versions(self, model: str) -> dict[int, pb.VersionInfo]:
        listed = self.rollouts.ListVersions(pb.ListVersionsRequest(model=model), timeout=TIMEOUT_S)
        return {info.version: info for info in listed.versions}

    def figures(self, model: str) -> dict[tuple[int, int], pb.ShadowFigures]:
        found = self.rollouts.GetShadowComparison(pb.ShadowComparisonRequest(model=model), timeout=TIMEOUT_S)
        return {(item.primary_version, item.shadow_version): item for item in found.figures}


def refused(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def stable_only(version: int, sticky_key: str = "") -> pb.Policy:
    return pb.Policy(stable=version, sticky_key=sticky_key)


def eventually(check: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def within_binomial_interval(hits: int, n: int, p: float) -> bool:
    margin = Z_999 * math.sqrt(n * p * (1 - p))
    return n * p - margin <= hits <= n * p + margin


def stream_answers(client: Client, requests: list[service_pb2.ModelInferRequest]) -> list[Any]:
    """Send every request on one ModelStreamInfer stream; the answers in arrival order."""
    responses = client.inference.ModelStreamInfer(iter(requests), timeout=TIMEOUT_S)
    answers = []
    for message in responses:
        assert message.error_message == ""
        answers.append(message.infer_response)
    return answers


# --- the shared gateway: one model per scenario family -------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    repository = tmp_path_factory.mktemp("rollouts")
    for name in ("implicit", "pins", "split", "sticky", "arrivals", "audit"):
        add_digits(repository, name, {1: 1, 2: 2})
    # Version 1 is loaded only once a policy names it, so the log tells whether a rollback loaded it.
    add_digits(repository, "trial", {1: 1, 2: 2}, model_yaml=LATEST_ONE_YAML)
    refusals = add_digits(repository, "refusals", {1: 1, 2: 2})
    add_corrupt_version(refusals, 7)
    add_digits(repository, "ondemand", {1: 1, 2: 2}, model_yaml=LATEST_ONE_YAML)
    with GatewayProcess(repository, "--worker-mode", "inprocess", "--poll-interval-s", "0.2") as running:
        yield running


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> Iterator[Client]:
    opened = Client(gateway.address, gateway.control_address)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def one_row(digits_pixels: Pixels) -> Pixels:
    return digits_pixels[:1]


# --- the implicit policy, then the first explicit one --------------------------------------------


def test_the_highest_ready_version_is_stable_until_a_policy_names_another(client: Client, one_row: Pixels) -> None:
    implicit = client.policy("implicit")
    assert (implicit.policy.stable, implicit.explicit, implicit.generation) == (2, False, 0)
    assert not implicit.policy.HasField("canary") and list(implicit.policy.shadows) == []
    assert client.history("implicit") == []
    assert client.infer("implicit", one_row).decision == ("2", "stable", 0)
    assert client.infer("implicit", one_row, version="1").decision == ("1", "pinned", 0)

    state = client.set_policy("implicit", stable_only(1), reason="pin the fleet to v1")
    assert (state.policy.stable, state.explicit) == (1, True) and state.generation > 0
    assert len(state.applied_by) == 1, "the one gateway process confirmed it routes by the change"
    assert client.policy("implicit") == pb.PolicyState(
        model="implicit", policy=state.policy, generation=state.generation, explicit=True
    )
    assert {client.infer("implicit", one_row).decision for _ in range(20)} == {("1", "stable", state.generation)}
    roles = {number: info.role for number, info in client.versions("implicit").items()}
    assert roles == {1: "stable", 2: ""}


# --- pins ----------------------------------------------------------------------------------------


def test_pins_beat_the_policy_by_model_version_or_header(client: Client, one_row: Pixels) -> None:
    policy = pb.Policy(stable=1, canary=pb.Canary(version=2, weight_bp=10_000), sticky_key=STICKY)
    generation = client.set_policy("pins", policy).generation
    sticky = ((STICKY, "someone"),)
    assert client.infer("pins", one_row, metadata=sticky).decision == ("2", "canary", generation)
    assert client.infer("pins", one_row, version="1", metadata=sticky).decision == ("1", "pinned", generation)
    pinned_by_header = client.infer("pins", one_row, metadata=(("turnout-pin", "1"), *sticky))
    assert pinned_by_header.decision == ("1", "pinned", generation)
    assert client.infer("pins", one_row, version="2").decision == ("2", "pinned", generation)


def test_pin_to_an_unknown_version_is_not_found(client: Client, one_row: Pixels) -> None:
    client.set_policy("pins", stable_only(1))
    by_version = refused(lambda: client.infer("pins", one_row, version="9"))
    by_header = refused(lambda: client.infer("pins", one_row, metadata=(("turnout-pin", "9"),)))
    assert by_version.code() == by_header.code() == grpc.StatusCode.NOT_FOUND
    assert "9" in (by_header.details() or "")
    not_a_number = refused(lambda: client.infer("pins", one_row, metadata=(("turnout-pin", "v2"),)))
    assert not_a_number.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_streams_carry_the_routing_decision_as_response_parameters(client: Client, one_row: Pixels) -> None:
    generation = client.set_policy("pins", stable_only(2)).generation
    requests = [infer_request("pins", one_row), infer_request("pins", one_row, version="1")]
    for name, request in zip(("by-policy", "pinned"), requests, strict=True):
        request.id = name
    decisions = {
        answer.id: {key: value.string_param for key, value in answer.parameters.items() if key.startswith("turnout-")}
        for answer in stream_answers(client, requests)
    }
    assert decisions == {  # answers come as their batches finish, so not necessarily in order
        "by-policy": {"turnout-version": "2", "turnout-arm": "stable", "turnout-generation": str(generation)},
        "pinned": {"turnout-version": "1", "turnout-arm": "pinned", "turnout-generation": str(generation)},
    }


# --- canary splits -------------------------------------------------------------------------------


def test_random_canary_share_lies_in_the_binomial_interval(client: Client, one_row: Pixels) -> None:
    policy = pb.Policy(stable=1, canary=pb.Canary(version=2, weight_bp=2_000))
    generation = client.set_policy("split", policy).generation
    n = 2_000
    answers = stream_answers(client, [infer_request("split", one_row)] * n)
    arms = [(a.model_version, a.parameters["turnout-arm"].string_param) for a in answers]
    assert set(arms) == {("1", "stable"), ("2", "canary")}
    assert {a.parameters["turnout-generation"].string_param for a in answers} == {str(generation)}
    on_canary = arms.count(("2", "canary"))
    assert within_binomial_interval(on_canary, n, 0.2), f"{on_canary} of {n} on a 20% canary"


def versions_by_key(client: Client, pixels: Pixels, keys: list[str]) -> dict[str, str]:
    """Each key's version over two rounds of requests; a key answered by two versions fails the test."""
    seen: dict[str, set[tuple[str, str]]] = {key: set() for key in keys}
    for _ in range(2):
        for key in keys:
            answer = client.infer("sticky", pixels, metadata=((STICKY, key),))
            seen[key].add((answer.version, answer.arm))
    moved = {key: found for key, found in seen.items() if len(found) != 1}
    assert moved == {}, "a sticky key must keep its version"
    return {key: found.pop()[0] for key, found in seen.items()}


def test_sticky_keys_keep_their_version_and_only_move_onto_the_canary(client: Client, one_row: Pixels) -> None:
    keys = [f"user-{index}" for index in range(200)]
    client.set_policy("sticky", stable_only(1))
    client.canary("sticky", 2, 10, sticky_key=STICKY, reason="10% of users")
    at_10 = versions_by_key(client, one_row, keys)
    state = client.canary("sticky", 2, 50, reason="50% of users")
    assert (state.policy.sticky_key, state.policy.canary.weight_bp) == (STICKY, 5_000), "the sticky key stays"
    at_50 = versions_by_key(client, one_row, keys)

    # The split is the routing function's: the key's bucket below the weight means the canary.
    assert at_10 == {key: "2" if bucket_of(key) < 1_000 else "1" for key in keys}
    assert at_50 == {key: "2" if bucket_of(key) < 5_000 else "1" for key in keys}
    assert [key for key in keys if at_10[key] == "2" and at_50[key] != "2"] == [], "no key moves back"
    assert 0 < sum(v == "2" for v in at_10.values()) < sum(v == "2" for v in at_50.values()) < len(keys)
    without_key = {client.infer("sticky", one_row).version for _ in range(40)}
    assert without_key == {"1", "2"}, "callers without the key get the random split"


# --- no surprise promotions ----------------------------------------------------------------------


def test_a_new_version_is_loaded_and_listed_but_gets_no_traffic(
    gateway: GatewayProcess, client: Client, one_row: Pixels
) -> None:
    generation = client.set_policy("arrivals", stable_only(1)).generation
    staging = gateway.repository.parent / "arrivals-staging"
    shutil.copytree(EXAMPLES / "digits" / "2", staging)
    staging.rename(gateway.repository / "arrivals" / "3")  # appears whole, as a deploy would make it

    eventually(lambda: client.index().get(("arrivals", "3")) == "READY", "version 3 is READY")
    versions = client.versions("arrivals")
    assert (versions[3].state, versions[3].role) == ("READY", "")
    assert client.policy("arrivals").generation == generation and client.history("arrivals")[0].action == "set-policy"
    answers = {client.infer("arrivals", one_row).decision for _ in range(30)}
    assert answers == {("1", "stable", generation)}
    assert client.infer("arrivals", one_row, version="3").decision[:2] == ("3", "pinned"), "it serves when asked for"


# --- refusals ------------------------------------------------------------------------------------


def test_refusals_change_nothing(client: Client, one_row: Pixels) -> None:
    assert client.versions("refusals")[7].state == "UNAVAILABLE"
    assert client.policy("refusals").policy.stable == 2, "a version that failed to load never serves"
    before = client.set_policy("refusals", pb.Policy(stable=1, canary=pb.Canary(version=2, weight_bp=1_000)))
    history = client.history("refusals")

    def assert_unchanged() -> None:
        assert client.policy("refusals") == pb.PolicyState(
            model="refusals", policy=before.policy, generation=before.generation, explicit=True
        )
        assert client.history("refusals") == history

    preconditions = {
        "canary naming a missing version": lambda: client.canary("refusals", 9, 10),
        "stable naming a missing version": lambda: client.set_policy("refusals", stable_only(9)),
        "shadow naming a missing version": lambda: client.shadow("refusals", 9, 0.5),
        "canary naming a corrupt version": lambda: client.canary("refusals", 7, 10),
        "shadow naming a corrupt version": lambda: client.shadow("refusals", 7, 1.0),
    }
    for case, call in preconditions.items():
        error = refused(call)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, case
        assert ("version 9" if "missing" in case else "version 7") in (error.details() or ""), case
        assert_unchanged()

    malformed = {
        "weight of 150%": lambda: client.canary("refusals", 2, 150),
        "weight finer than 0.01%": lambda: client.canary("refusals", 2, 10.001),
        "weight over 10000 bp": lambda: client.set_policy(
            "refusals", pb.Policy(stable=1, canary=pb.Canary(version=2, weight_bp=15_000))
        ),
        "shadow fraction 2": lambda: client.shadow("refusals", 2, 2.0),
        "negative shadow fraction": lambda: client.shadow("refusals", 2, -0.5),
        "canary equal to stable": lambda: client.canary("refusals", 1, 10),
        "shadow of the stable version": lambda: client.shadow("refusals", 1, 0.5),
        "sticky key with capitals": lambda: client.canary("refusals", 2, 10, sticky_key="X-User-Id"),
        "sticky key with a space": lambda: client.set_policy("refusals", stable_only(1, sticky_key="user id")),
        "binary sticky key": lambda: client.set_policy("refusals", stable_only(1, sticky_key="user-bin")),
        "version 0": lambda: client.set_policy("refusals", stable_only(0)),
        "no policy": lambda: client.rollouts.SetPolicy(pb.SetPolicyRequest(model="refusals"), timeout=TIMEOUT_S),
    }
    for case, call in malformed.items():
        assert refused(call).code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert_unchanged()

    assert refused(lambda: client.canary("no-such-model", 2, 10)).code() == grpc.StatusCode.NOT_FOUND
    assert client.versions("refusals")[7].state == "UNAVAILABLE"
    assert {client.infer("refusals", one_row, version="1").version} == {"1"}


# --- loading on demand ---------------------------------------------------------------------------


def test_a_policy_naming_an_unloaded_version_loads_it_first(client: Client, one_row: Pixels) -> None:
    assert client.index().get(("ondemand", "1")) != "READY", "latest-1 loads only version 2"
    assert 1 not in client.versions("ondemand") or client.versions("ondemand")[1].state != "READY"
    assert {client.infer("ondemand", one_row).version for _ in range(5)} == {"2"}

    state = client.set_policy("ondemand", stable_only(1), reason="back to v1")
    assert state.policy.stable == 1
    versions = client.versions("ondemand")
    assert (versions[1].state, versions[1].role) == ("READY", "stable"), "loaded before the change returned"
    assert {client.infer("ondemand", one_row).decision for _ in range(20)} == {("1", "stable", state.generation)}
    time.sleep(0.6)  # a few repository polls: the version policy alone would unload version 1 again
    assert client.versions("ondemand")[1].state == "READY"
    assert client.index()[("ondemand", "2")] == "READY"


# --- promote and rollback ------------------------------------------------------------------------


def test_promote_then_rollback_returns_to_the_old_stable_without_loading(
    gateway: GatewayProcess, client: Client, one_row: Pixels
) -> None:
    model = "trial"
    states = [client.set_policy(model, stable_only(1), reason="baseline")]
    states.append(client.canary(model, 2, 30, reason="try v2"))
    states.append(client.rollback(model, reason="v2 looks off"))
    assert (states[-1].policy.stable, states[-1].policy.HasField("canary")) == (1, False)
    states.append(client.canary(model, 2, 30, reason="try v2 again"))
    states.append(client.promote(model, reason="v2 is good"))
    assert (states[-1].policy.stable, states[-1].policy.HasField("canary")) == (2, False)
    assert {client.infer(model, one_row).decision[:2] for _ in range(20)} == {("2", "stable")}
    time.sleep(0.6)  # a few repository polls: the version policy alone (latest 1) would unload version 1
    assert client.versions(model)[1].state == "READY", "the old stable stays loaded for the rollback window"

    states.append(client.rollback(model, reason="v2 is bad after all"))
    assert states[-1].policy == stable_only(1)
    assert {client.infer(model, one_row).decision for _ in range(20)} == {("1", "stable", states[-1].generation)}
    again = refused(lambda: client.rollback(model, reason="once more"))
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION and "already rolled back" in (again.details() or "")
    assert client.policy(model).generation == states[-1].generation

    loads = gateway.log().count(f"version 1 of model '{model}' is READY")
    assert loads == 1, "version 1 was loaded once, for the first policy; the rollback loaded nothing"

    changes = client.history(model)[::-1]  # oldest first
    steps = [(c.action, c.reason, c.actor) for c in changes]
    assert steps == [
        ("set-policy", "baseline", ACTOR),
        ("set-canary", "try v2", ACTOR),
        ("rollback", "v2 looks off", ACTOR),
        ("set-canary", "try v2 again", ACTOR),
        ("promote", "v2 is good", ACTOR),
        ("rollback", "v2 is bad after all", ACTOR),
    ]
    assert [c.generation for c in changes] == [s.generation for s in states]
    generations = [s.generation for s in states]
    assert generations == sorted(set(generations)), "each change has a newer generation"
    assert not changes[0].HasField("before")
    assert [c.after for c in changes] == [s.policy for s in states]
    assert [c.before for c in changes[1:]] == [s.policy for s in states[:-1]]
    times = [c.at_unix_ms for c in changes]
    assert times == sorted(times) and abs(times[-1] / 1000 - time.time()) < 60


def test_promote_or_rollback_with_nothing_to_act_on_is_refused(client: Client) -> None:
    generation = client.set_policy("audit", stable_only(2), reason="first policy").generation
    promote = refused(lambda: client.promote("audit"))
    assert promote.code() == grpc.StatusCode.FAILED_PRECONDITION and "no canary" in (promote.details() or "")
    rollback = refused(lambda: client.rollback("audit"))
    assert rollback.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "nothing to roll back" in (rollback.details() or "")
    assert client.policy("audit").generation == generation
    assert client.history("audit")[0].generation == generation


def test_the_actor_is_never_a_header_the_caller_chose(gateway: GatewayProcess) -> None:
    claiming = Client(gateway.address, gateway.control_address, metadata=(("turnout-actor", "someone-else"),))
    try:
        state = claiming.rollouts.SetPolicy(
            pb.SetPolicyRequest(model="audit", policy=stable_only(1), reason="no actor"),
            metadata=claiming.metadata,
            timeout=TIMEOUT_S,
        )
        limited = claiming.rollouts.History(pb.HistoryRequest(model="audit", limit=1), timeout=TIMEOUT_S).changes
        assert len(limited) == 1
        newest = limited[0]
        assert (newest.generation, newest.actor, newest.reason) == (state.generation, ACTOR, "no actor")
    finally:
        claiming.close()


# --- shadows -------------------------------------------------------------------------------------

SHADOWED = "shadowed"
PAUSED = "paused"  # its own model, so that the pausing and its figures stay out of the other tests
SLOW_SHADOW, FAILING_SHADOW, SAME_COST_SHADOW = 3, 4, 2
SLOW_SHADOW_DELAY_MS = 15  # a digits answer takes about 1.5 ms here: ten times that
SHADOW_YAML = "version_policy: {all: {}}\n"  # no outputs declared: the echo versions mirror their input
STREAMED = "streamed"


@pytest.fixture(scope="module")
def shadow_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    repository = tmp_path_factory.mktemp("shadows")
    model_dir = add_digits(repository, SHADOWED, {1: 1, SAME_COST_SHADOW: 2}, model_yaml=SHADOW_YAML)
    add_echo_version(model_dir, SLOW_SHADOW, delay_ms=SLOW_SHADOW_DELAY_MS)
    add_echo_version(model_dir, FAILING_SHADOW, fail="this version always fails")
    add_digits(repository, STREAMED, {1: 1, 2: 2}, model_yaml=SHADOW_YAML)
    paused_dir = add_digits(repository, PAUSED, {1: 1}, model_yaml=SHADOW_YAML)
    add_echo_version(paused_dir, FAILING_SHADOW, fail="this version always fails")
    with GatewayProcess(repository, "--poll-interval-s", "0") as running:
        yield running


def answer_all(client: Client, batches: list[Pixels], version: str = "") -> list[Answer]:
    return [client.infer(SHADOWED, pixels, version=version) for pixels in batches]


def test_a_shadow_that_keeps_failing_is_paused_then_probed_again(
    shadow_gateway: GatewayProcess, digits_pixels: Pixels
) -> None:
    client = Client(shadow_gateway.address, shadow_gateway.control_address)
    try:
        client.set_policy(PAUSED, stable_only(1), reason="digits v1 serves")
        expected = client.infer(PAUSED, digits_pixels[:1]).outputs
        client.shadow(PAUSED, FAILING_SHADOW, 1.0, reason="broken candidate")

        def paused() -> bool:
            answer = client.infer(PAUSED, digits_pixels[:1])
            assert answer.outputs == expected, "a paused or failing shadow never changes the answer"
            return client.figures(PAUSED)[(1, FAILING_SHADOW)].paused > 0

        eventually(paused, "the failing shadow is paused")
        at_pause = client.figures(PAUSED)[(1, FAILING_SHADOW)]
        assert at_pause.failed >= 3 and at_pause.compared == 0
        first_pause = r"shadow version 4 of model 'paused' failed \d+ batches in a row; its copies are paused for 1 s"
        assert re.search(first_pause, shadow_gateway.log())

        def probed_again() -> bool:
            client.infer(PAUSED, digits_pixels[:1])
            return client.figures(PAUSED)[(1, FAILING_SHADOW)].failed > at_pause.failed

        eventually(probed_again, "a probe goes out once the pause is over")
        assert "its copies are paused for 2 s" in shadow_gateway.log(), "a failed probe doubles the pause"
    finally:
        client.shadow(PAUSED, FAILING_SHADOW, 0, reason="enough")
        client.close()


def test_shadows_never_change_the_callers_answers(shadow_gateway: GatewayProcess, digits_pixels: Pixels) -> None:
    client = Client(shadow_gateway.address, shadow_gateway.control_address)
    try:
        check_shadows(client, [digits_pixels[i : i + 1 + i % 3] for i in range(40)])
    finally:
        client.close()


def check_shadows(client: Client, batches: list[Pixels]) -> None:
    same_cost_answers = answer_all(client, batches, version=str(SAME_COST_SHADOW))
    client.set_policy(SHADOWED, stable_only(1), reason="digits v1 serves")
    without_shadows = answer_all(client, batches)
    assert client.figures(SHADOWED) == {}

    client.shadow(SHADOWED, SLOW_SHADOW, 1.0, reason="slow candidate")
    state = client.shadow(SHADOWED, FAILING_SHADOW, 1.0, reason="broken candidate")
    assert [(s.version, s.fraction) for s in state.policy.shadows] == [(SLOW_SHADOW, 1.0), (FAILING_SHADOW, 1.0)]
    expected = [Answer("1", "stable", state.generation, a.outputs) for a in without_shadows]
    assert answer_all(client, batches) == expected  # a caller error would raise here

    def every_copy_accounted_for(rounds: int) -> bool:
        figures = client.figures(SHADOWED)
        slow, failing = figures.get((1, SLOW_SHADOW)), figures.get((1, FAILING_SHADOW))
        return (
            slow is not None
            and failing is not None
            and slow.mirrored + slow.dropped + slow.paused == rounds * len(batches)
            and failing.mirrored + failing.dropped + failing.paused == rounds * len(batches)
            and slow.compared + slow.failed == slow.mirrored
            and failing.failed == failing.mirrored
        )

    eventually(lambda: every_copy_accounted_for(1), "every slow and failing shadow copy is accounted for")
    first = client.figures(SHADOWED)
    assert first[(1, FAILING_SHADOW)].failed > 0 and first[(1, FAILING_SHADOW)].compared == 0
    slow = first[(1, SLOW_SHADOW)]
    assert slow.compared + slow.failed > 0
    assert slow.compared == 0 or slow.mean_shadow_latency_ms >= SLOW_SHADOW_DELAY_MS, "the shadow was slow"
    assert answer_all(client, batches) == expected
    eventually(lambda: every_copy_accounted_for(2), "the second round is accounted for too")
    second = client.figures(SHADOWED)[(1, FAILING_SHADOW)]
    # Once it has failed three batches in a row, the failing shadow is paused: copies counted, not sent.
    assert second.failed + second.paused > first[(1, FAILING_SHADOW)].failed + first[(1, FAILING_SHADOW)].paused

    client.shadow(SHADOWED, SLOW_SHADOW, 0, reason="enough")
    client.shadow(SHADOWED, FAILING_SHADOW, 0, reason="enough")
    state = client.shadow(SHADOWED, SAME_COST_SHADOW, 1.0, reason="same cost candidate")
    assert [s.version for s in state.policy.shadows] == [SAME_COST_SHADOW]
    assert [a.outputs for a in answer_all(client, batches)] == [a.outputs for a in without_shadows]

    def same_cost_compared() -> bool:
        found = client.figures(SHADOWED).get((1, SAME_COST_SHADOW))
        return found is not None and found.compared == len(batches)

    eventually(same_cost_compared, "every same-cost shadow copy is compared")
    assert_same_cost_figures(client.figures(SHADOWED)[(1, SAME_COST_SHADOW)], without_shadows, same_cost_answers)



def test_requests_on_a_stream_are_mirrored_a_batch_at_a_time(
    shadow_gateway: GatewayProcess, digits_pixels: Pixels
) -> None:
    """A stream keeps many requests in flight, so primary batches hold several of them: each is copied."""
    client = Client(shadow_gateway.address, shadow_gateway.control_address)
    try:
        client.set_policy(STREAMED, pb.Policy(stable=1, shadows=[pb.Shadow(version=2, fraction=1.0)]), reason="try")
        rows = [digits_pixels[i : i + 1] for i in range(60)]
        answers = stream_answers(client, [infer_request(STREAMED, pixels) for pixels in rows])
        assert len(answers) == len(rows) and {a.model_version for a in answers} == {"1"}

        def all_accounted_for() -> bool:
            found = client.figures(STREAMED).get((1, 2))
            return found is not None and found.compared + found.failed + found.dropped == len(rows)

        eventually(all_accounted_for, "every streamed request's shadow copy is accounted for")
        figures = client.figures(STREAMED)[(1, 2)]
        assert (figures.mirrored, figures.compared, figures.failed, figures.dropped) == (len(rows), len(rows), 0, 0)
        assert figures.top1_rows == len(rows)
    finally:
        client.close()

def assert_same_cost_figures(figures: pb.ShadowFigures, primary: list[Answer], shadow: list[Answer]) -> None:
    """The gateway's figures equal those worked out here from the two versions' own answers."""
    assert (figures.mirrored, figures.failed, figures.dropped) == (len(primary), 0, 0)
    ours = [a.output("probabilities", np.float32, 10).astype(np.float64) for a in primary]
    theirs = [a.output("probabilities", np.float32, 10).astype(np.float64) for a in shadow]
    per_request = [float(np.abs(o - t).max()) for o, t in zip(ours, theirs, strict=True)]
    agreed = sum(int((o.argmax(axis=1) == t.argmax(axis=1)).sum()) for o, t in zip(ours, theirs, strict=True))
    labels = [
        float(np.abs(a.output("label", np.int64) - b.output("label", np.int64)).max())
        for a, b in zip(primary, shadow, strict=True)
    ]
    assert (figures.top1_rows, figures.top1_agreed) == (sum(len(o) for o in ours), agreed)
    by_output = {item.output: item for item in figures.outputs}
    assert set(by_output) == {"label", "probabilities"}
    assert by_output["probabilities"].max_abs_diff == pytest.approx(max(per_request))
    assert by_output["probabilities"].mean_max_abs_diff == pytest.approx(sum(per_request) / len(per_request))
    assert by_output["probabilities"].max_abs_diff > 0, "the two versions are different models"
    assert by_output["label"].max_abs_diff == max(labels)
    assert figures.mean_shadow_latency_ms > 0


# --- restarts ------------------------------------------------------------------------------------


def test_policy_and_history_survive_a_restart(tmp_path: Path, one_row: Pixels) -> None:
    repository = tmp_path / "repository"
    add_digits(repository, "digits", {1: 1, 2: 2})
    flags = ("--worker-mode", "inprocess", "--poll-interval-s", "0", "--state-dir", str(tmp_path / "state"))
    keys = [f"user-{index}" for index in range(30)]

    with GatewayProcess(repository, *flags) as first:
        client = Client(first.address, first.control_address)
        try:
            client.set_policy("digits", stable_only(1), reason="baseline")
            before = client.canary("digits", 2, 40, sticky_key=STICKY, reason="40% of users")
            history = client.history("digits")
        finally:
            client.close()
        assert first.stop(signal.SIGTERM) == 0

    with GatewayProcess(repository, *flags) as second:
        client = Client(second.address, second.control_address)
        try:
            after = client.policy("digits")
            assert (after.policy, after.generation, after.explicit) == (before.policy, before.generation, True)
            assert client.history("digits") == history
            routed = {key: client.infer("digits", one_row, metadata=((STICKY, key),)).decision for key in keys}
            canary, stable = ("2", "canary", before.generation), ("1", "stable", before.generation)
            assert routed == {key: canary if bucket_of(key) < 4_000 else stable for key in keys}
            rolled_back = client.rollback("digits", reason="after the restart")
            assert rolled_back.generation > before.generation and len(client.history("digits")) == 3
        finally:
            client.close()
    assert os.path.isdir(tmp_path / "state")


# --- a process that applies a change late ---------------------------------------------------------


def test_a_change_that_reaches_a_process_late_waits_for_it_and_names_it_in_the_log(tmp_path: Path) -> None:
    """Another gateway process on the same state reports the new generation 0.3 s late: the call
    returns only once it has, and the log says which process it waited for."""
    repository = tmp_path / "repository"
    add_digits(repository, "late", {1: 1, 2: 2})
    state = tmp_path / "state"
    with GatewayProcess(repository, "--worker-mode", "inprocess", "--state-dir", str(state)) as running:
        store = SqliteStateStore(state)  # what a second gateway process would write, written here
        laggard = "other-host:4242:late"
        store.report_applied(laggard, 4242, store.generation())
        client = Client(running.address, running.control_address)
        next_generation = store.generation() + 1

        def catch_up() -> None:
            time.sleep(0.3)
            SqliteStateStore(state).report_applied(laggard, 4242, next_generation)

        reporter = threading.Thread(target=catch_up)
        try:
            reporter.start()
            started = time.monotonic()
            applied = client.set_policy("late", stable_only(1), reason="one process is slow")
            took_s = time.monotonic() - started
        finally:
            reporter.join()
            client.close()
            store.close()
        assert applied.generation == next_generation and laggard in applied.applied_by
        assert took_s >= 0.3
        eventually(lambda: f"the last to report: process {laggard}" in running.log(), "the slow apply is logged")


def test_a_change_a_process_never_applies_fails_with_deadline_exceeded_naming_it(tmp_path: Path) -> None:
    """A live process that never reports the new generation: the change is committed and in
    effect here, but the call fails with DEADLINE_EXCEEDED and names that process."""
    repository = tmp_path / "repository"
    add_digits(repository, "stuck", {1: 1, 2: 2})
    state = tmp_path / "state"
    flags = ("--worker-mode", "inprocess", "--state-dir", str(state), "--apply-timeout-s", "0.5")
    with GatewayProcess(repository, *flags) as running:
        store = SqliteStateStore(state)
        laggard = "other-host:4243:stuck"
        stop = threading.Event()

        generation = store.generation()
        store.report_applied(laggard, 4243, generation)

        def stay_alive_and_behind() -> None:  # heartbeats at the generation it had, and no further
            while not stop.wait(0.1):
                store.report_applied(laggard, 4243, generation)

        heartbeat = threading.Thread(target=stay_alive_and_behind)
        heartbeat.start()
        client = Client(running.address, running.control_address)
        try:
            with pytest.raises(grpc.RpcError) as refused:
                client.set_policy("stuck", stable_only(2), reason="one process is stuck")
            assert refused.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert f"not yet applied by process {laggard} on host" in (refused.value.details() or "")
            assert client.policy("stuck").policy.stable == 2, "committed, and in effect here"
            assert client.infer("stuck", np.zeros((1, 64), np.float32)).version == "2"
        finally:
            stop.set()
            heartbeat.join()
            client.close()
            store.close()


def test_the_old_stable_is_unloaded_once_the_rollback_window_has_passed(tmp_path: Path) -> None:
    """``--rollback-window-s`` bounds how long a replaced stable version is kept loaded against its
    version policy; after it, a rollback to it is refused instead of loading it."""
    repository = tmp_path / "repository"
    add_digits(repository, "windowed", {1: 1, 2: 2}, model_yaml=LATEST_ONE_YAML)
    flags = ("--worker-mode", "inprocess", "--poll-interval-s", "0.1", "--rollback-window-s", "1")
    with GatewayProcess(repository, *flags) as running:
        client = Client(running.address, running.control_address)
        try:
            client.set_policy("windowed", stable_only(1), reason="baseline")
            client.canary("windowed", 2, 50, reason="try v2")
            client.promote("windowed", reason="v2 is good")
            assert client.versions("windowed")[1].state == "READY", "kept for the rollback window"
            eventually(lambda: client.versions("windowed")[1].state != "READY", "version 1 to be unloaded", 10)
            late = refused(lambda: client.rollback("windowed", reason="too late"))
            assert late.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert "rollback only returns to a loaded version" in (late.details() or "")
            assert client.policy("windowed").policy.stable == 2, "the refused rollback changed nothing"
        finally:
            client.close()
