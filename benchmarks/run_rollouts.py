"""What routing policies cost, and how fast a rollback takes effect; prints one JSON document.

Part 1, policy overhead: two gateways on one repository (digits version 1; version 3, a copy of
version 1, so every arm costs the same; echo versions 4, which sleeps 10 ms a batch, and 5, which
always fails). Gateway A never gets a policy; gateway B is switched between stable 1 alone, a 10%
canary on 3, a 100% shadow on 3, and 100% shadows on both 4 and 5. Cells run in interleaved rounds, and each
policy cell is reported as a ratio to the no-policy cell of the same round.

Part 2, issue 3's shadow goal: gateway B alone, switched between stable 1 alone and the two
misbehaving shadows in adjacent pairs of cells, the order alternating from pair to pair; the
median over pairs of the caller's p99 with shadows / without, with a bootstrap 95% interval.

Part 3, rollback latency: a gateway with ``--processes 2``. Eight probe clients, each on its own
connection (so both processes are probed), send requests back to back. Fifty times: put a 100%
canary on version 3, then call Rollback and measure, for every probe, the time from the start of
the call to the first answer from stable version 1 to a request sent after the call started; the
slowest probe is that rollback's time to "stable on every process".

    python benchmarks/run_rollouts.py            # about 5 minutes
    python benchmarks/run_rollouts.py --quick    # about 1 minute
    python benchmarks/run_rollouts.py --pin      # gateways on CPU 0, load generator on CPU 1
    python benchmarks/run_rollouts.py --pin --rounds 7   # medians over more rounds
    python benchmarks/run_rollouts.py --pin --parts goal # the shadow goal alone, about 3 minutes
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # for gateway.wire.turnout (our control-plane stubs)

from process_usage import per_request, sample_measured_window  # noqa: E402

from gateway.wire.turnout.v1 import rollouts_pb2, rollouts_pb2_grpc  # noqa: E402

_READY = re.compile(r"turnout: serving .* on (?P<host>[^\s]+):(?P<port>\d+)$")
_CONTROL = re.compile(r"turnout: control plane on (?P<address>[^\s]+:\d+)$")
PROBES = 8
WARMUP_S = 0.5
PARTS = ("overhead", "goal", "rollback")
STABLE_ONLY = rollouts_pb2.Policy(stable=1)
MISBEHAVING_SHADOWS = rollouts_pb2.Policy(
    stable=1, shadows=[rollouts_pb2.Shadow(version=4, fraction=1.0), rollouts_pb2.Shadow(version=5, fraction=1.0)]
)
SCENARIOS = ("no_policy", "stable_only", "canary_10", "shadow_100", "slow_and_failing_shadows")


class Gateway:
    """A gateway process on a free port; ``tree`` is the checkout whose code it runs (this one by default)."""

    def __init__(
        self,
        repository: Path,
        cpu: str | None,
        *flags: str,
        tree: Path = REPO_ROOT,
        env: dict[str, str] | None = None,
        client_flags: Sequence[str] = (),
    ) -> None:
        """``env``: the gateway's environment, when not this process's. ``client_flags``: what the
        load generator needs to talk to it (``--tls-ca-file CA`` for a TLS gateway)."""
        self.client_flags = list(client_flags)
        self.state = tempfile.mkdtemp(prefix="turnout-bench-state-")
        command = [
            sys.executable, "-m", "gateway", "serve", "--repository", str(repository), "--host", "127.0.0.1",
            "--port", "0", "--poll-interval-s", "0", "--log-level", "WARNING", "--state-dir", self.state, *flags,
        ]
        if cpu is not None:
            command = ["taskset", "-c", cpu, *command]
        # `python -m gateway` imports the package from its working directory, so `tree` decides the code.
        # A session of its own, as a service would have (run_serving.Server says why).
        # No metrics port unless a flag asks (the default, 8002, is one port for every gateway on the
        # host); trees from before the metrics port ignore the variable.
        # A free control port too (trees from before the control listener ignore it, and serve
        # Rollouts on the inference port).
        quiet = {"TURNOUT_METRICS_PORT": "0", "TURNOUT_CONTROL_ADDRESS": "127.0.0.1:0"}
        env = {**quiet, **(os.environ if env is None else env)}
        self.process = subprocess.Popen(
            command, cwd=tree, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if match := _READY.search(line.strip()):
                self.address = f"127.0.0.1:{match['port']}"
                break
        else:
            raise RuntimeError("gateway exited before serving")
        self.control_address = self.address
        if (tree / "gateway" / "edge" / "control_server.py").exists():  # it prints its control line next
            control = _CONTROL.search(self.process.stdout.readline().strip())
            if control is None:
                raise RuntimeError("gateway did not say where its control plane listens")
            self.control_address = control["address"]
        self.channel = grpc.insecure_channel(self.control_address)
        self.control = rollouts_pb2_grpc.RolloutsStub(self.channel)

    def set_policy(self, policy: rollouts_pb2.Policy) -> None:
        self.control.SetPolicy(rollouts_pb2.SetPolicyRequest(model="digits", policy=policy, reason="benchmark"))

    def stop(self) -> None:
        self.channel.close()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)
        shutil.rmtree(self.state, ignore_errors=True)


def build_repository(root: Path, misbehaving_shadows: bool = True) -> Path:
    source = REPO_ROOT / "examples" / "models" / "digits"
    target = root / "digits"
    target.mkdir(parents=True)
    shutil.copytree(source / "1", target / "1")
    shutil.copytree(source / "1", target / "3")  # same model, same cost: every arm costs the same
    # Misbehaving shadows: 4 sleeps 10 ms a batch (about 10x the primary's latency), 5 always fails.
    echo = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]}
    extras = ((4, {"delay_ms": 10}), (5, {"fail": "this shadow always fails"})) if misbehaving_shadows else ()
    for version, extra in extras:
        (target / str(version)).mkdir()
        (target / str(version) / "model.echo.json").write_text(json.dumps(echo | extra))
    # No declared outputs: the echo versions answer with their input, unlike the digits versions.
    (target / "model.yaml").write_text(
        "max_batch_size: 64\nversion_policy: {all: {}}\n"
        "dynamic_batching: {max_queue_delay_microseconds: 0, max_queue_size: 1024}\n"
    )
    return root


def load(gateway: Gateway, concurrency: int, duration_s: float, cpu: str | None) -> dict[str, Any]:
    """One load generator run against ``gateway``, with the gateway's CPU per request added."""
    server_pid = gateway.process.pid
    command = [
        sys.executable, str(REPO_ROOT / "benchmarks" / "loadgen.py"), "--target", gateway.address, "--batch", "1",
        "--concurrency", str(concurrency), "--duration-s", str(duration_s), "--warmup-s", str(WARMUP_S),
        *gateway.client_flags,
    ]
    if cpu is not None:
        command = ["taskset", "-c", cpu, *command]
    client = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first, last = sample_measured_window(server_pid, WARMUP_S, duration_s)
    out, err = client.communicate(timeout=duration_s + WARMUP_S + 60)
    if client.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({client.returncode}):\n{err[-3000:]}")
    measured: dict[str, Any] = json.loads(out)
    measured.update(per_request(first, last, measured["throughput_rps"]))
    return measured


