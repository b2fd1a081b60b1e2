"""Progressive rollouts end to end: a live gateway under steady load judges its canary and acts.

Each model has three echo versions taking the same input: 1 (the stable), 2 (identical to it) and
3 (the same but slow). Their runtime sleeps per batch (the echo runtime's own setting): ``BASE_DELAY_MS``
for 1 and 2, so that a request's time is the model's and not the microseconds of a thread waking
(a lightly used arm wakes a little later, which at 100 µs a request is a real 25% and is caught),
and ``SLOW_DELAY_MS`` for 3. Answers are read with a raw stub, so the routing trailers say which version and which
policy generation served each request. A/A rollouts run at a low ``alpha`` so a false rollback
(allowed at that rate) does not make the test flaky.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.rollouts.rollout_controller import LEASE, TOTALS_FRESH_S
from gateway.state.postgres_store import PostgresStateStore
from gateway.state.sqlite_store import SqliteStateStore
from gateway.state.store import StateStore
from gateway.wire.turnout.v1 import rollouts_pb2 as pb
from gateway.wire.turnout.v1 import rollouts_pb2_grpc as pb_grpc
from tests.support.gateway_process import REPO_ROOT, GatewayProcess, telemetry_dir_of
from tests.support.postgres import own_database

ANALYSIS = "turnout-analysis"
ACTOR = "local:127.0.0.1"
BASE_DELAY_MS = 2
SLOW_DELAY_MS = 15
TIMEOUT_S = 20.0
AA_ALPHA = 0.001  # an identical candidate is falsely rolled back at most this often
ROW = np.zeros((1, 64), np.float32)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def add_echo_model(repository: Path, name: str) -> None:
    model = repository / name
    declared = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]}
    for version, delay_ms in ((1, BASE_DELAY_MS), (2, BASE_DELAY_MS), (3, SLOW_DELAY_MS)):
        (model / str(version)).mkdir(parents=True)
        (model / str(version) / "model.echo.json").write_text(json.dumps({**declared, "delay_ms": delay_ms}))
    (model / "model.yaml").write_text("version_policy: {all: {}}\n")


@dataclass(frozen=True)
class Served:
    version: str
    arm: str
    generation: int


class Load:
    """Steady load on one model from ``clients`` threads, each on its own connection; every answer kept."""

    def __init__(self, address: str, model: str, clients: int = 2, row: np.ndarray = ROW) -> None:
        self.model = model
        self._row = row
        self.answers: list[Served] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._channels = [
            grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(clients)
        ]
        self._threads = [threading.Thread(target=self._send, args=(c,), daemon=True) for c in self._channels]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        eventually(lambda: len(self.answers) >= 20, "the load is flowing")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        for channel in self._channels:
            channel.close()

    def _send(self, channel: grpc.Channel) -> None:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        tensor = service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32",
                                                                shape=list(self._row.shape))  # fmt: skip
        request = service_pb2.ModelInferRequest(model_name=self.model, inputs=[tensor],
                                                raw_input_contents=[self._row.tobytes()])  # fmt: skip
        while not self._stop.is_set():
            try:
                _, call = stub.ModelInfer.with_call(request, timeout=TIMEOUT_S)
            except grpc.RpcError as error:
                self.failures.append(f"{error.code().name}: {error.details()}")
                continue
            trailers = dict(call.trailing_metadata())
            self.answers.append(
                Served(str(trailers["turnout-version"]), str(trailers["turnout-arm"]),
                       int(trailers["turnout-generation"]))
            )


class Control:
    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.RolloutsStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def stable(self, model: str, version: int) -> None:
        policy = pb.Policy(stable=version)
        self.stub.SetPolicy(pb.SetPolicyRequest(model=model, policy=policy), timeout=TIMEOUT_S)

    def start(self, model: str, version: int, **flags: Any) -> pb.RolloutState:
        request = pb.StartRolloutRequest(model=model, version=version, reason="test rollout", **flags)
        return self.stub.StartRollout(request, timeout=TIMEOUT_S)

    def change(self, model: str, action: pb.ChangeRolloutRequest.Action) -> pb.RolloutState:
        return self.stub.ChangeRollout(pb.ChangeRolloutRequest(model=model, action=action), timeout=TIMEOUT_S)

    def rollout(self, model: str) -> pb.RolloutState:
        return self.stub.GetRollout(pb.GetRolloutRequest(model=model), timeout=TIMEOUT_S)

    def policy(self, model: str) -> pb.Policy:
        return self.stub.GetPolicy(pb.GetPolicyRequest(model=model), timeout=TIMEOUT_S).policy

    def history(self, model: str) -> list[pb.PolicyChange]:
        return list(self.stub.History(pb.HistoryRequest(model=model), timeout=TIMEOUT_S).changes)

    def wait_for_phase(self, model: str, phase: str, timeout_s: float = 40.0) -> pb.RolloutState:
        eventually(lambda: self.rollout(model).phase != "running" or phase == "running", f"{model} ends",
                   timeout_s)  # fmt: skip
        found = self.rollout(model)
        assert found.phase == phase, f"rollout ended {found.phase}, not {phase}: {found.message}; {found.evidence_json}"
        return found


def eventually(check: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def analysis_changes(history: list[pb.PolicyChange]) -> list[tuple[str, int]]:
    """The analysis' own changes, oldest first: (action, canary weight in basis points after it)."""
    return [(change.action, change.after.canary.weight_bp) for change in reversed(history) if change.actor == ANALYSIS]


