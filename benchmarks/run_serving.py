"""Runs the serving benchmark matrix of docs/benchmarks.md in one go and prints one JSON document.

For each placement (``pinned``: every server process, worker processes included, on CPU 0 and the
load generator on CPU 1; ``unpinned``: no affinity), it starts every target on a free port:

* ``turnout-process``   ``turnout serve`` with models in worker processes (the default)
* ``turnout-inprocess`` ``turnout serve --worker-mode inprocess``
* ``turnout-process+gateway-cpus`` (unpinned only) ``turnout serve --gateway-cpus 0``: the gateway's
  threads on one CPU, its workers and the load generator free
* ``bare-sync``         benchmarks/bare_server.py, ``grpc.server`` with a thread pool
* ``bare-aio``          benchmarks/bare_server.py, ``grpc.aio``
* ``bare-sync+handoff``, ``bare-sync+handoff+trailers`` and ``bare-sync+batching-floor`` (batch 1,
  1 and 64 in flight, unary): the bare server plus the structure a batching gateway has by design,
  then the least tensor work such a gateway does, to split the gap to ``bare-sync`` into structure
  and Turnout's own work

then drives each with benchmarks/loadgen.py, unary ModelInfer and ModelStreamInfer, for the digits
model at batch 1 with 1, 8 and 64 requests in flight and at batch 32 with 8. Targets run back to
back within each workload so that compared cells are measured close together in time (other work on
the machine shifts absolute numbers; the goals are ratios within one run). The compute yardstick
(benchmarks/inprocess_ort.py) runs once per placement. Then it derives the ratios the goals name.
Each cell also records the server's CPU time and context switches per request (its process tree,
from /proc) and, for Turnout, the mean rows per executed batch (from ModelStatistics).

    python benchmarks/run_serving.py               # the full matrix, about 5 s per cell
    python benchmarks/run_serving.py --quick       # about 1 s per cell
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import tritonclient.grpc as grpcclient
from process_usage import per_request, process_tree, sample_measured_window
from tritonclient.utils import InferenceServerException

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO_ROOT / "benchmarks"
WORKLOADS = [(1, 1), (1, 8), (1, 64), (32, 8)]  # (batch, requests in flight)
DECOMPOSITION = ((1, 1), (1, 64))
PLACEMENTS = ("pinned", "unpinned")
SERVER_CPU, CLIENT_CPU = "0", "1"
_STATE_DIR = "{state_dir}"
_READY = re.compile(r"(?:turnout: serving .*|bare: serving) on (?P<host>\S+):(?P<port>\d+)$")

# The goals of issue 2, measured pinned, at batch 1.
GOAL_THROUGHPUT_VS_BARE = 0.80
GOAL_PROCESS_VS_INPROCESS = 0.85
GOAL_P99_VS_BARE = 1.5


@dataclass(frozen=True)
class Target:
    name: str
    command: list[str]
    modes: tuple[str, ...]
    workloads: tuple[tuple[int, int], ...] = tuple(WORKLOADS)
    placements: tuple[str, ...] = PLACEMENTS


def targets(repository: Path, python: str) -> list[Target]:
    turnout = [
        python,
        "-m",
        "gateway",
        "serve",
        "--repository",
        str(repository),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--poll-interval-s",
        "0",
        "--log-level",
        "WARNING",
        "--state-dir",
        _STATE_DIR,
    ]
    bare = [python, str(BENCHMARKS / "bare_server.py"), "--host", "127.0.0.1", "--port", "0"]
    both = ("unary", "stream")
    return [
        Target("turnout-process", turnout, both),
        Target("turnout-inprocess", [*turnout, "--worker-mode", "inprocess"], both),
        # Unpinned, with the gateway's own threads kept on one CPU (workers free): what an operator
        # gets from --gateway-cpus. Pinned it would be the same as turnout-process.
        Target(
            "turnout-process+gateway-cpus", [*turnout, "--gateway-cpus", SERVER_CPU], both, placements=("unpinned",)
        ),
        Target("bare-sync", [*bare, "--flavor", "sync"], both),
        Target("bare-aio", [*bare, "--flavor", "aio"], both),
        # The bare server plus the structure a batching gateway has by design, without its work:
        # how much of the gap to bare-sync is structure (see bare_server.py).
        Target("bare-sync+handoff", [*bare, "--flavor", "sync", "--handoff"], ("unary",), DECOMPOSITION),
        Target(
            "bare-sync+handoff+trailers",
            [*bare, "--flavor", "sync", "--handoff", "--trailers"],
            ("unary",),
            DECOMPOSITION,
        ),
        # ... and the least tensor work a batching V2 server does: the floor under any such gateway.
        Target(
            "bare-sync+batching-floor",
            [*bare, "--flavor", "sync", "--handoff", "--trailers", "--tensors"],
            ("unary",),
            DECOMPOSITION,
        ),
    ]


def pinned(command: list[str], cpu: str | None) -> list[str]:
    return ["taskset", "-c", cpu, *command] if cpu is not None else command


class Server:
    """One server subprocess; its address is read from the line it prints once listening."""

    def __init__(self, target: Target, cpu: str | None) -> None:
        self.target = target
        self.log: TextIO = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in stop())
        # Each gateway gets its own routing state, so runs never share (or leave behind) policies.
        self.state = tempfile.TemporaryDirectory(prefix="turnout-bench-state-")
        command = [part.replace(_STATE_DIR, self.state.name) for part in target.command]
        # A session of its own, as a service manager or container runtime starts a server. Under
        # CFS autogroups a server sharing this script's session would share a scheduling group
        # with the load generator, and that changes how the kernel orders its threads.
        self.process = subprocess.Popen(
            pinned(command, cpu),
            cwd=REPO_ROOT,
            # No metrics port, a free control port: 8002 and 8003 are one per host.
            env={**os.environ, "TURNOUT_METRICS_PORT": "0", "TURNOUT_CONTROL_ADDRESS": "127.0.0.1:0"},
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,
        )
        self.address = self._wait_until_listening()

    def _wait_until_listening(self) -> str:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            match = _READY.search(line.strip())
            if match:
                return f"{match['host']}:{match['port']}"
        self.process.wait()
        raise RuntimeError(f"{self.target.name} exited before listening:\n{self.log_text()}")

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def cpus(self) -> dict[str, str]:
        """The CPU affinity of the server and every process under it (worker processes)."""
        return {str(pid): allowed_cpus(pid) for pid in process_tree(self.process.pid)}

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if code != 0:
            print(f"warning: {self.target.name} exited with status {code}; its log ends:", file=sys.stderr)
            print(self.log_text()[-4000:], file=sys.stderr)
        self.log.close()
        self.state.cleanup()
        return code


def allowed_cpus(pid: int) -> str:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    return "?"


@contextlib.contextmanager
def running(all_targets: Sequence[Target], cpu: str | None) -> Iterator[dict[str, Server]]:
    servers: dict[str, Server] = {}
    try:
        for target in all_targets:
            servers[target.name] = Server(target, cpu)
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def run_json(command: list[str], timeout_s: float) -> dict[str, Any]:
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def executed_rows(address: str, model: str = "digits") -> tuple[int, int] | None:
    """(rows inferred, batches executed) so far over every version, from Triton's statistics RPC."""
    client = grpcclient.InferenceServerClient(address)
    try:
        stats = client.get_inference_statistics(model, as_json=True)
    except InferenceServerException:
        return None  # the bare servers do not offer statistics
    finally:
        client.close()
    versions = stats.get("model_stats", [])
    return (
        sum(int(v.get("inference_count", 0)) for v in versions),
        sum(int(v.get("execution_count", 0)) for v in versions),
    )


