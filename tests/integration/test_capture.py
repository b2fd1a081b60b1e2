"""Capture through real gateway processes and real ONNX models: what callers were told is what is on disk.

``sync`` capture survives SIGKILL: after a restart (which recovers the write-ahead log before it is
ready), every acknowledged request is in the Parquet dataset, bit for bit as sent, with the version
and arm its caller was told. ``async`` capture loses nothing on a graceful stop. A canary's records
carry the arms and versions of the trailing metadata, and a budget or an unwritable directory never
stops the gateway serving.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.capture.naming import writer_of_counters
from gateway.capture.parquet import open_dataset
from gateway.settings import capture_host_name
from gateway.wire.turnout.v1 import rollouts_pb2 as pb
from gateway.wire.turnout.v1 import rollouts_pb2_grpc as pb_grpc
from tests.support.gateway_process import REPO_ROOT, GatewayProcess
from tests.support.model_repository import copy_digits

# The number; about 15 s here on two shared cores.
SYNC_REQUESTS = 20_000
CLIENT_THREADS = 8
TIMEOUT_S = 20.0
FEATURES = [f"px_{index}" for index in range(64)]


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    copy_digits(tmp_path / "models")
    return tmp_path / "models"


def request_of(request_id: str, pixels: np.ndarray, version: str = "") -> service_pb2.ModelInferRequest:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=list(pixels.shape))
    return service_pb2.ModelInferRequest(
        model_name="digits", model_version=version, id=request_id, inputs=[tensor],
        raw_input_contents=[pixels.astype("<f4").tobytes()],
    )  # fmt: skip


class Sender:
    """Sends distinct requests from several threads and remembers what each caller was told."""

    def __init__(self, address: str, seed: int = 1) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.sent: dict[str, np.ndarray] = {}
        self.told: dict[str, tuple[str, str]] = {}  # id -> (version, arm) from the trailers
        self.failures = 0
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(seed)

    def one(self, request_id: str) -> None:
        with self._lock:
            pixels = self._rng.integers(0, 17, size=(1, 64)).astype(np.float32)
            self.sent[request_id] = pixels
        try:
            response, call = self.stub.ModelInfer.with_call(request_of(request_id, pixels), timeout=TIMEOUT_S)
        except grpc.RpcError:
            with self._lock:
                self.failures += 1
            return
        trailers = dict(call.trailing_metadata())
        with self._lock:
            self.told[request_id] = (response.model_version, str(trailers["turnout-arm"]))

    def many(self, prefix: str, count: int, stop: threading.Event | None = None) -> None:
        def work(thread: int) -> None:
            for index in range(thread, count, CLIENT_THREADS):
                if stop is not None and stop.is_set():
                    return
                self.one(f"{prefix}-{index}")

        threads = [threading.Thread(target=work, args=(thread,)) for thread in range(CLIENT_THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def close(self) -> None:
        self.channel.close()


def captured(root: Path) -> dict[str, dict[str, object]]:
    rows = open_dataset(root).to_table().to_pylist()
    return {str(row["request_id"]): row for row in rows}


def pixels_of(row: dict[str, object]) -> np.ndarray:
    return np.array([[row[name] for name in FEATURES]], dtype=np.float32)


def test_sync_capture_keeps_every_acknowledged_request_through_a_sigkill(repository: Path, tmp_path: Path) -> None:
    root = tmp_path / "capture"
    flags = ["--capture-dir", str(root), "--capture-durability", "sync", "--capture-overflow", "block"]
    gateway = GatewayProcess(repository, *flags).start()
    sender = Sender(gateway.address)
    stop = threading.Event()
    sending = threading.Thread(target=sender.many, args=("sync", SYNC_REQUESTS, stop))
    started = time.monotonic()
    sending.start()
    while len(sender.told) < SYNC_REQUESTS * 2 // 3 and sending.is_alive():
        time.sleep(0.01)
    gateway.stop(signal.SIGKILL)  # mid-stream: some requests are in flight
    stop.set()
    sending.join()
    elapsed = time.monotonic() - started
    sender.close()
    with GatewayProcess(repository, *flags) as restarted:  # recovers before it says it serves
        records = captured(root)
        assert restarted.process is not None
    acknowledged = set(sender.told)
    assert len(acknowledged) >= SYNC_REQUESTS // 2, f"{len(acknowledged)} answered in {elapsed:.1f}s"
    assert acknowledged <= set(records)
    # A record may be committed while its answer dies with the process: kept, but never answered.
    assert set(records) <= set(sender.sent)
    for request_id in acknowledged:
        row = records[request_id]
        assert pixels_of(row).tobytes() == sender.sent[request_id].tobytes()
        assert (str(row["version"]), row["arm"], row["status"]) == (*sender.told[request_id], "OK")
    print(json.dumps({"acknowledged": len(acknowledged), "captured": len(records), "seconds": round(elapsed, 1)}))


def test_a_streams_answers_wait_for_their_sync_records_too(repository: Path, tmp_path: Path) -> None:
    root = tmp_path / "capture"
    flags = ["--capture-dir", str(root), "--capture-durability", "sync"]
    rng = np.random.default_rng(9)
    sent = {f"stream-{index}": rng.integers(0, 17, size=(1, 64)).astype(np.float32) for index in range(100)}
    with GatewayProcess(repository, *flags) as gateway, grpc.insecure_channel(gateway.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        requests = iter([request_of(request_id, pixels) for request_id, pixels in sent.items()])
        answers = list(stub.ModelStreamInfer(requests, timeout=TIMEOUT_S))
        assert [answer.error_message for answer in answers] == [""] * len(sent)
        assert {answer.infer_response.id for answer in answers} == set(sent)
        gateway.stop(signal.SIGKILL)  # every answer received means every record committed
    with GatewayProcess(repository, *flags):
        records = captured(root)
    for request_id, pixels in sent.items():
        assert pixels_of(records[request_id]).tobytes() == pixels.tobytes()


def test_async_capture_loses_nothing_on_a_graceful_stop(repository: Path, tmp_path: Path) -> None:
    root = tmp_path / "capture"
    with GatewayProcess(repository, "--capture-dir", str(root), "--capture-flush-ms", "1000") as gateway:
        sender = Sender(gateway.address)
        sender.many("async", 400)
        bad = request_of("bad-1", np.zeros((1, 3), np.float32))
        with pytest.raises(grpc.RpcError) as refused:
            sender.stub.ModelInfer(bad, timeout=TIMEOUT_S)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        sender.close()
    records = captured(root)
    assert set(records) == {*sender.told, "bad-1"}
    for request_id, pixels in sender.sent.items():
        assert pixels_of(records[request_id]).tobytes() == pixels.tobytes()
        assert records[request_id]["output.label"] is not None
    assert records["bad-1"]["status"] == "INVALID_ARGUMENT"
    assert list((root / "_wal").glob("*.log")) == []  # everything compacted on the way out


def test_async_capture_after_a_sigkill_loses_at_most_the_flush_intervals_records_and_says_so(
    repository: Path, tmp_path: Path
) -> None:
    root = tmp_path / "capture"
    flush_ms = 200
    flags = ["--capture-dir", str(root), "--capture-flush-ms", str(flush_ms)]
    gateway = GatewayProcess(repository, *flags).start()
    sender = Sender(gateway.address)
    answered_at: dict[str, float] = {}
    stop = threading.Event()

    def send() -> None:
        index = 0
        while not stop.is_set():
            request_id = f"async-kill-{index}"
            sender.one(request_id)
            if request_id in sender.told:
                answered_at[request_id] = time.monotonic()
            index += 1

    sending = threading.Thread(target=send)
    sending.start()
    time.sleep(2.0)
    gateway.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    stop.set()
    sending.join()
    sender.close()
    with GatewayProcess(repository, *flags) as restarted:  # recovers what was committed, and reports the loss
        records = captured(root)
        log = restarted.log()
    lost = [request_id for request_id in answered_at if request_id not in records]
    # Only what was answered within the last flush interval (and the writer's one write) may be lost;
    # the margin is for a loaded two-core host, where the writer thread may run late.
    assert all(killed_at - answered_at[request_id] < flush_ms / 1000 + 1.0 for request_id in lost), lost
    assert len(answered_at) > 100 and len(lost) < len(answered_at) // 2
    assert "stopped without a graceful stop" in log and f"at most its last {flush_ms} ms" in log
    assert capture_report(root)["unclean_stops"] == 1
    print(json.dumps({"answered": len(answered_at), "lost": len(lost)}))


def test_each_of_several_gateway_processes_writes_its_own_segments_and_nothing_is_lost(
    repository: Path, tmp_path: Path
) -> None:
    root = tmp_path / "capture"
    flags = ["--processes", "2", "--capture-dir", str(root), "--capture-durability", "sync"]
    with GatewayProcess(repository, *flags) as gateway:
        senders = [Sender(gateway.address, seed=seed) for seed in range(4)]  # a channel each: both processes serve
        threads = [threading.Thread(target=s.many, args=(f"p{index}", 100)) for index, s in enumerate(senders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for sender in senders:
            sender.close()
    records = captured(root)
    assert set(records) == {request_id for sender in senders for request_id in sender.told}
    writers = {writer_of_counters(path.stem) for path in (root / "_stats").glob("*.json")}
    # Each process keeps its own counters (and names its segments the same way), under the one host's name.
    assert len({writer.pid for writer in writers if writer is not None}) == 2
    assert {writer.host for writer in writers if writer is not None} == {capture_host_name("")}


def test_a_canarys_records_carry_the_arms_and_versions_callers_were_told(repository: Path, tmp_path: Path) -> None:
    root = tmp_path / "capture"
    with GatewayProcess(repository, "--capture-dir", str(root)) as gateway:
        with grpc.insecure_channel(gateway.control_address) as channel:
            rollouts = pb_grpc.RolloutsStub(channel)
            rollouts.SetPolicy(pb.SetPolicyRequest(model="digits", policy=pb.Policy(stable=1)),
                               timeout=TIMEOUT_S)  # fmt: skip
            rollouts.SetCanary(pb.SetCanaryRequest(model="digits", version=2, weight_percent=30), timeout=TIMEOUT_S)
        sender = Sender(gateway.address, seed=3)
        sender.many("canary", 600)
        sender.close()
    records = captured(root)
    arms = {arm for _, arm in sender.told.values()}
    assert arms == {"stable", "canary"}
    for request_id, (version, arm) in sender.told.items():
        row = records[request_id]
        assert (str(row["version"]), row["arm"], row["reason"]) == (version, arm, "random")
        assert int(str(row["generation"])) > 0
    canaries = sum(arm == "canary" for _, arm in sender.told.values())
    assert 0.2 < canaries / len(sender.told) < 0.4


def test_a_shadows_answers_are_records_of_their_own_under_the_primarys_id(repository: Path, tmp_path: Path) -> None:
    root = tmp_path / "capture"
    with GatewayProcess(repository, "--capture-dir", str(root)) as gateway:
        with grpc.insecure_channel(gateway.control_address) as channel:
            rollouts = pb_grpc.RolloutsStub(channel)
            rollouts.SetPolicy(pb.SetPolicyRequest(model="digits", policy=pb.Policy(stable=1)), timeout=TIMEOUT_S)
            rollouts.SetShadow(pb.SetShadowRequest(model="digits", version=2, fraction=1.0), timeout=TIMEOUT_S)
        sender = Sender(gateway.address, seed=5)
        sender.many("shadowed", 200)
        anonymous = sender.stub.ModelInfer(request_of("", np.ones((1, 64), np.float32)), timeout=TIMEOUT_S)
        assert anonymous.id == ""  # the caller's answer keeps its (absent) id; only records get one
        sender.close()
        time.sleep(0.5)  # the shadow lane answers after the callers
    rows = open_dataset(root).to_table().to_pylist()
    primaries = {str(row["request_id"]): row for row in rows if row["arm"] == "stable"}
    shadows = {str(row["request_id"]): row for row in rows if row["arm"] == "shadow"}
    assert set(sender.told) <= set(primaries)
    assert set(shadows) <= set(primaries) and len(shadows) >= 190  # a full lane may drop a few copies
    assigned = set(primaries) - set(sender.told)
    assert len(assigned) == 1 and len(assigned.pop()) == 32  # a uuid4 hex, shared with its shadow record
    for request_id, shadow in shadows.items():
        assert str(shadow["version"]) == "2" and str(primaries[request_id]["version"]) == "1"
        assert pixels_of(shadow).tobytes() == pixels_of(primaries[request_id]).tobytes()
        assert shadow["status"] == "OK" and shadow["output.label"] is not None


def test_a_tiny_budget_never_stops_the_gateway_serving(repository: Path, tmp_path: Path) -> None:
    root = tmp_path / "capture"
    flags = ["--capture-dir", str(root), "--capture-max-bytes", "4000", "--capture-flush-ms", "20"]
    with GatewayProcess(repository, *flags) as gateway:
        sender = Sender(gateway.address)
        sender.many("budget", 300)
        assert sender.failures == 0 and len(sender.told) == 300
        sender.close()
        gateway.wait_for_log("disk budget of 4000 bytes has no room")
        # Once the full segment is compacted (5 s at most) and its file deleted, records fit again.
        sender = Sender(gateway.address)
        deadline = time.monotonic() + 20
        while "room within the disk budget again" not in gateway.log() and time.monotonic() < deadline:
            sender.many(f"later-{time.monotonic()}", 16)
            time.sleep(0.2)
        assert sender.failures == 0
        sender.close()
        gateway.wait_for_log("room within the disk budget again", timeout_s=1)
    totals = capture_report(root)
    assert totals["dropped"] > 0 and totals["counters"]["written"] > 0 and totals["deleted_files"] > 0
    assert sum(path.stat().st_size for path in root.rglob("*.parquet")) <= 4000


def test_an_unwritable_directory_is_counted_and_capture_resumes(repository: Path, tmp_path: Path) -> None:
    root = tmp_path / "capture"
    with GatewayProcess(repository, "--capture-dir", str(root), "--capture-flush-ms", "20") as gateway:
        sender = Sender(gateway.address)
        sender.many("before", 50)
        wal = root / "_wal"
        deadline = time.monotonic() + 10
        while list(wal.glob("*.log")) and time.monotonic() < deadline:  # compacted once closed (5 s at most)
            time.sleep(0.1)
        # A directory replaced by a file: writes fail even for root, who ignores permissions.
        for path in wal.iterdir():
            path.unlink()
        wal.rmdir()
        wal.write_text("in the way")
        sender.many("during", 50)
        gateway.wait_for_log("cannot write records")
        assert sender.failures == 0
        wal.unlink()
        sender.many("after", 50)
        sender.close()
    records = captured(root)
    assert {f"after-{index}" for index in range(50)} <= set(records)
    assert capture_report(root)["failed"] > 0


def capture_report(root: Path, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "capture", "digits", "--capture-dir", str(root), "--json", *extra],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    report: dict[str, Any] = json.loads(done.stdout)
    return report