def add_compared_model(repository: Path, name: str) -> None:
    """Echo versions answering one value a row (so a difference is a disagreement, not a tie of
    class scores): 1 the stable, 2 identical, 3 answering each value plus one."""
    model = repository / name
    declared = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1]}], "delay_ms": BASE_DELAY_MS}
    for version, extra in ((1, {}), (2, {}), (3, {"offset": 1.0})):
        (model / str(version)).mkdir(parents=True)
        (model / str(version) / "model.echo.json").write_text(json.dumps({**declared, **extra}))
    (model / "model.yaml").write_text("version_policy: {all: {}}\n")


MODELS = ("slow", "identical", "held", "manual", "cli", "quiet")
COMPARED_MODELS = ("diverging", "agreeing", "replaced")
COMPARED_ROW = np.full((1, 1), 0.5, np.float32)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    repository = tmp_path_factory.mktemp("progressive")
    for name in MODELS:
        add_echo_model(repository, name)
    for name in COMPARED_MODELS:
        add_compared_model(repository, name)
    flags = ("--worker-mode", "inprocess", "--poll-interval-s", "0", "--metrics-port", str(free_port()))
    with GatewayProcess(repository, *flags) as running:
        yield running


@pytest.fixture(scope="module")
def control(gateway: GatewayProcess) -> Iterator[Control]:
    opened = Control(gateway.control_address)
    for name in MODELS + COMPARED_MODELS:
        opened.stable(name, 1)
    yield opened
    opened.close()


def test_a_slow_candidate_is_rolled_back_on_evidence_with_no_failed_request(
    gateway: GatewayProcess, control: Control
) -> None:
    with Load(gateway.address, "slow") as load:
        control.start("slow", 3, steps=[50, 100], step_s=60, min_requests=30)
        ended = control.wait_for_phase("slow", "rolled_back", timeout_s=30)
        time.sleep(1.0)  # the load goes on after the rollback
    evidence = json.loads(ended.evidence_json)
    assert evidence["verdict"] == "roll_back"
    assert any(check["worse"] for check in evidence["checks"] if check["check"].startswith("latency"))
    rollback = next(change for change in control.history("slow") if change.action == "rollback")
    assert rollback.actor == ANALYSIS
    audited = json.loads(rollback.reason)  # the statistic, the counts and the bound, in the audit history
    worse = [check for check in audited["checks"] if check["worse"]]
    assert worse and all(check["e_value_worse"] >= check["bound"] for check in worse)
    assert "canary_requests" in audited["checks"][0]
    assert load.failures == []
    after = [served for served in load.answers if served.generation >= rollback.generation]
    assert after and {served.version for served in after} == {"1"}, "every request after the rollback on v1"
    assert not control.policy("slow").HasField("canary")


def test_an_identical_candidate_is_promoted_through_every_step(gateway: GatewayProcess, control: Control) -> None:
    with Load(gateway.address, "identical") as load:
        control.start("identical", 2, steps=[20, 50, 100], step_s=1.5, min_requests=20, alpha=AA_ALPHA)
        ended = control.wait_for_phase("identical", "promoted")
        time.sleep(0.5)
    assert (ended.step_index, ended.weight_percent) == (2, 100)
    assert analysis_changes(control.history("identical")) == [("set-canary", 5000), ("set-canary", 10000),
                                                                ("promote", 0)]  # fmt: skip
    assert control.policy("identical").stable == 2
    assert load.failures == []
    promoted = next(change for change in control.history("identical") if change.action == "promote")
    assert {served.version for served in load.answers if served.generation >= promoted.generation} == {"2"}


