"""Live: how long a progressive rollout of a bad canary runs before the gateway rolls it back.

One gateway process serves ``digits`` (version 1, the stable) and two bad candidates of the same
input: version 4 sleeps ``--slow-ms`` per batch (a slow canary), version 5 fails every request (a
broken one). An open-loop client sends ``--rates`` requests per second (paced, not waiting for
answers) while ``turnout rollout`` starts at the defaults (steps 5,25,50,100, 100 requests per arm
before any decision, alpha 0.05); the clock runs from the StartRollout call's return (the canary is
live in every process then, and its first request follows within a few ms) to the rollback's
audit timestamp. Each cell also reports the requests the analysis had seen per arm, the offered
and the answered rate, and the failed requests of the stable version (which must be none).

    python benchmarks/rollout_detection.py                      # 200 and 2,000 req/s, 3 rounds, ~3 min
    python benchmarks/rollout_detection.py --rates 200 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from run_rollouts import Gateway, build_repository  # noqa: E402

from gateway.wire.turnout.v1 import rollouts_pb2 as pb  # noqa: E402
from gateway.wire.turnout.v1 import rollouts_pb2_grpc as pb_grpc  # noqa: E402

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
SLOW, BROKEN = 4, 5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def repository(root: Path, slow_ms: float) -> Path:
    build_repository(root, misbehaving_shadows=False)
    echo = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]}
    for version, extra in ((SLOW, {"delay_ms": slow_ms}), (BROKEN, {"fail": "this canary always fails"})):
        (root / "digits" / str(version)).mkdir()
        (root / "digits" / str(version) / "model.echo.json").write_text(json.dumps(echo | extra))
    return root


def request_bytes() -> bytes:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 64])
    row = np.full((1, 64), 4.0, np.float32)
    request = service_pb2.ModelInferRequest(model_name="digits", inputs=[tensor], raw_input_contents=[row.tobytes()])
    serialized: bytes = request.SerializeToString()
    return serialized


async def paced_load(address: str, rate: float, stop: asyncio.Event, counts: dict[str, int]) -> None:
    """Send ``rate`` requests a second until ``stop``, never waiting for an answer to send the next."""
    payload = request_bytes()
    channels = [grpc.aio.insecure_channel(address) for _ in range(4)]
    calls = [channel.unary_unary(INFER_METHOD) for channel in channels]
    pending: set[asyncio.Task[None]] = set()

    async def one(index: int) -> None:
        try:
            await calls[index % len(calls)](payload, timeout=30)
            counts["ok"] += 1
        except grpc.aio.AioRpcError:
            counts["failed"] += 1

    loop = asyncio.get_running_loop()
    started = next_at = loop.time()
    sent = 0
    while not stop.is_set():
        while next_at <= loop.time():  # behind: catch up at once, so the offered rate holds
            task = asyncio.create_task(one(sent))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
            next_at = started + sent / rate
        await asyncio.sleep(max(0.0, next_at - loop.time()))
    counts["sent"] = sent
    await asyncio.gather(*pending)
    for channel in channels:
        await channel.close()


def one_rollout(gateway: Gateway, version: int, rate: float, timeout_s: float) -> dict[str, Any]:
    control = pb_grpc.RolloutsStub(grpc.insecure_channel(gateway.control_address))
    control.SetPolicy(pb.SetPolicyRequest(model="digits", policy=pb.Policy(stable=1), reason="benchmark"))
    counts = {"ok": 0, "failed": 0, "sent": 0}
    result: dict[str, Any] = {}

    async def run() -> None:
        stop = asyncio.Event()
        load = asyncio.create_task(paced_load(gateway.address, rate, stop, counts))
        await asyncio.sleep(2.0)  # the load settles first
        before = dict(counts)
        started_wall = time.time()
        state = await asyncio.to_thread(
            control.StartRollout, pb.StartRolloutRequest(model="digits", version=version, reason="benchmark")
        )
        started = time.time()
        deadline = started + timeout_s
        while time.time() < deadline:
            state = await asyncio.to_thread(control.GetRollout, pb.GetRolloutRequest(model="digits"))
            if state.phase != "running":
                break
            await asyncio.sleep(0.05)
        answered = counts["ok"] + counts["failed"] - before["ok"] - before["failed"]
        stop.set()
        await load
        history = control.History(pb.HistoryRequest(model="digits", limit=5)).changes
        rollback = next((c for c in history if c.action == "rollback"), None)
        evidence = json.loads(state.evidence_json) if state.evidence_json else {}
        checks = {check["check"]: check for check in evidence.get("checks", [])}
        error_counts = checks.get("error_rate", {})
        result.update(
            phase=state.phase,
            seconds_to_rollback=(rollback.at_unix_ms / 1000 - started) if rollback is not None else None,
            start_call_s=started - started_wall,
            answered_rate=answered / max(1e-9, time.time() - started_wall),
            canary_requests=error_counts.get("canary_requests"),
            stable_requests=error_counts.get("stable_requests"),
            checks_worse=[name for name, check in checks.items() if check.get("worse")],
            reason=state.message,
        )

    asyncio.run(run())
    result["offered_rate"] = rate
    result["failed_requests"] = counts["failed"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="200,2000", help="requests per second, comma separated (default: 200,2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rollouts per cell (default: 3)")
    parser.add_argument("--slow-ms", type=float, default=5.0, help="the slow canary's sleep per batch (default: 5)")
    parser.add_argument("--timeout-s", type=float, default=90.0, help="longest wait for a rollback (default: 90)")
    args = parser.parse_args()
    cells = []
    with tempfile.TemporaryDirectory(prefix="turnout-rollout-bench-") as root:
        repo = repository(Path(root), args.slow_ms)
        for rate in (float(text) for text in args.rates.split(",")):
            for version, kind in ((SLOW, f"slow canary ({args.slow_ms:g} ms a batch)"), (BROKEN, "failing canary")):
                rounds = []
                for _ in range(args.rounds):
                    gateway = Gateway(repo, None, "--metrics-port", str(free_port()))
                    try:
                        rounds.append(one_rollout(gateway, version, rate, args.timeout_s))
                    finally:
                        gateway.stop()
                seconds = [r["seconds_to_rollback"] for r in rounds if r["seconds_to_rollback"] is not None]
                cells.append({
                    "rate": rate, "canary": kind, "rounds": rounds,
                    "median_s_to_rollback": statistics.median(seconds) if seconds else None,
                    "rolled_back": f"{len(seconds)}/{len(rounds)}",
                })  # fmt: skip
    print(json.dumps({"at": time.strftime("%Y-%m-%d %H:%M"), "cells": cells}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