def policy_overhead(repository: Path, plain_repository: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``plain_repository`` holds only versions 1 and 3, so with no policy a digits model serves."""
    server_cpu, client_cpu = ("0", "1") if args.pin else (None, None)
    plain = Gateway(plain_repository, server_cpu)
    policed = Gateway(repository, server_cpu)
    canary = rollouts_pb2.Policy(stable=1, canary=rollouts_pb2.Canary(version=3, weight_bp=1_000))
    shadow = rollouts_pb2.Policy(stable=1, shadows=[rollouts_pb2.Shadow(version=3, fraction=1.0)])
    cells: list[dict[str, Any]] = []
    try:
        for concurrency in (8, 64):
            for round_index in range(args.rounds):
                row: dict[str, Any] = {"concurrency": concurrency, "round": round_index}
                row["no_policy"] = load(plain, concurrency, args.duration_s, client_cpu)
                policed.set_policy(STABLE_ONLY)
                row["stable_only"] = load(policed, concurrency, args.duration_s, client_cpu)
                policed.set_policy(canary)
                row["canary_10"] = load(policed, concurrency, args.duration_s, client_cpu)
                policed.set_policy(shadow)
                row["shadow_100"] = load(policed, concurrency, args.duration_s, client_cpu)
                policed.set_policy(MISBEHAVING_SHADOWS)
                row["slow_and_failing_shadows"] = load(policed, concurrency, args.duration_s, client_cpu)
                cells.append(row)
                print(one_line(row), file=sys.stderr, flush=True)
        shadow_figures = policed.control.GetShadowComparison(rollouts_pb2.ShadowComparisonRequest(model="digits"))
    finally:
        plain.stop()
        policed.stop()
    return {"cells": cells, "ratios": overhead_ratios(cells), "shadow_figures": text_format(shadow_figures)}


def shadow_goal(repository: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Issue 3's goal: with a shadow ten times slower than the primary and one that always fails,
    the caller's p99 stays within 10% of the same gateway and policy without shadows.

    Measured in adjacent pairs of cells (stable alone, then with the shadows, or the other way
    round: the order alternates), so that the host's speed, which drifts over seconds here, and any
    after-effect of a policy switch weigh on both sides alike. Reported: the median over pairs of
    (with shadows / without) and a bootstrap 95% interval of that median.
    """
    server_cpu, client_cpu = ("0", "1") if args.pin else (None, None)
    gateway = Gateway(repository, server_cpu)
    goal: dict[str, Any] = {"pairs": args.goal_pairs, "duration_s": args.duration_s}
    try:
        for concurrency in (8, 64):
            pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
            for index in range(args.goal_pairs):
                order = [("stable", STABLE_ONLY), ("shadows", MISBEHAVING_SHADOWS)]
                measured = {}
                for name, policy in order if index % 2 == 0 else reversed(order):
                    gateway.set_policy(policy)
                    measured[name] = load(gateway, concurrency, args.duration_s, client_cpu)
                pairs.append((measured["shadows"], measured["stable"]))
                print(f"goal c={concurrency} pair {index}: p99 with shadows / without "
                      f"{measured['shadows']['latency_ms']['p99'] / measured['stable']['latency_ms']['p99']:.2f}",
                      file=sys.stderr, flush=True)
            p99 = median_ratio(pairs, "p99")
            goal[f"slow_and_failing_shadows@{concurrency}_p99_vs_no_shadow"] = {
                "ratio": rounded(p99),
                "ratio_95_interval": [rounded(bound) for bound in median_interval(ratios_of(pairs, "p99"))],
                "met": p99 is not None and p99 <= 1.10,
                "throughput_ratio": rounded(median_ratio(pairs, "throughput_rps")),
                "server_cpu_per_request_ratio": rounded(median_ratio(pairs, "server_cpu_us_per_request")),
                "cells": [{"with_shadows": ours, "without": theirs} for ours, theirs in pairs],
            }
    finally:
        gateway.stop()
    return goal


def text_format(message: Any) -> list[str]:
    return [line for line in str(message).splitlines() if line.strip()]


def one_line(row: dict[str, Any]) -> str:
    parts = [f"c={row['concurrency']} round {row['round']}:"]
    for name in SCENARIOS:
        cell = row[name]
        cpu = cell.get("server_cpu_us_per_request")
        cpu_text = f" {cpu:.0f}us" if cpu is not None else ""
        parts.append(f"{name} {cell['throughput_rps']:.0f}/s p99 {cell['latency_ms']['p99']:.2f}ms{cpu_text}")
    return "  ".join(parts)


def ratios_of(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]], measure: str) -> list[float]:
    """(a / b) for each (a, b) pair of cells for ``measure`` ("p99", or a key of the cell such as
    "throughput_rps"), leaving out pairs without it (CPU usage is missing where nothing was served)."""
    return [ours / theirs for ours, theirs in (_values(pair, measure) for pair in pairs) if ours and theirs]