def test_a_candidate_answering_differently_is_rolled_back_for_divergence(
    control: Control, gateway: GatewayProcess
) -> None:
    with Load(gateway.address, "diverging", row=COMPARED_ROW) as load:
        control.start("diverging", 3, steps=[50, 100], step_s=60, min_requests=20, max_divergence=0.02)
        assert [shadow.version for shadow in control.policy("diverging").shadows] == [3], "compared on the stable's"
        ended = control.wait_for_phase("diverging", "rolled_back", timeout_s=30)
    checks = {check["check"]: check for check in json.loads(ended.evidence_json)["checks"]}
    assert checks["divergence"]["worse"], ended.evidence_json
    assert checks["divergence"]["disagreements"] == checks["divergence"]["comparisons"] > 0
    rollback = next(change for change in control.history("diverging") if change.action == "rollback")
    assert rollback.actor == ANALYSIS
    audited = {check["check"]: check for check in json.loads(rollback.reason)["checks"]}
    assert audited["divergence"]["worse"] and audited["divergence"]["max_divergence"] == 0.02
    assert load.failures == []
    policy = control.policy("diverging")
    assert not policy.HasField("canary") and not policy.shadows, "the rollback took the compared shadow too"


def test_an_identical_candidate_compared_on_every_answer_is_promoted(control: Control, gateway: GatewayProcess) -> None:
    with Load(gateway.address, "agreeing", row=COMPARED_ROW) as load:
        control.start("agreeing", 2, steps=[50, 100], step_s=1.5, min_requests=20, max_divergence=0.02,
                      alpha=AA_ALPHA)  # fmt: skip
        ended = control.wait_for_phase("agreeing", "promoted")
    divergence = {check["check"]: check for check in json.loads(ended.evidence_json)["checks"]}["divergence"]
    assert divergence["comparisons"] > 0 and divergence["disagreements"] == 0 and not divergence["worse"]
    assert load.failures == []
    policy = control.policy("agreeing")
    assert policy.stable == 2 and not policy.shadows, "promoted: the candidate is no longer its own shadow"


def test_a_compared_candidate_replaced_by_a_manual_canary_takes_its_shadow_with_it(control: Control) -> None:
    control.start("replaced", 2, steps=[50, 100], step_s=60, max_divergence=0.02)
    assert [shadow.version for shadow in control.policy("replaced").shadows] == [2]
    request = pb.SetCanaryRequest(model="replaced", version=3, weight_percent=10, reason="by hand")
    answer = control.stub.SetCanary(request, timeout=TIMEOUT_S)
    assert "was ended by" in answer.note
    assert (answer.policy.canary.version, list(answer.policy.shadows)) == (3, []), "no shadow of 2 left behind"
    assert control.rollout("replaced").phase == "aborted"


def test_pause_holds_the_step_resume_goes_on_and_abort_removes_the_canary(
    gateway: GatewayProcess, control: Control
) -> None:
    with Load(gateway.address, "held"):
        control.start("held", 2, steps=[20, 50, 100], step_s=0.5, min_requests=10, alpha=AA_ALPHA)
        paused = control.change("held", pb.ChangeRolloutRequest.PAUSE)
        assert paused.phase == "paused"
        time.sleep(2.0)  # four times the step's time: a running rollout would have stepped up
        held = control.rollout("held")
        assert (held.phase, held.step_index) == ("paused", 0)
        control.change("held", pb.ChangeRolloutRequest.RESUME)
        eventually(lambda: control.rollout("held").step_index >= 1 or control.rollout("held").phase != "running",
                   "the resumed rollout steps up")  # fmt: skip
        aborted = control.change("held", pb.ChangeRolloutRequest.ABORT)
    assert aborted.phase == "aborted"
    assert not control.policy("held").HasField("canary")
    newest = control.history("held")[0]
    assert (newest.action, newest.actor) == ("clear-canary", ACTOR)
    with pytest.raises(grpc.RpcError) as again:
        control.change("held", pb.ChangeRolloutRequest.RESUME)
    assert again.value.code() is grpc.StatusCode.FAILED_PRECONDITION