def run_cell(
    args: argparse.Namespace, server: Server, batch: int, concurrency: int, mode: str, cpu: str | None
) -> dict[str, Any]:
    command = [
        args.python,
        str(BENCHMARKS / "loadgen.py"),
        "--target",
        server.address,
        "--batch",
        str(batch),
        "--concurrency",
        str(concurrency),
        "--mode",
        mode,
        "--duration-s",
        str(args.duration_s),
        "--warmup-s",
        str(args.warmup_s),
        "--processes",
        str(args.client_processes),
    ]
    load_before = os.getloadavg()[0]
    rows_before = executed_rows(server.address)
    client = subprocess.Popen(
        pinned(command, cpu), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    first, last = sample_measured_window(server.process.pid, args.warmup_s, args.duration_s)
    try:
        out, err = client.communicate(timeout=args.duration_s + args.warmup_s + 60)
    except subprocess.TimeoutExpired:
        client.kill()
        client.communicate()
        raise
    if client.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({client.returncode}):\n{err[-3000:]}")
    result: dict[str, Any] = json.loads(out)
    rows_after = executed_rows(server.address)
    result["loadavg_1m_before"] = round(load_before, 2)
    result.update(per_request(first, last, result["throughput_rps"]))
    if rows_before and rows_after and rows_after[1] > rows_before[1]:
        # Warm-up included: the mean rows per batch the server's dynamic batcher formed.
        rows, batches = rows_after[0] - rows_before[0], rows_after[1] - rows_before[1]
        result["server_rows_per_batch"] = round(rows / batches, 2)
    return result


def compute_yardstick(args: argparse.Namespace, cpu: str | None) -> dict[str, Any]:
    command = [args.python, str(BENCHMARKS / "inprocess_ort.py"), "--duration-s", str(min(args.duration_s, 2.0))]
    return run_json(pinned(command, cpu), timeout_s=120)


def run_placement(args: argparse.Namespace, placement: str) -> dict[str, Any]:
    server_cpu = SERVER_CPU if placement == "pinned" else None
    client_cpu = CLIENT_CPU if placement == "pinned" else None
    chosen = [t for t in targets(args.repository, args.python) if t.name in args.targets and placement in t.placements]
    cells: list[dict[str, Any]] = []
    with running(chosen, server_cpu) as servers:
        affinity = {name: server.cpus() for name, server in servers.items()}
        for batch, concurrency in WORKLOADS:
            for target in chosen:
                for mode in target.modes:
                    if mode not in args.modes or (batch, concurrency) not in target.workloads:
                        continue
                    server = servers[target.name]
                    try:
                        result = run_cell(args, server, batch, concurrency, mode, client_cpu)
                    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as error:
                        result = failed_cell(server, batch, concurrency, mode, error)
                    cell = {**result, "address": server.address, "placement": placement, "target": target.name}
                    cells.append(cell)
                    print(one_line(cell), file=sys.stderr, flush=True)
    return {
        "placement": placement,
        "server_affinity": affinity,
        "compute_yardstick": compute_yardstick(args, server_cpu),
        "cells": cells,
    }


def failed_cell(server: Server, batch: int, concurrency: int, mode: str, error: Exception) -> dict[str, Any]:
    """A cell whose load generator failed or hung: recorded with the server's log, and the run goes on."""
    return {
        "mode": mode,
        "batch": batch,
        "concurrency": concurrency,
        "failed": str(error)[-2000:],
        "server_alive": server.process.poll() is None,
        "server_log_tail": server.log_text()[-4000:],
        "requests": 0,
        "error_count": None,
        "throughput_rps": 0.0,
        "latency_ms": {"p50": math.nan, "p90": math.nan, "p99": math.nan},
        "loadavg_1m_before": round(os.getloadavg()[0], 2),
    }


def one_line(cell: dict[str, Any]) -> str:
    where = f"{cell['placement']:8} {cell['target']:26} {cell['mode']:6} b{cell['batch']:<2} c{cell['concurrency']:<2} "
    if "failed" in cell:
        return where + "FAILED: " + str(cell["failed"]).splitlines()[-1]
    latency = cell["latency_ms"]
    return (
        where + f"{cell['throughput_rps']:8.0f} req/s  p50 {latency['p50']:7.3f}  p99 {latency['p99']:7.3f} ms  "
        f"errors {cell['error_count']}  rows/batch {cell.get('server_rows_per_batch', '-')}  "
        f"cpu/req {cell.get('server_cpu_us_per_request', '-')} us  "
        f"switches/req {cell.get('server_switches_per_request', '-')}  "
        f"load {cell['loadavg_1m_before']}"
    )


def find(cells: Sequence[dict[str, Any]], target: str, mode: str, batch: int, concurrency: int) -> dict[str, Any]:
    for cell in cells:
        if (cell["target"], cell["mode"], cell["batch"], cell["concurrency"]) == (target, mode, batch, concurrency):
            return cell
    return {}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)


