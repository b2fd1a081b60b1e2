"""The ``turnout`` control commands, run as an operator runs them: subprocesses against a live gateway.

Each command is checked for its exit status (0 done, 1 refused with the reason on stderr), its
human-readable output, and its ``--json`` output, which scripts rely on (proto3 JSON: 64-bit numbers
are strings, field names as in the .proto).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.wire.turnout.v1 import rollouts_pb2 as pb
from gateway.wire.turnout.v1 import rollouts_pb2_grpc as pb_grpc
from tests.support.gateway_process import REPO_ROOT, GatewayProcess
from tests.support.model_repository import EXAMPLES

OPERATOR = "operator-ann"  # the name of the operator's token: the actor the history records
TOKEN = "ann-token-0123456789abcdef"
BEARER = (("authorization", f"Bearer {TOKEN}"),)


def add_digits(repository: Path, name: str, versions: dict[int, int]) -> None:
    """Model ``name`` whose version N is a copy of digits version ``versions[N]``."""
    for number, source in versions.items():
        shutil.copytree(EXAMPLES / "digits" / str(source), repository / name / str(number))
    shutil.copy(EXAMPLES / "digits" / "model.yaml", repository / name / "model.yaml")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    repository = tmp_path_factory.mktemp("control-cli")
    add_digits(repository, "digits", {1: 1, 2: 2, 3: 2})
    add_digits(repository, "plain", {1: 1, 2: 2})
    add_digits(repository, "mirror", {1: 1, 2: 2})
    add_digits(repository, "traffic", {1: 1, 2: 2})
    with socket.socket() as probe:  # a metrics port of its own: turnout status shows what metrics keep
        probe.bind(("127.0.0.1", 0))
        metrics_port = str(probe.getsockname()[1])
    tokens = tmp_path_factory.mktemp("control") / "tokens"
    tokens.write_text(f"# who may change routing\n{OPERATOR} {TOKEN}\nother-operator other-token-0123456789\n")
    flags = ("--worker-mode", "inprocess", "--poll-interval-s", "0", "--metrics-port", metrics_port)
    with GatewayProcess(repository, *flags, "--control-tokens-file", str(tokens)) as running:
        yield running


def turnout(*args: str, server: str | None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m gateway ARGS`` (the ``turnout`` entry point) as the operator would."""
    command = [sys.executable, "-m", "gateway", *args, *(["--server", server] if server else [])]
    environment = {**os.environ, "LOGNAME": "someone-else", "TURNOUT_TOKEN": TOKEN}
    environment.pop("TURNOUT_SERVER", None)  # only the test says where the commands go
    environment.update(env or {})
    return subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=60)


def ok(*args: str, server: str) -> str:
    done = turnout(*args, server=server)
    assert (done.returncode, done.stderr) == (0, ""), f"turnout {' '.join(args)} failed: {done.stderr}"
    return done.stdout


def ok_json(*args: str, server: str) -> Any:
    return json.loads(ok(*args, "--json", server=server))


def refused(*args: str, server: str) -> str:
    """Run a command the gateway (or the parser) must refuse; its stderr."""
    done = turnout(*args, server=server)
    assert done.returncode == 1, f"turnout {' '.join(args)} exited {done.returncode}: {done.stdout}{done.stderr}"
    assert done.stdout == ""
    return done.stderr


def test_status_before_any_policy(gateway: GatewayProcess) -> None:
    everything = ok_json("status", server=gateway.control_address)
    assert [report["model"] for report in everything] == ["digits", "mirror", "plain", "traffic"]
    plain = ok_json("status", "plain", server=gateway.control_address)
    fleet = plain[0].pop("fleet")
    [process] = fleet["processes"]
    assert (process["host"], process["live"]) == (os.uname().nodename, True)
    assert process["process_id"].startswith(f"{os.uname().nodename}:")
    assert process["applied_generation"] == fleet["generation"]
    assert plain == [
        {
            "model": "plain",
            "policy": {
                "model": "plain",
                "policy": {"stable": "2", "shadows": [], "sticky_key": ""},
                "generation": "0",
                "explicit": False,
                "applied_by": [],
                "note": "",
            },
            "versions": [
                {"version": str(n), "state": "READY", "reason": "", "artifact_sha256": sha, "role": role}
                for n, sha, role in zip((1, 2), artifact_hashes(gateway, "plain"), ("", "stable"), strict=True)
            ],
            "traffic": {"model": "plain", "window_s": 60, "processes": 1, "arms": [], "kept": True},
            "shadow_comparison": [],
            "rollout": None,
        }
    ]
    text = ok("status", "plain", server=gateway.control_address)
    assert "plain  generation 0  (no policy set; highest READY version serves)" in text
    assert "stable  v2" in text and "READY" in text
    assert "fleet: generation 0, 1 host(s), 1 process(es)" in text


