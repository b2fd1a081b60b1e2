"""Metrics through four gateway processes: one scrape of the supervisor's metrics port counts every
request once, per arm and status, and ModelStatistics (asked of any process) counts the same; Triton's
names agree, drift appears for the example model, OpenMetrics is served when asked, and every
metric the Grafana dashboard queries is exposed. And a gateway alone serves the port itself, shadow
divergence included.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway import headers
from gateway.wire.turnout.v1 import rollouts_pb2, rollouts_pb2_grpc
from tests.support.gateway_process import REPO_ROOT, GatewayProcess
from tests.support.model_repository import copy_digits

PROCESSES = 4
CLIENTS = 8
GOOD_EACH = 15  # per client: 120 answered requests
BAD_EACH = 2  # per client: 16 refused ones (a row of 63 pixels, INVALID_ARGUMENT)
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "turnout.json"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    repository = tmp_path_factory.mktemp("repository")
    copy_digits(repository)  # versions 1 and 2, each with its reference.parquet
    flags = ("--processes", str(PROCESSES), "--poll-interval-s", "0", "--metrics-port", str(free_port()))
    with GatewayProcess(repository, *flags) as running:
        yield running


def metrics_port(gateway: GatewayProcess) -> int:
    found = re.findall(r"turnout: metrics on http://[^:]+:(\d+)/metrics", "".join(gateway._lines))
    assert found, "the serving process prints where metrics are served"
    return int(found[0])


def scrape(gateway: GatewayProcess, accept: str | None = None) -> tuple[str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{metrics_port(gateway)}/metrics")
    if accept is not None:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.headers["Content-Type"], answer.read().decode()


def samples_of(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(found: Samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in found.items() if n == name and labels.items() <= dict(ls).items())


def infer_request(pixels: np.ndarray) -> service_pb2.ModelInferRequest:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=list(pixels.shape))
    return service_pb2.ModelInferRequest(
        model_name="digits", inputs=[tensor], raw_input_contents=[pixels.astype(np.float32).tobytes()]
    )


def send_traffic(address: str) -> Counter[str]:
    """Eight clients, each on its own connection (so spread over the processes); the arms answered."""
    arms: Counter[str] = Counter()
    lock = threading.Lock()
    good = infer_request(np.random.default_rng(0).random((1, 64)) * 16)
    bad = infer_request(np.zeros((1, 63)))

    def client() -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(address, options=options) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(GOOD_EACH):
                _, call = stub.ModelInfer.with_call(good, timeout=30)
                arm = dict(call.trailing_metadata())[headers.ARM]
                with lock:
                    arms[arm] += 1
            for _ in range(BAD_EACH):
                with pytest.raises(grpc.RpcError) as refused:
                    stub.ModelInfer(bad, timeout=30)
                assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return arms


@pytest.fixture(scope="module")
def traffic(gateway: GatewayProcess) -> tuple[Counter[str], Samples]:
    """The canary split's traffic, and a scrape once every request is counted (counts land just
    after the caller has its answer, so the scrape is repeated briefly until they are all there)."""
    with grpc.insecure_channel(gateway.control_address) as channel:
        control = rollouts_pb2_grpc.RolloutsStub(channel)
        stable = rollouts_pb2.SetPolicyRequest(model="digits", policy=rollouts_pb2.Policy(stable=1))
        control.SetPolicy(stable)
        canary = rollouts_pb2.SetCanaryRequest(model="digits", version=2, weight_percent=30, reason="metrics test")
        control.SetCanary(canary)
    arms = send_traffic(gateway.address)
    expected = CLIENTS * (GOOD_EACH + BAD_EACH)
    deadline = time.monotonic() + 15
    while True:
        found = samples_of(scrape(gateway)[1])
        if total(found, "turnout_requests_total", model="digits") >= expected or time.monotonic() > deadline:
            return arms, found
        time.sleep(0.2)


def test_one_scrape_counts_every_request_once_per_arm_and_status(traffic: tuple[Counter[str], Samples]) -> None:
    arms, found = traffic
    assert set(arms) == {"stable", "canary"} and sum(arms.values()) == CLIENTS * GOOD_EACH
    assert total(found, "turnout_requests_total") == CLIENTS * (GOOD_EACH + BAD_EACH)
    for arm, count in arms.items():
        assert total(found, "turnout_requests_total", arm=arm, code="OK") == count, arm
        assert total(found, "turnout_request_duration_seconds_count", arm=arm) >= count
    assert total(found, "turnout_requests_total", code="INVALID_ARGUMENT") == CLIENTS * BAD_EACH
    assert total(found, "turnout_batch_size_sum", model="digits") == CLIENTS * GOOD_EACH, "one row each"
    assert total(found, "turnout_policy_generation", model="digits") >= 1


def test_model_statistics_from_any_process_count_the_same(
    gateway: GatewayProcess, traffic: tuple[Counter[str], Samples]
) -> None:
    arms, _ = traffic
    for _ in range(3):  # each client has its own connection, so likely a different process each time
        own_connection = [("grpc.use_local_subchannel_pool", 1)]
        with triton.InferenceServerClient(gateway.address, channel_args=own_connection) as client:
            stats = {s.version: s for s in client.get_inference_statistics("digits", as_json=False).model_stats}
        assert stats["1"].inference_stats.success.count == arms["stable"]
        assert stats["2"].inference_stats.success.count == arms["canary"]
        assert sum(s.inference_stats.fail.count for s in stats.values()) == CLIENTS * BAD_EACH


def test_tritons_names_carry_tritons_counts(traffic: tuple[Counter[str], Samples]) -> None:
    arms, found = traffic
    assert total(found, "nv_inference_request_success", model="digits", version="1") == arms["stable"]
    assert total(found, "nv_inference_request_success", model="digits", version="2") == arms["canary"]
    assert total(found, "nv_inference_request_failure", model="digits", reason="OTHER") == CLIENTS * BAD_EACH
    assert total(found, "nv_inference_count", model="digits") == CLIENTS * GOOD_EACH
    executions = total(found, "nv_inference_exec_count", model="digits")
    assert 1 <= executions <= CLIENTS * GOOD_EACH
    assert total(found, "nv_inference_request_duration_us", model="digits") > 0


def test_drift_appears_for_the_served_versions(traffic: tuple[Counter[str], Samples]) -> None:
    arms, found = traffic
    assert total(found, "turnout_drift_window_rows", model="digits", version="1") == arms["stable"]
    features = {dict(ls)["feature"] for (n, ls) in found if n == "turnout_drift_psi" and dict(ls)["version"] == "1"}
    assert len(features) == 64
    # Every request sent the same row, far from the reference's spread: the window drifts.
    assert total(found, "turnout_drift_psi", model="digits", version="1", feature="px_10") > 0.25


def test_openmetrics_when_the_scraper_asks(gateway: GatewayProcess) -> None:
    content_type, text = scrape(gateway, accept="application/openmetrics-text; version=1.0.0; charset=utf-8")
    assert content_type.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n") and "turnout_requests_total{" in text
    content_type, text = scrape(gateway)
    assert content_type.startswith("text/plain") and "# EOF" not in text


def exposed_names(text: str) -> set[str]:
    """Every series name the scrape offers, with a histogram's and a counter's suffixes, samples or not."""
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def test_every_metric_the_dashboard_queries_is_exposed(gateway: GatewayProcess) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queries += [variable["definition"] for variable in dashboard["templating"]["list"] if "definition" in variable]
    used = {name for query in queries for name in re.findall(r"\b((?:turnout|nv)_[a-z0-9_]+)\b", query)}
    assert len(used) >= 20
    assert sorted(used - exposed_names(scrape(gateway)[1])) == []
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("per arm", "error", "latency", "batch", "queue", "shadow", "drift"):
        assert topic in titles, topic


def test_the_dashboard_file_is_in_the_repository() -> None:
    assert Path(DASHBOARD).is_file()


def test_a_gateway_alone_serves_its_own_metrics_with_shadow_divergence(tmp_path: Path) -> None:
    copy_digits(tmp_path)
    port = free_port()
    with GatewayProcess(tmp_path, "--poll-interval-s", "0", "--metrics-port", str(port)) as alone:
        assert metrics_port(alone) == port
        with grpc.insecure_channel(alone.control_address) as control:
            policy = rollouts_pb2.Policy(stable=1, shadows=[rollouts_pb2.Shadow(version=2, fraction=1.0)])
            request = rollouts_pb2.SetPolicyRequest(model="digits", policy=policy)
            rollouts_pb2_grpc.RolloutsStub(control).SetPolicy(request)
        with grpc.insecure_channel(alone.address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            pixels = np.random.default_rng(1).random((4, 64)) * 16
            for _ in range(10):
                stub.ModelInfer(infer_request(pixels), timeout=30)
        deadline = time.monotonic() + 15
        while True:  # shadow copies are answered after their primaries
            found = samples_of(scrape(alone)[1])
            if total(found, "turnout_shadow_compared_total") >= 10 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    shadow = {"model": "digits", "version": "1", "shadow_version": "2"}
    assert total(found, "turnout_requests_total", arm="stable", code="OK") == 10
    assert total(found, "turnout_batch_size_sum", version="1") == 40, "four rows a request"
    assert total(found, "turnout_shadow_copies_total", outcome="sent", **shadow) == 10
    assert total(found, "turnout_shadow_compared_total", **shadow) == 10
    assert total(found, "turnout_shadow_top1_compared_rows_total", **shadow) == 40
    agreement = total(found, "turnout_shadow_top1_agreement", **shadow)
    assert 0 <= agreement <= 1
    assert ("turnout_shadow_max_abs_diff", tuple(sorted({**shadow, "output": "probabilities"}.items()))) in found
    assert total(found, "turnout_policy_generation", model="digits") >= 1
    assert total(found, "turnout_worker_restarts_total", model="digits") == 0


def test_each_arms_last_minute_sums_every_process(
    gateway: GatewayProcess, traffic: tuple[Counter[str], Samples]
) -> None:
    # turnout status's figures (GetTraffic), asked of whichever process a connection lands on.
    arms, _ = traffic
    for _ in range(3):
        own_connection = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(gateway.control_address, options=own_connection) as channel:
            view = rollouts_pb2_grpc.RolloutsStub(channel).GetTraffic(rollouts_pb2.TrafficRequest(model="digits"))
        assert (view.kept, view.processes, view.window_s) == (True, PROCESSES, 60)
        by_arm = {arm.arm: arm for arm in view.arms}
        assert set(by_arm) == {"stable", "canary"}
        for arm, count in arms.items():
            assert by_arm[arm].requests - by_arm[arm].errors == count, arm
        assert sum(arm.errors for arm in view.arms) == CLIENTS * BAD_EACH
        assert all(0 < arm.p50_ms <= arm.p99_ms for arm in view.arms)