def test_a_manual_rollback_ends_the_rollout_first_and_says_so(control: Control) -> None:
    control.start("manual", 3, steps=[10, 100], step_s=60)
    request = pb.RollbackRequest(model="manual", reason="not today")
    answer = control.stub.Rollback(request, timeout=TIMEOUT_S)
    assert "was ended by" in answer.note and "manual rollback" in answer.note
    ended = control.rollout("manual")
    assert ended.phase == "aborted" and "manual rollback" in ended.message
    assert not answer.policy.HasField("canary")
    with pytest.raises(grpc.RpcError) as refused:
        control.start("manual", 1)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION, "v1 is the stable already"


def test_a_malformed_or_second_rollout_is_refused_and_changes_nothing(control: Control) -> None:
    for flags, code in (({"steps": [50, 20]}, grpc.StatusCode.INVALID_ARGUMENT),
                        ({"alpha": 1.5}, grpc.StatusCode.INVALID_ARGUMENT),
                        ({"max_latency_ratio": 0.9}, grpc.StatusCode.INVALID_ARGUMENT)):  # fmt: skip
        with pytest.raises(grpc.RpcError) as refused:
            control.start("quiet", 2, **flags)
        assert refused.value.code() is code, flags
    assert not control.policy("quiet").HasField("canary")
    with pytest.raises(grpc.RpcError) as unknown:
        control.rollout("quiet")
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND


def test_with_no_traffic_a_rollout_waits_past_its_step_time_and_never_promotes(control: Control) -> None:
    control.start("quiet", 2, steps=[50, 100], step_s=0.3, min_requests=5)
    time.sleep(2.0)  # more than six step times
    waiting = control.rollout("quiet")
    assert (waiting.phase, waiting.step_index) == ("running", 0)
    assert waiting.message.startswith("step time is up; waiting for 5 requests per arm"), waiting.message
    assert json.loads(waiting.evidence_json)["verdict"] == "insufficient_traffic"
    assert control.policy("quiet").stable == 1 and analysis_changes(control.history("quiet")) == []
    with pytest.raises(grpc.RpcError) as second:
        control.start("quiet", 3)
    assert second.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "abort it first" in str(second.value.details())


def test_a_rollout_survives_a_gateway_restart(tmp_path: Path) -> None:
    add_echo_model(tmp_path / "repository", "restarted")
    state = tmp_path / "state"
    flags = ("--worker-mode", "inprocess", "--poll-interval-s", "0", "--state-dir", str(state))
    with GatewayProcess(tmp_path / "repository", *flags, "--metrics-port", str(free_port())) as first:
        control = Control(first.control_address)
        control.stable("restarted", 1)
        control.start("restarted", 2, steps=[30, 100], step_s=1.0, min_requests=10, alpha=AA_ALPHA)
        control.close()
    with GatewayProcess(tmp_path / "repository", *flags, "--metrics-port", str(free_port())) as second:
        control = Control(second.control_address)
        assert control.rollout("restarted").phase == "running"
        with Load(second.address, "restarted") as load:
            control.wait_for_phase("restarted", "promoted")
        assert load.failures == []
        assert analysis_changes(control.history("restarted")) == [("set-canary", 10000), ("promote", 0)]
        control.close()


def test_with_two_processes_one_leader_judges_both_processes_requests(tmp_path: Path) -> None:
    add_echo_model(tmp_path / "repository", "fleet")
    state = tmp_path / "state"
    flags = ("--processes", "2", "--poll-interval-s", "0", "--state-dir", str(state),
             "--metrics-port", str(free_port()))  # fmt: skip
    with GatewayProcess(tmp_path / "repository", *flags) as gateway:
        control = Control(gateway.control_address)
        control.stable("fleet", 1)
        store = SqliteStateStore(state)
        directory = telemetry_dir_of(gateway.process.pid if gateway.process else 0)
        eventually(lambda: len(list(directory.glob("*.sock"))) == 2, "both gateway processes are up")
        with Load(gateway.address, "fleet", clients=8) as load:
            control.start("fleet", 2, steps=[50, 100], step_s=2.0, min_requests=20, alpha=AA_ALPHA)
            eventually(lambda: store.lease(LEASE) is not None, "a leader takes the lease")
            ended = control.wait_for_phase("fleet", "promoted")
        per_process = requests_per_process(store, "fleet")  # as each published them last, during the rollout
        assert load.failures == []
        assert len(per_process) == 2 and all(per_process), f"both processes served: {per_process}"
        counts = {check["check"]: check for check in json.loads(ended.evidence_json)["checks"]}["error_rate"]
        judged = counts["canary_requests"] + counts["stable_requests"]
        assert judged > max(per_process), "the leader counted the other process's requests too"
        leaders = gateway.log().count("rollout analysis: this process")
        assert leaders == 1, gateway.log()
        store.close()
        control.close()