def artifact_hashes(gateway: GatewayProcess, model: str) -> list[str]:
    folders = sorted((gateway.repository / model).glob("[0-9]*"), key=lambda folder: int(folder.name))
    return [hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest() for folder in folders]


def test_refusals_exit_1_with_the_reason_on_stderr(gateway: GatewayProcess) -> None:
    address = gateway.control_address
    commands = {
        "missing version": (("canary", "plain", "9", "--weight", "10"), address),
        "weight 150%": (("canary", "plain", "1", "--weight", "150"), address),
        "fraction 2": (("shadow", "plain", "1", "--fraction", "2"), address),
        "no canary to promote": (("promote", "plain"), address),
        "unknown model": (("policy", "nothing-here", "--stable", "1"), address),
        "no version given": (("canary", "plain"), address),
        "no gateway there": (("status", "--timeout-s", "1"), "127.0.0.1:1"),
        "reason of 5,000 characters": (("policy", "plain", "--stable", "1", "--reason", "why " * 1250), address),
    }
    # None of them changes anything, so they may run side by side: subprocess start-up dominates.
    with ThreadPoolExecutor(len(commands)) as pool:
        futures = {case: pool.submit(refused, *args, server=server) for case, (args, server) in commands.items()}
        errors = {case: future.result() for case, future in futures.items()}
    assert errors["missing version"].startswith("turnout canary: FAILED_PRECONDITION: ")
    assert "version 9" in errors["missing version"]
    assert "INVALID_ARGUMENT" in errors["weight 150%"] and "INVALID_ARGUMENT" in errors["fraction 2"]
    assert "FAILED_PRECONDITION" in errors["no canary to promote"]
    assert "NOT_FOUND" in errors["unknown model"]
    assert "give VERSION and --weight" in errors["no version given"]
    assert errors["no gateway there"].startswith("turnout status: UNAVAILABLE: ")
    assert "INVALID_ARGUMENT" in errors["reason of 5,000 characters"]
    assert "5000 characters long; at most 4096" in errors["reason of 5,000 characters"]
    assert ok_json("status", "plain", server=address)[0]["policy"]["explicit"] is False, "nothing changed"
    assert ok_json("history", "plain", server=address) == {"model": "plain", "changes": []}


def test_a_history_limit_below_one_is_a_usage_error_not_a_traceback(gateway: GatewayProcess) -> None:
    for limit in ("-1", "0", "ten"):
        done = turnout("history", "plain", "--limit", limit, server=gateway.control_address)
        assert done.returncode == 2 and done.stdout == "", done.stderr
        assert "argument --limit" in done.stderr and "Traceback" not in done.stderr
    with grpc.insecure_channel(gateway.control_address) as channel:  # and a gateway asked directly bounds it too
        history = pb_grpc.RolloutsStub(channel).History
        with pytest.raises(grpc.RpcError) as refused_call:
            history(pb.HistoryRequest(model="plain", limit=4_000_000_000), timeout=20, metadata=BEARER)
    assert refused_call.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "1 to 1000" in refused_call.value.details()


def test_the_commands_send_the_token_and_print_a_refusal(gateway: GatewayProcess, tmp_path: Path) -> None:
    address = gateway.control_address
    # Refused calls are kept in their model's history: these name one no other test reads.
    none = turnout("history", "refused-here", server=address, env={"TURNOUT_TOKEN": ""})
    assert none.returncode == 1 and none.stderr.startswith("turnout history: UNAUTHENTICATED: "), none.stderr
    wrong = turnout("rollback", "refused-here", server=address, env={"TURNOUT_TOKEN": "not-a-token-0123456789"})
    assert wrong.returncode == 1 and wrong.stderr.startswith("turnout rollback: PERMISSION_DENIED: "), wrong.stderr
    token_file = tmp_path / "token"
    token_file.write_text("other-token-0123456789\n")
    by_file = turnout("history", "plain", "--token-file", str(token_file), server=address, env={"TURNOUT_TOKEN": ""})
    assert by_file.returncode == 0, by_file.stderr
    # The inference port serves no Rollouts: the refusal says where to go.
    elsewhere = turnout("history", "plain", server=gateway.address)
    assert elsewhere.returncode == 1 and elsewhere.stderr.startswith("turnout history: PERMISSION_DENIED: ")
    assert f"control address {address}" in elsewhere.stderr