def throughput(cell: dict[str, Any]) -> float | None:
    return None if "failed" in cell else cell.get("throughput_rps")


def p99(cell: dict[str, Any]) -> float | None:
    return None if "failed" in cell else cell.get("latency_ms", {}).get("p99")


def ratios(cells: Sequence[dict[str, Any]], mode: str) -> dict[str, float | None]:
    """The goals' ratios for Turnout in ``mode`` against the unary bare synchronous server."""

    def at(target: str, concurrency: int, target_mode: str = mode) -> dict[str, Any]:
        return find(cells, target, target_mode, 1, concurrency)

    return {
        "process_vs_bare_sync_throughput_b1_c64": ratio(
            throughput(at("turnout-process", 64)), throughput(at("bare-sync", 64, "unary"))
        ),
        "process_vs_inprocess_throughput_b1_c64": ratio(
            throughput(at("turnout-process", 64)), throughput(at("turnout-inprocess", 64))
        ),
        "process_vs_bare_sync_p99_b1_c1": ratio(p99(at("turnout-process", 1)), p99(at("bare-sync", 1, "unary"))),
        "inprocess_vs_bare_sync_throughput_b1_c64": ratio(
            throughput(at("turnout-inprocess", 64)), throughput(at("bare-sync", 64, "unary"))
        ),
        "bare_aio_vs_bare_sync_throughput_b1_c64": ratio(
            throughput(at("bare-aio", 64)), throughput(at("bare-sync", 64))
        ),
        "bare_handoff_vs_bare_sync_throughput_b1_c64": ratio(
            throughput(at("bare-sync+handoff", 64, "unary")), throughput(at("bare-sync", 64, "unary"))
        ),
        "bare_structure_vs_bare_sync_throughput_b1_c64": ratio(
            throughput(at("bare-sync+handoff+trailers", 64, "unary")), throughput(at("bare-sync", 64, "unary"))
        ),
        "process_vs_bare_structure_throughput_b1_c64": ratio(
            throughput(at("turnout-process", 64)), throughput(at("bare-sync+handoff+trailers", 64, "unary"))
        ),
        "batching_floor_vs_bare_sync_throughput_b1_c64": ratio(
            throughput(at("bare-sync+batching-floor", 64, "unary")), throughput(at("bare-sync", 64, "unary"))
        ),
        "batching_floor_vs_bare_sync_p99_b1_c1": ratio(
            p99(at("bare-sync+batching-floor", 1, "unary")), p99(at("bare-sync", 1, "unary"))
        ),
    }


