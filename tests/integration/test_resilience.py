"""The gateway under trouble while clients keep calling: a killed worker, a new version, an unload,
a SIGTERM; and the standard gRPC services operators point at it (health Check and Watch, reflection).
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as triton
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from tritonclient.utils import InferenceServerException

from tests.support.gateway_process import REPOSITORY_KEY, REPOSITORY_KEY_FLAG, GatewayProcess, worker_pids
from tests.support.model_repository import copy_digits, save_version, slow_model, slow_rounds_for
from tests.support.steady_load import SteadyLoad

Pixels = npt.NDArray[np.float32]

MODEL = "digits"
SLOW = "slow"
_SYS_TGKILL = {"x86_64": 234, "aarch64": 131}.get(platform.machine(), 234)
THREADS = 8
TIMEOUT_S = 20.0
GRACE_S = 10.0
INFERENCE_SERVICE = "inference.GRPCInferenceService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# The first slow request waits 50 ms for others, so requests sent together run as one batch.
SLOW_YAML = """
max_batch_size: 8
dynamic_batching:
  max_queue_delay_microseconds: 50000
"""
SLOW_S = 1.0  # how long each slow request computes: long enough to still be in flight when acted on
SETTLE_S = 0.3  # long enough for requests sent just before to reach the gateway and be queued


# --- a steady load of digits requests ---------------------------------------------------------------


def steady_load(address: str, rows: Pixels) -> SteadyLoad:
    """``THREADS`` clients, each sending one digits request of ``rows`` after another until the block ends."""
    return SteadyLoad(address, MODEL, "input", rows, THREADS)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> float:
    """Poll until ``condition`` holds; the monotonic time it was first seen to hold."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# --- slow requests held in flight ------------------------------------------------------------------


@dataclass(slots=True)
class SlowCall:
    sent: float
    finished: float = 0.0
    result: Any = None
    error: InferenceServerException | None = None


def send_slow(client: triton.InferenceServerClient, count: int, rounds: int | None = None) -> list[SlowCall]:
    """Start ``count`` slow requests (about SLOW_S each) without waiting; each SlowCall fills in when answered."""
    rows = np.full((1, 1), slow_rounds_for(SLOW_S) if rounds is None else rounds, np.float32)
    calls = []
    for _ in range(count):
        call = SlowCall(time.monotonic())
        request = triton.InferInput("x", [1, 1], "FP32")
        request.set_data_from_numpy(rows)

        def answered(result: Any, error: InferenceServerException | None, call: SlowCall = call) -> None:
            call.result, call.error, call.finished = result, error, time.monotonic()

        client.async_infer(SLOW, [request], answered, client_timeout=TIMEOUT_S)
        calls.append(call)
    return calls


def assert_all_served(calls: list[SlowCall]) -> None:
    wait_until(lambda: all(call.finished for call in calls), "every slow request to be answered")
    for call in calls:
        assert call.error is None, call.error
        np.testing.assert_array_equal(call.result.as_numpy("y"), np.full((1, 1), slow_rounds_for(SLOW_S), np.float32))