def test_server_comes_from_turnout_server_by_default(gateway: GatewayProcess) -> None:
    done = turnout("status", "plain", "--json", server=None, env={"TURNOUT_SERVER": gateway.control_address})
    assert done.returncode == 0 and json.loads(done.stdout)[0]["model"] == "plain"


def test_a_rollout_from_the_command_line(gateway: GatewayProcess) -> None:
    address = gateway.control_address
    baseline = ok_json("policy", "digits", "--stable", "1", "--reason", "baseline", server=address)
    assert (baseline["policy"]["stable"], baseline["explicit"]) == ("1", True)
    assert len(baseline["applied_by"]) == 1

    canary = ok_json(
        "canary", "digits", "2", "--weight", "12.5", "--sticky-key", "x-user-id", "--reason", "try v2", server=address
    )
    assert canary["policy"]["canary"] == {"version": "2", "weight_bp": 1250}
    assert canary["policy"]["sticky_key"] == "x-user-id"
    assert int(canary["generation"]) > int(baseline["generation"])

    shadow = ok_json("shadow", "digits", "3", "--fraction", "0.5", "--reason", "watch v3", server=address)
    assert shadow["policy"]["shadows"] == [{"version": "3", "fraction": 0.5}]

    text = ok("promote", "digits", "--reason", "v2 is good", server=address)
    assert "stable  v2" in text and "canary" not in text and "shadow  v3 50%" in text

    cleared = ok_json("rollback", "digits", "--reason", "stop the trials", server=address)
    assert (cleared["policy"]["stable"], cleared["policy"]["shadows"]) == ("2", [])
    undone = ok_json("rollback", "digits", "--reason", "v2 is bad", server=address)
    assert undone["policy"]["stable"] == "1" and "canary" not in undone["policy"]
    again = refused("rollback", "digits", server=address)
    assert again.startswith("turnout rollback: FAILED_PRECONDITION: ") and "already rolled back" in again

    history = ok_json("history", "digits", server=address)
    steps = [(c["action"], c["reason"], c["actor"]) for c in history["changes"]]
    assert steps == [
        ("rollback", "v2 is bad", OPERATOR),
        ("rollback", "stop the trials", OPERATOR),
        ("promote", "v2 is good", OPERATOR),
        ("set-shadow", "watch v3", OPERATOR),
        ("set-canary", "try v2", OPERATOR),
        ("set-policy", "baseline", OPERATOR),
    ]
    generations = [int(c["generation"]) for c in history["changes"]]
    assert generations == sorted(generations, reverse=True) and generations[0] == int(undone["generation"])
    assert "before" not in history["changes"][-1], "the first policy has nothing before it"
    assert history["changes"][0]["before"]["stable"] == "2" and history["changes"][0]["after"]["stable"] == "1"
    assert abs(int(history["changes"][0]["at_unix_ms"]) / 1000 - time.time()) < 60

    text = ok("history", "digits", "--limit", "2", server=address)
    assert text.splitlines()[0] == "digits: 2 change(s), newest first"
    newest = text.splitlines()[1:3]
    assert "rollback" in newest[0] and f"by {OPERATOR}" in newest[0] and '"v2 is bad"' in newest[0]
    assert newest[1].strip().startswith("stable v2") and "->  stable v1" in newest[1]


def test_status_shows_shadow_figures(gateway: GatewayProcess, digits_pixels: npt.NDArray[np.float32]) -> None:
    address = gateway.control_address
    ok("policy", "mirror", "--stable", "1", server=address)
    ok("shadow", "mirror", "2", "--fraction", "1", server=address)
    requests = 20
    with grpc.insecure_channel(gateway.address) as channel, grpc.insecure_channel(address) as control:
        inference = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for row in range(requests):
            pixels = digits_pixels[row : row + 1]
            tensor = service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 64])
            request = service_pb2.ModelInferRequest(
                model_name="mirror", inputs=[tensor], raw_input_contents=[pixels.tobytes()]
            )
            assert inference.ModelInfer(request, timeout=20).model_version == "1"
        compared_all(pb_grpc.RolloutsStub(control), requests)

    report = ok_json("status", "mirror", server=address)[0]
    assert [(v["version"], v["role"]) for v in report["versions"]] == [("1", "stable"), ("2", "shadow")]
    [figures] = report["shadow_comparison"]
    assert (figures["primary_version"], figures["shadow_version"]) == ("1", "2")
    assert (figures["mirrored"], figures["compared"], figures["failed"]) == (str(requests), str(requests), "0")
    assert int(figures["top1_rows"]) == requests and 0 <= int(figures["top1_agreed"]) <= requests
    assert {item["output"] for item in figures["outputs"]} == {"label", "probabilities"}

    text = ok("status", "mirror", server=address)
    assert f"shadow v2 vs v1: {requests} compared, 0 failed, 0 dropped;" in text
    assert "% top-1 agreement" in text and "probabilities" in text and "max |diff|" in text
    assert "shadow  v2 100%" in text