def test_two_hosts_on_one_database_one_leader_judges_both_hosts_requests(tmp_path: Path, postgres_server: str) -> None:
    repository = tmp_path / "repository"
    add_echo_model(repository, "hosts")
    with own_database(postgres_server) as url:

        def host(name: str) -> GatewayProcess:  # its own port and --state-dir, the fleet's --state-url
            return GatewayProcess(repository, "--worker-mode", "inprocess", "--poll-interval-s", "0",
                                  "--state-dir", str(tmp_path / f"state-{name}"), "--state-url", url,
                                  "--metrics-port", str(free_port()))  # fmt: skip

        with host("a") as a, host("b") as b:
            control = Control(a.control_address)
            control.stable("hosts", 1)
            store = PostgresStateStore(url)
            with Load(a.address, "hosts") as on_a, Load(b.address, "hosts") as on_b:
                control.start("hosts", 2, steps=[50, 100], step_s=2.0, min_requests=20, alpha=AA_ALPHA)
                ended = control.wait_for_phase("hosts", "promoted")
            per_host = requests_per_process(store, "hosts")
            assert on_a.failures == on_b.failures == []
            assert len(per_host) == 2 and all(per_host), f"both hosts published their totals: {per_host}"
            counts = {check["check"]: check for check in json.loads(ended.evidence_json)["checks"]}["error_rate"]
            judged = counts["canary_requests"] + counts["stable_requests"]
            assert judged > max(per_host), f"the leader judged {judged}, more than either host served: {per_host}"
            leaders = [gateway.log().count("rollout analysis: this process") for gateway in (a, b)]
            assert sorted(leaders) == [0, 1], "one host led throughout"
            store.close()
            control.close()


def requests_per_process(store: StateStore, model: str) -> list[int]:
    """Each gateway process's requests for ``model`` so far, as it last published them to the store."""
    return [sum(arm.requests for arm in published.arms if arm.model == model)
            for published in store.arm_totals(TOTALS_FRESH_S)]  # fmt: skip


def turnout(*args: str, server: str) -> str:
    """``turnout ARGS`` as an operator runs it; its output, after checking it succeeded."""
    command = [sys.executable, "-m", "gateway", *args, "--server", server]
    environment = {key: value for key, value in os.environ.items() if key != "TURNOUT_SERVER"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, ""), f"turnout {' '.join(args)} failed: {done.stderr}"
    return done.stdout


def test_the_rollout_command_and_status_show_phase_step_weight_and_evidence(
    gateway: GatewayProcess, control: Control
) -> None:
    server = gateway.control_address
    started = turnout("rollout", "cli", "2", "--steps", "10,50,100", "--step-s", "30", "--min-requests", "50",
                      "--reason", "new weights", server=server)  # fmt: skip
    assert "rollout of v2 over v1: running, step 1/3 (10,50,100%), canary at 10%" in started
    eventually(lambda: control.rollout("cli").evidence_json != "", "the analysis says what it waits for")
    [status] = json.loads(turnout("status", "cli", "--json", server=server))
    rollout = status["rollout"]
    assert (rollout["phase"], rollout["step"], rollout["weight_percent"]) == ("running", 1, 10)
    assert rollout["verdict"] == "insufficient_traffic" and "waiting for 50 requests per arm" in rollout["message"]
    assert {check["check"] for check in rollout["evidence"]} == {"error_rate", "latency_order", "latency_p99"}
    text = turnout("status", "cli", server=server)
    assert "waiting for 50 requests per arm" in text and "latency_order" in text
    assert "paused" in turnout("rollout", "cli", "--pause", server=server)
    assert "aborted" in turnout("rollout", "cli", "--abort", "--reason", "not now", server=server)
    [after] = json.loads(turnout("status", "cli", "--json", server=server))
    assert after["rollout"]["phase"] == "aborted" and "canary" not in after["policy"]["policy"]
