"""Three "hosts" capturing into one directory, as gateways on several machines share a network filesystem.

Three real gateways, each with its own ``--capture-host`` and its own state, write into one
``--capture-dir`` at the same time, into the same partitions. One of them is killed and started
again under its name. Read back as ``turnout drift`` reads it (pyarrow, Hive partitions), the
dataset holds every answered request exactly once, bit for bit as sent, with the host that served
it; no file name was written by two writers, and nothing is left half written.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pyarrow.dataset as pads
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.capture.naming import writer_of_counters, writer_of_segment
from gateway.capture.parquet import open_dataset, parquet_files
from tests.support.gateway_process import REPO_ROOT, GatewayProcess
from tests.support.model_repository import copy_digits

HOSTS = ("host-a", "host-b", "host-c")  # dashes, as real host names have: names are parsed from the right
REQUESTS = 150  # per host and run
THREADS = 4  # per host
FEATURES = [f"px_{index}" for index in range(64)]
TIMEOUT_S = 20.0


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    copy_digits(tmp_path / "models")
    return tmp_path / "models"


def start(repository: Path, root: Path, host: str) -> GatewayProcess:
    # sync: an answer means a record on disk, so a killed host owes every answered request.
    # In-process models: three gateways share two cores here, and capture does not care where models run.
    flags = ["--capture-dir", str(root), "--capture-host", host, "--capture-durability", "sync"]
    return GatewayProcess(repository, *flags, "--worker-mode", "inprocess").start()


def pixels_for(request_id: str) -> np.ndarray:
    """Inputs no other request has: the id's digest as 64 pixel values (0 to 16, as the digits')."""
    digest = hashlib.sha512(request_id.encode()).digest()
    return (np.frombuffer(digest, np.uint8) % 17).astype(np.float32).reshape(1, 64)


class Served:
    """Which host answered which request, and what each request sent."""

    def __init__(self) -> None:
        self.by_host: dict[str, str] = {}
        self.sent: dict[str, np.ndarray] = {}
        self.failed: list[str] = []
        self._lock = threading.Lock()

    def send(self, address: str, host: str, prefix: str, count: int) -> None:
        def work(thread: int) -> None:
            with grpc.insecure_channel(address) as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                for index in range(thread, count, THREADS):
                    self.one(stub, host, f"{prefix}/{index}")

        threads = [threading.Thread(target=work, args=(thread,)) for thread in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def one(self, stub: service_pb2_grpc.GRPCInferenceServiceStub, host: str, request_id: str) -> None:
        pixels = pixels_for(request_id)
        tensor = service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 64])
        request = service_pb2.ModelInferRequest(
            model_name="digits", id=request_id, inputs=[tensor], raw_input_contents=[pixels.tobytes()]
        )
        try:
            stub.ModelInfer(request, timeout=TIMEOUT_S)
        except grpc.RpcError:
            with self._lock:
                self.failed.append(request_id)
            return
        with self._lock:
            self.by_host[request_id] = host
            self.sent[request_id] = pixels


def send_at_once(served: Served, gateways: dict[str, GatewayProcess], run: str) -> None:
    """Every host at once, so their files land in the same partitions side by side."""
    threads = [
        threading.Thread(target=served.send, args=(gateway.address, host, f"{host}/{run}", REQUESTS))
        for host, gateway in gateways.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def assert_every_request_once(root: Path, served: Served) -> None:
    """Read as `turnout drift` does (pyarrow's dataset over the Hive partitions): each answered request
    exactly once, as sent, with the host that served it."""
    rows = pads.dataset(str(root), format="parquet", partitioning="hive").to_table().to_pylist()
    counts = collections.Counter(str(row["request_id"]) for row in rows)
    assert set(counts) == set(served.by_host)
    assert [request_id for request_id, count in counts.items() if count != 1] == []
    for row in rows:
        request_id = str(row["request_id"])
        assert row["host"] == served.by_host[request_id] == request_id.split("/")[0]
        assert np.array([[row[name] for name in FEATURES]], np.float32).tobytes() == served.sent[request_id].tobytes()
        assert (row["model"], row["status"]) == ("digits", "OK")
    assert open_dataset(root).count_rows() == len(rows)


def test_three_hosts_share_one_capture_directory_and_every_request_is_there_once(
    repository: Path, tmp_path: Path
) -> None:
    root = tmp_path / "capture"
    served = Served()
    gateways = {host: start(repository, root, host) for host in HOSTS}
    try:
        send_at_once(served, gateways, "first")
        gateways["host-b"].stop(signal.SIGKILL)  # its last segment is left in the log, uncompacted
        left = list((root / "_wal").glob("host-b-*.log"))
        time.sleep(2.5)  # two rounds of the other hosts' compactors (every second): they leave it alone
        assert left and all(path.exists() for path in left)
        gateways["host-b"] = start(repository, root, "host-b")  # recovers it before it is ready
        assert not any(path.exists() for path in left)
        restarted_log = gateways["host-b"].log()
        send_at_once(served, gateways, "second")
    finally:
        for gateway in gateways.values():
            gateway.stop()
    assert served.failed == []
    assert len(served.by_host) == len(HOSTS) * REQUESTS * 2

    assert_every_request_once(root, served)

    # Every file names its writer, no name twice, each holds its own host's rows; host-b wrote in two runs.
    files = parquet_files(root)
    assert len({path.name for path in files}) == len(files)
    writers = [writer_of_segment(path.stem) for path in files]
    assert {writer.host for writer in writers if writer is not None} == set(HOSTS) and None not in writers
    for path, writer in zip(files, writers, strict=True):
        hosts = pads.dataset(str(path), format="parquet").to_table(columns=["host"]).column("host").to_pylist()
        assert writer is not None and set(hosts) == {writer.host}
    assert len({(w.pid, w.run) for w in writers if w is not None and w.host == "host-b"}) == 2

    # Nothing left in the log, nothing half written; host-b's restart found its killed run, once.
    assert list((root / "_wal").iterdir()) == []
    assert [path for path in root.rglob(".*") if path.is_file()] == []
    counters = [writer_of_counters(path.stem) for path in (root / "_stats").glob("*.json")]
    assert sorted(str(writer.host) for writer in counters if writer is not None) == [
        "host-a", "host-b", "host-b", "host-c"
    ]  # fmt: skip
    assert "stopped without a graceful stop" in restarted_log
    summary = subprocess.run(
        [sys.executable, "-m", "gateway", "capture", "digits", "--capture-dir", str(root), "--json"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    report = json.loads(summary.stdout)
    assert report["requests"] == len(served.by_host) and report["unclean_stops"] == 1


def test_what_a_host_that_never_comes_back_left_is_adopted_by_another(repository: Path, tmp_path: Path) -> None:
    root = tmp_path / "capture"
    served = Served()
    gateways = {host: start(repository, root, host) for host in ("host-a", "host-b")}
    try:
        send_at_once(served, gateways, "only")
        gateways["host-b"].stop(signal.SIGKILL)
        left = list((root / "_wal").glob("host-b-*.log"))
        assert left
        # Its counters were last saved 11 minutes ago, as if host-b had been gone that long (the default
        # wait is 10 minutes): host-a's compactor, which looks every second, takes its segments over.
        gone = time.time() - 660
        for path in (root / "_stats").glob("host-b-*.json"):
            os.utime(path, (gone, gone))
        log = gateways["host-a"].wait_for_log("its committed records are compacted here", timeout_s=20)
        assert "of host host-b stopped without a graceful stop" in log
        deadline = time.monotonic() + 10  # told before it compacts them
        while any(path.exists() for path in left) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(path.exists() for path in left)
    finally:
        for gateway in gateways.values():
            gateway.stop()
    assert served.failed == [] and len(served.by_host) == 2 * REQUESTS
    assert_every_request_once(root, served)
    assert list((root / "_wal").iterdir()) == []