def goals(found: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    def judged(value: float | None, limit: float, at_least: bool) -> dict[str, Any]:
        passed = None if value is None else (value >= limit if at_least else value <= limit)
        return {"value": value, "goal": f"{'>=' if at_least else '<='} {limit}", "pass": passed}

    return {
        "throughput_vs_bare_sync": judged(
            found["process_vs_bare_sync_throughput_b1_c64"], GOAL_THROUGHPUT_VS_BARE, True
        ),
        "process_boundary_cost": judged(
            found["process_vs_inprocess_throughput_b1_c64"], GOAL_PROCESS_VS_INPROCESS, True
        ),
        "p99_vs_bare_sync_at_1_in_flight": judged(found["process_vs_bare_sync_p99_b1_c1"], GOAL_P99_VS_BARE, False),
    }


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "absent"

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "grpcio": version("grpcio"),
        "protobuf": version("protobuf"),
        "onnxruntime": version("onnxruntime"),
        "numpy": version("numpy"),
        "kernel": platform.release(),
    }


def markdown(document: dict[str, Any]) -> str:
    lines = [
        "| placement | batch | in flight | target | mode | req/s | p50 ms | p99 ms | rows/batch "
        "| server CPU us/req | switches/req | errors |",
        "|---|--:|--:|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for run in document["runs"]:
        for cell in sorted(run["cells"], key=lambda c: (c["batch"], c["concurrency"])):
            where = (
                f"| {cell['placement']} | {cell['batch']} | {cell['concurrency']} | {cell['target']} | {cell['mode']} "
            )
            if "failed" in cell:
                lines.append(where + "| FAILED | | | | | | |")
                continue
            latency = cell["latency_ms"]
            lines.append(
                where + f"| {cell['throughput_rps']:.0f} | {latency['p50']:.3f} | {latency['p99']:.3f} "
                f"| {cell.get('server_rows_per_batch', '')} | {cell.get('server_cpu_us_per_request', '')} "
                f"| {cell.get('server_switches_per_request', '')} | {cell['error_count']} |"
            )
    return "\n".join(lines)


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="unmeasured seconds before each cell")
    parser.add_argument("--quick", action="store_true", help="1 s per cell, 0.3 s warm-up")
    parser.add_argument("--placements", nargs="+", choices=PLACEMENTS, default=list(PLACEMENTS))
    parser.add_argument(
        "--targets",
        nargs="+",
        default=[
            "turnout-process",
            "turnout-inprocess",
            "turnout-process+gateway-cpus",
            "bare-sync",
            "bare-aio",
            "bare-sync+handoff",
            "bare-sync+handoff+trailers",
            "bare-sync+batching-floor",
        ],
    )
    parser.add_argument("--modes", nargs="+", choices=["unary", "stream"], default=["unary", "stream"])
    parser.add_argument("--client-processes", type=int, default=1, help="load generator processes per cell")
    parser.add_argument("--repository", type=Path, default=REPO_ROOT / "examples" / "models")
    parser.add_argument("--python", default=sys.executable, help="interpreter for servers and the load generator")
    parser.add_argument("--output", type=Path, help="also write the JSON document here")
    parser.add_argument("--markdown", type=Path, help="also write a Markdown table of every cell here")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration_s, args.warmup_s = 1.0, 0.3
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(argv)
    started = time.time()
    runs = [run_placement(args, placement) for placement in args.placements]
    summary: dict[str, Any] = {}
    for run in runs:
        for mode in args.modes:
            found = ratios(run["cells"], mode)
            summary[f"{run['placement']}/{mode}"] = {"ratios": found, "goals": goals(found)}
    document = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_s": round(time.time() - started, 1),
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "machine": machine(),
        "goals_pinned_unary": summary.get("pinned/unary", {}).get("goals"),
        "summary": summary,
        "runs": runs,
    }
    text = json.dumps(document, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(document) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