def slow_repository(root: Path) -> Path:
    save_version(root, SLOW, 1, slow_model())
    (root / SLOW / "model.yaml").write_text(SLOW_YAML)
    return root


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["fork", "spawn"])
def digits_gateway(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[GatewayProcess]:
    """digits version 2 alone, so it has exactly one worker process: forked from the zygote, or spawned."""
    repository = tmp_path_factory.mktemp("resilience")
    copy_digits(repository, versions=(2,))
    with GatewayProcess(repository, "--poll-interval-s", "0", "--worker-start", request.param) as running:
        yield running


@pytest.fixture
def slow_gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    flags = ("--poll-interval-s", "0", "--grace-period-s", str(GRACE_S), REPOSITORY_KEY_FLAG)
    with GatewayProcess(slow_repository(tmp_path), *flags) as gw:
        yield gw


@pytest.fixture
def health(slow_gateway: GatewayProcess) -> Iterator[health_pb2_grpc.HealthStub]:
    with grpc.insecure_channel(slow_gateway.address) as channel:
        yield health_pb2_grpc.HealthStub(channel)


# --- (a) a worker killed under load ----------------------------------------------------------------


def test_killed_worker_fails_only_its_batch_and_serving_resumes(
    digits_gateway: GatewayProcess, digits_pixels: Pixels
) -> None:
    assert digits_gateway.process is not None
    gateway_pid = digits_gateway.process.pid
    [old_worker] = worker_pids(gateway_pid)
    with steady_load(digits_gateway.address, digits_pixels[:2]) as load:
        load.wait_for_successes(20)
        killed_at = time.monotonic()
        os.kill(old_worker, signal.SIGKILL)
        # How the worker ended is known even when the zygote, not the gateway, is its parent.
        digits_gateway.wait_for_log("exited (killed by signal 9); restarting")
        digits_gateway.wait_for_log("serving again (restart 1)")
        recovered_at = time.monotonic()
        [new_worker] = worker_pids(gateway_pid)
        load.wait_for_successes(50, started_after=recovered_at)
    assert new_worker != old_worker
    outcomes = load.outcomes()
    # None at all is possible too: the kill may land between two batches.
    failures = [o for o in outcomes if o.status != "OK"]
    assert all(o.status == grpc.StatusCode.UNAVAILABLE.name for o in failures), failures
    assert all("died during the batch" in o.message for o in failures), failures
    # Only requests in flight when the worker died fail: at most one per client thread.
    assert len(failures) <= THREADS, failures
    assert all(o.finished >= killed_at and o.started <= recovered_at for o in failures), failures
    later = [o for o in outcomes if o.started > recovered_at]
    assert later and all(o.status == "OK" for o in later)


# --- (b) a new version directory appears under load -------------------------------------------------


def test_new_version_is_picked_up_under_load_without_failures(tmp_path: Path, digits_pixels: Pixels) -> None:
    repository = tmp_path / "repository"
    model_dir = copy_digits(repository)
    # Built outside the repository and renamed in, so the poller never sees half a file.
    staging = tmp_path / "staging"
    shutil.copytree(model_dir / "2", staging)
    with (
        GatewayProcess(repository, "--poll-interval-s", "0.2") as gateway,
        triton.InferenceServerClient(gateway.address) as client,
    ):
        with steady_load(gateway.address, digits_pixels[:2]) as load:
            load.wait_for_successes(20)
            staging.rename(model_dir / "3")
            wait_until(lambda: client.is_model_ready(MODEL, "3"), "version 3 to become READY")
            first_answer = wait_until(
                lambda: any(o.version == "3" for o in load.outcomes()), "a request answered by version 3"
            )
            load.wait_for_successes(20, started_after=first_answer)
        index = {e.version: e.state for e in client.get_model_repository_index().models if e.name == MODEL}
        latest = client.infer(MODEL, [_digits_input(digits_pixels)], client_timeout=TIMEOUT_S)
    assert index == {"1": "READY", "2": "READY", "3": "READY"}
    outcomes = load.outcomes()
    assert [o for o in outcomes if o.status != "OK"] == []
    assert {o.version for o in outcomes} == {"2", "3"}
    assert all(o.version == "3" for o in outcomes if o.started > first_answer)
    assert latest.get_response().model_version == "3"


def _digits_input(pixels: Pixels) -> triton.InferInput:
    item = triton.InferInput("input", [1, 64], "FP32")
    item.set_data_from_numpy(pixels[:1])
    return item


# --- (c) unloading drains the requests in flight ----------------------------------------------------


def test_unload_waits_for_accepted_requests_and_refuses_later_ones(slow_gateway: GatewayProcess) -> None:
    quick = np.zeros((1, 1), np.float32)
    later: list[tuple[float, str]] = []
    stop = threading.Event()

    def keep_calling(client: triton.InferenceServerClient) -> None:
        request = triton.InferInput("x", [1, 1], "FP32")
        request.set_data_from_numpy(quick)
        while not stop.is_set():
            started = time.monotonic()
            try:
                client.infer(SLOW, [request], client_timeout=TIMEOUT_S)
                later.append((started, "OK"))
            except InferenceServerException as error:
                later.append((started, str(error.status())))
                time.sleep(0.01)

    with (
        triton.InferenceServerClient(slow_gateway.address) as client,
        triton.InferenceServerClient(slow_gateway.address) as prober,
    ):
        accepted = send_slow(client, 4)
        time.sleep(SETTLE_S)
        prober_thread = threading.Thread(target=keep_calling, args=(prober,))
        unload_started = time.monotonic()
        prober_thread.start()
        client.unload_model(SLOW, headers=REPOSITORY_KEY)
        unload_done = time.monotonic()
        time.sleep(0.2)
        stop.set()
        prober_thread.join(TIMEOUT_S)
        assert_all_served(accepted)
        assert not client.is_model_ready(SLOW, "1")
        client.load_model(SLOW, headers=REPOSITORY_KEY)
        assert client.is_model_ready(SLOW, "1")
    assert all(call.finished > unload_started for call in accepted), "done before the unload: raise SLOW_S"
    # unload_model returned only once every accepted request had its answer.
    assert all(call.finished <= unload_done for call in accepted)
    assert {status for _, status in later} <= {"OK", str(grpc.StatusCode.UNAVAILABLE)}
    after = [status for started, status in later if started > unload_done]
    assert after and set(after) == {str(grpc.StatusCode.UNAVAILABLE)}


# --- (d) SIGTERM: NOT_SERVING, drain, exit 0 ---------------------------------------------------------


def check(stub: health_pb2_grpc.HealthStub, service: str = "") -> int:
    reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
    return int(reply.status)


def test_sigterm_reports_not_serving_drains_and_exits_zero(
    slow_gateway: GatewayProcess, health: health_pb2_grpc.HealthStub
) -> None:
    assert slow_gateway.process is not None
    assert check(health) == SERVING and check(health, INFERENCE_SERVICE) == SERVING
    with triton.InferenceServerClient(slow_gateway.address) as client:
        in_flight = send_slow(client, 4)
        time.sleep(SETTLE_S)
        signalled = time.monotonic()
        slow_gateway.process.send_signal(signal.SIGTERM)
        try:
            wait_until(lambda: check(health) == NOT_SERVING, "health to say NOT_SERVING", timeout_s=5.0)
        except AssertionError as late:
            raise AssertionError(f"{late}; the gateway's log:\n{slow_gateway.log()}") from None
        assert check(health, INFERENCE_SERVICE) == NOT_SERVING
        # Calls on connections the gateway accepted before its listener closed are served for a
        # moment (gateway/edge/server.py, stop); after that a new call is refused.
        slow_gateway.wait_for_log("refusing new inference calls", timeout_s=5.0)
        refused = send_slow(client, 1, rounds=0)
        status = slow_gateway.stop(timeout_s=GRACE_S + 5)
        exited = time.monotonic()
        assert_all_served(in_flight)
        wait_until(lambda: bool(refused[0].finished), "the refused request's answer")
    assert status == 0, slow_gateway.log()
    assert exited - signalled < GRACE_S
    assert all(call.finished > signalled for call in in_flight), "done before SIGTERM: raise SLOW_S"
    assert all(call.finished <= exited for call in in_flight)
    assert refused[0].error is not None and refused[0].error.status() == str(grpc.StatusCode.UNAVAILABLE)
    assert "shutting down" in str(refused[0].error.message())


# --- (e) health Watch -------------------------------------------------------------------------------


def test_health_watch_streams_serving_then_not_serving_on_shutdown(tmp_path: Path) -> None:
    copy_digits(tmp_path, versions=(2,))
    with (
        GatewayProcess(tmp_path, "--poll-interval-s", "0", "--grace-period-s", str(GRACE_S)) as gateway,
        grpc.insecure_channel(gateway.address) as channel,
    ):
        assert gateway.process is not None
        statuses = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=INFERENCE_SERVICE))
        assert next(statuses).status == SERVING
        signalled = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        assert next(statuses).status == NOT_SERVING
        with pytest.raises(grpc.RpcError) as ended:
            next(statuses)
        assert ended.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert gateway.stop(timeout_s=GRACE_S) == 0
        # An open Watch stream must not hold the stop for the whole grace period.
        assert time.monotonic() - signalled < GRACE_S / 2