def median_ratio(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]], measure: str) -> float | None:
    """Median of :func:`ratios_of`; None when no pair has ``measure``."""
    ratios = ratios_of(pairs, measure)
    return statistics.median(ratios) if ratios else None


def median_interval(ratios: Sequence[float], resamples: int = 10_000) -> tuple[float, float] | tuple[None, None]:
    """A bootstrap 95% interval of the median of ``ratios`` (percentile method, fixed seed)."""
    if len(ratios) < 2:
        return None, None
    drawn = np.random.default_rng(0).choice(np.asarray(ratios), size=(resamples, len(ratios)))
    medians = np.median(drawn, axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def _values(pair: tuple[dict[str, Any], dict[str, Any]], measure: str) -> tuple[float | None, float | None]:
    if measure == "p99":
        return pair[0]["latency_ms"]["p99"], pair[1]["latency_ms"]["p99"]
    return pair[0].get(measure), pair[1].get(measure)


def rounded(value: float | None) -> float | None:
    """A ratio as reported: three decimals."""
    return None if value is None else round(value, 3)


def overhead_ratios(cells: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Median over rounds of (policy cell / no-policy cell of the same round), per concurrency."""
    ratios: dict[str, dict[str, float | None]] = {}
    for concurrency in sorted({row["concurrency"] for row in cells}):
        rows = [row for row in cells if row["concurrency"] == concurrency]
        for name in SCENARIOS[1:]:
            pairs = [(r[name], r["no_policy"]) for r in rows]
            ratios[f"{name}@{concurrency}"] = {
                "throughput_ratio": rounded(median_ratio(pairs, "throughput_rps")),
                "p99_ratio": rounded(median_ratio(pairs, "p99")),
                "server_cpu_per_request_ratio": rounded(median_ratio(pairs, "server_cpu_us_per_request")),
            }
    return ratios


class Probe(threading.Thread):
    """Sends requests back to back on its own connection; keeps (started, answered, version)."""

    def __init__(self, address: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.address, self.stop = address, stop
        self.answers: list[tuple[float, float, str]] = []
        self.errors = 0

    def run(self) -> None:
        pixels = np.zeros((1, 64), np.float32)
        tensor = service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 64])
        request = service_pb2.ModelInferRequest(
            model_name="digits", inputs=[tensor], raw_input_contents=[pixels.tobytes()]
        )
        options = [("grpc.use_local_subchannel_pool", 1)]  # its own connection, so its own process
        with grpc.insecure_channel(self.address, options=options) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    version = stub.ModelInfer(request, timeout=10).model_version
                except grpc.RpcError:
                    self.errors += 1
                    continue
                self.answers.append((started, time.perf_counter(), version))


def first_stable_after(answers: list[tuple[float, float, str]], since: float) -> float | None:
    for started, answered, version in answers:
        if started >= since and version == "1":
            return answered - since
    return None


def rollback_latency(repository: Path, args: argparse.Namespace) -> dict[str, Any]:
    gateway = Gateway(repository, None, "--processes", "2")
    stop = threading.Event()
    probes = [Probe(gateway.address, stop) for _ in range(PROBES)]
    canary = rollouts_pb2.SetCanaryRequest(model="digits", version=3, weight_percent=100)
    every_process_ms: list[float] = []
    call_ms: list[float] = []
    # This process's own garbage collector must not be timed as Turnout's: with the earlier results
    # and the probes' answers alive, a full collection here paused it for 250-550 ms.
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        gateway.set_policy(rollouts_pb2.Policy(stable=1))
        for probe in probes:
            probe.start()
        for _ in range(args.rollbacks):
            gateway.control.SetCanary(canary)
            time.sleep(0.1)
            since = time.perf_counter()
            gateway.control.Rollback(rollouts_pb2.RollbackRequest(model="digits", reason="benchmark"))
            call_ms.append((time.perf_counter() - since) * 1000)
            time.sleep(0.2)
            firsts = [first_stable_after(probe.answers, since) for probe in probes]
            if None in firsts:
                raise RuntimeError("a probe saw no stable answer within 200 ms of a rollback")
            every_process_ms.append(max(f for f in firsts if f is not None) * 1000)
    finally:
        gc.enable()
        gc.unfreeze()
        stop.set()
        for probe in probes:
            probe.join()
        gateway.stop()
    return {
        "rollbacks": len(every_process_ms),
        "probe_connections": PROBES,
        "probe_errors": sum(probe.errors for probe in probes),
        "stable_on_every_process_ms": percentiles(every_process_ms),
        "rollback_call_ms": percentiles(call_ms),
        "rollback_call_ms_each": [round(ms, 2) for ms in call_ms],
    }


def percentiles(values: Sequence[float]) -> dict[str, float]:
    ordered = np.sort(np.asarray(values))
    return {f"p{q}": round(float(np.percentile(ordered, q)), 2) for q in (50, 90, 99)} | {
        "max": round(float(ordered[-1]), 2)
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter cells, fewer rounds and rollbacks")
    parser.add_argument("--pin", action="store_true", help="gateways on CPU 0, load generator on CPU 1")
    parser.add_argument("--rounds", type=int, help="interleaved rounds of policy cells (default 3; --quick 1)")
    parser.add_argument("--duration-s", type=float, help="measured seconds per policy cell (default 3; --quick 1.5)")
    parser.add_argument(
        "--goal-pairs", type=int, help="adjacent pairs of cells for the shadow goal (default 12; --quick 4)"
    )
    parser.add_argument(
        "--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts to run (default: all three)"
    )
    args = parser.parse_args(argv)
    duration_s, rounds, goal_pairs, args.rollbacks = (1.5, 1, 4, 20) if args.quick else (3.0, 3, 12, 50)
    args.goal_pairs = args.goal_pairs or goal_pairs
    # Each round is compared within itself, so more rounds narrow the medians on a noisy machine.
    args.rounds = args.rounds or rounds
    args.duration_s = args.duration_s or duration_s
    with tempfile.TemporaryDirectory(prefix="turnout-bench-repo-") as root:
        repository = build_repository(Path(root) / "all")
        plain = build_repository(Path(root) / "plain", misbehaving_shadows=False)
        document: dict[str, Any] = {"command": " ".join(["python benchmarks/run_rollouts.py", *(argv or sys.argv[1:])])}
        if "overhead" in args.parts:
            document["policy_overhead"] = policy_overhead(repository, plain, args)
        if "goal" in args.parts:
            document["shadow_goal"] = shadow_goal(repository, args)
        if "rollback" in args.parts:
            document["rollback"] = rollback_latency(repository, args)
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