def compared_all(rollouts: Any, requests: int) -> None:
    deadline = time.monotonic() + 15
    while True:
        request = pb.ShadowComparisonRequest(model="mirror")
        found = rollouts.GetShadowComparison(request, timeout=20, metadata=BEARER).figures
        if found and found[0].compared == requests:
            return
        assert time.monotonic() < deadline, f"shadow copies never all compared: {found}"
        time.sleep(0.05)


def infer_digits(inference: Any, model: str, pixels: npt.NDArray[np.float32]) -> service_pb2.ModelInferResponse:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=list(pixels.shape))
    request = service_pb2.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[pixels.tobytes()])
    return inference.ModelInfer(request, timeout=20)


def test_status_shows_each_arms_last_minute(gateway: GatewayProcess, digits_pixels: npt.NDArray[np.float32]) -> None:
    address = gateway.control_address
    ok("policy", "traffic", "--stable", "1", server=address)
    ok("canary", "traffic", "2", "--weight", "30", server=address)
    answered, bad = 120, 6
    served: dict[str, int] = {"1": 0, "2": 0}
    with grpc.insecure_channel(gateway.address) as channel, grpc.insecure_channel(address) as control:
        inference = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for row in range(answered):
            served[infer_digits(inference, "traffic", digits_pixels[row : row + 1]).model_version] += 1
        for _ in range(bad):  # 63 pixels, not 64: refused after routing, so counted on an arm
            with pytest.raises(grpc.RpcError) as refused_call:
                infer_digits(inference, "traffic", digits_pixels[:1, :63].copy())
            assert refused_call.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        rollouts = pb_grpc.RolloutsStub(control)
        deadline = time.monotonic() + 10  # figures land just after each answer
        traffic_request = pb.TrafficRequest(model="traffic")
        while sum(arm.requests for arm in rollouts.GetTraffic(traffic_request, metadata=BEARER).arms) < answered + bad:
            assert time.monotonic() < deadline, "the traffic figures never added up"
            time.sleep(0.05)

    traffic = ok_json("status", "traffic", server=address)[0]["traffic"]
    assert traffic["window_s"] == 60
    arms = {arm["arm"]: arm for arm in traffic["arms"]}
    assert set(arms) == {"stable", "canary"}
    stable, canary = arms["stable"], arms["canary"]
    assert (stable["version"], canary["version"]) == ("1", "2")
    assert int(stable["requests"]) + int(canary["requests"]) == answered + bad
    assert int(stable["errors"]) + int(canary["errors"]) == bad
    assert int(stable["requests"]) - int(stable["errors"]) == served["1"]
    assert int(canary["requests"]) - int(canary["errors"]) == served["2"] > 0
    for arm in (stable, canary):
        assert 0 < arm["p50_ms"] <= arm["p99_ms"] < 5_000
        assert arm["requests_per_s"] == pytest.approx(int(arm["requests"]) / 60)
        assert arm["error_rate"] == pytest.approx(int(arm["errors"]) / int(arm["requests"]))

    text = ok("status", "traffic", server=address)
    assert "last 60 s:" in text and "req/s" in text and "p99" in text and "errors" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip().startswith(("stable ", "canary "))}
    assert lines["canary"].split()[1] == "v2" and lines["stable"].split()[1] == "v1"


def test_status_watch_shows_the_report_again_until_interrupted(gateway: GatewayProcess) -> None:
    server = gateway.control_address
    command = [sys.executable, "-m", "gateway", "status", "plain", "--watch", "0.2", "--server", server]
    environment = {**os.environ, "TURNOUT_TOKEN": TOKEN}
    with subprocess.Popen(
        command, cwd=REPO_ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as watch:
        time.sleep(3)
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=20)
    assert (watch.returncode, err) == (0, "")
    screens = out.split("\x1b[H\x1b[2J")
    assert len([screen for screen in screens if screen.startswith("plain  generation")]) >= 2, out


def test_status_says_traffic_is_not_kept_without_metrics(tmp_path: Path) -> None:
    add_digits(tmp_path, "plain", {1: 1})
    with GatewayProcess(tmp_path, "--worker-mode", "inprocess", "--poll-interval-s", "0") as quiet:  # port 0
        text = ok("status", "plain", server=quiet.control_address)
    assert "traffic: not kept (the gateway runs with --metrics-port 0)" in text