# --- (f) server reflection ---------------------------------------------------------------------------


def test_reflection_lists_and_describes_the_inference_service(digits_gateway: GatewayProcess) -> None:
    with grpc.insecure_channel(digits_gateway.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        # Its own pool: tritonclient's copy of these messages already sits in the default one.
        service = descriptor_pool.DescriptorPool(database).FindServiceByName(INFERENCE_SERVICE)
        methods = {method.name for method in service.methods}
    assert {INFERENCE_SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
    assert {"ModelInfer", "ModelStreamInfer", "ModelMetadata", "RepositoryIndex"} <= methods


def signal_one_thread(pid: int, tid: int, signum: int) -> None:
    """tgkill(2): a signal for one thread of a process, as the kernel may choose when it delivers."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_TGKILL, pid, tid, signum) != 0:
        raise OSError(ctypes.get_errno(), f"tgkill({pid}, {tid}) failed")


@pytest.mark.parametrize("processes", ["1", "2"], ids=["gateway", "supervisor"])
def test_a_sigterm_taken_by_any_thread_stops_the_gateway(tmp_path: Path, processes: str) -> None:
    """The kernel hands a process's SIGTERM to whichever thread it likes. Python runs the handler on
    the main thread, which must notice even when another thread took the signal."""
    copy_digits(tmp_path, versions=(1,))
    flags = ("--processes", processes, "--worker-mode", "inprocess", "--poll-interval-s", "0")
    with GatewayProcess(tmp_path, *flags) as gateway:
        assert gateway.process is not None
        pid = gateway.process.pid
        others = sorted(int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid)
        signal_one_thread(pid, others[-1], signal.SIGTERM)
        try:
            status = gateway.process.wait(timeout=TIMEOUT_S)  # nothing in flight: it stops in about a second
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the gateway ignored the SIGTERM; its log:\n{gateway.log()}") from None
        assert status == 0 and "received SIGTERM; stopping" in gateway.log(), gateway.log()


# --- a worker that dies after its model file is gone -----------------------------------------------


def test_a_worker_that_cannot_restart_makes_its_version_unavailable_at_once(
    tmp_path: Path, digits_pixels: Pixels
) -> None:
    repository = tmp_path / "repository"
    copy_digits(repository, versions=(1,))
    with GatewayProcess(repository, "--poll-interval-s", "0") as gateway:
        assert gateway.process is not None
        with triton.InferenceServerClient(gateway.address) as client:
            row = triton.InferInput("input", [1, 64], "FP32")
            row.set_data_from_numpy(digits_pixels[:1])
            client.infer(MODEL, [row], client_timeout=TIMEOUT_S)
            (repository / MODEL / "1" / "model.onnx").unlink()
            [worker] = worker_pids(gateway.process.pid)
            os.kill(worker, signal.SIGKILL)
            gateway.wait_for_log("cannot be restarted")
            gateway.wait_for_log("is UNAVAILABLE: its worker died and cannot be restarted")
            [entry] = [e for e in client.get_model_repository_index().models if e.name == MODEL]
            assert entry.state == "UNAVAILABLE" and "cannot be restarted" in entry.reason
            for version in ("", "1"):  # the default and a pin alike: answered at once, with the reason
                asked = time.monotonic()
                with pytest.raises(InferenceServerException) as refused:
                    client.infer(MODEL, [row], model_version=version, client_timeout=TIMEOUT_S)
                assert time.monotonic() - asked < 2.0
                assert refused.value.status() == str(grpc.StatusCode.UNAVAILABLE)
                assert "cannot be restarted" in str(refused.value.message())
        stopping = time.monotonic()
        assert gateway.stop() == 0
        assert time.monotonic() - stopping < GRACE_S, "a stop does not wait for a worker that is not coming"


def test_a_model_yaml_broken_under_a_serving_model_is_shown_and_logged_once(
    tmp_path: Path, digits_pixels: Pixels
) -> None:
    repository = tmp_path / "repository"
    copy_digits(repository, versions=(1,))
    with GatewayProcess(repository, "--worker-mode", "inprocess", "--poll-interval-s", "0.1") as gateway:
        (repository / MODEL / "model.yaml").write_text("max_batch_size: [not, a, number\n")
        said = "its loaded versions serve on with the settings they had"
        gateway.wait_for_log(said)
        time.sleep(0.5)  # several scans later
        assert gateway.log().count(said) == 1
        with triton.InferenceServerClient(gateway.address) as client:
            [entry] = [e for e in client.get_model_repository_index().models if e.name == MODEL]
            assert entry.state == "READY"
            assert entry.reason.startswith("serving with the settings it was loaded with; the model's settings now")
            assert "model.yaml" in entry.reason
            row = triton.InferInput("input", [1, 64], "FP32")
            row.set_data_from_numpy(digits_pixels[:1])
            client.infer(MODEL, [row], client_timeout=TIMEOUT_S)
