"""How fast a rollback reaches a fleet on one PostgreSQL state, and what watching it costs while idle.

Part 1, propagation: for 1, 3 and 6 gateway processes on one host (one supervisor) and 3 and 6 on
three "hosts" (three supervisors on their own ports and state directories, one --state-url), put a
100% canary on version 3 (a copy of version 1), then time the Rollback call. The call returns only
once every live process of every host reports the new generation, so its duration is the time
from the call to the last process applying it. p50, p99 and max over ``--rollbacks`` (200).

Part 2, idle watching: one gateway process left idle for ``--idle-s`` seconds, its CPU time (the
process tree, workers included) with the SQLite store (polling the generation every 20 ms) and
with the PostgreSQL store (LISTEN/NOTIFY, and a poll every 0.5 s).

Needs a PostgreSQL server where the tests find one (127.0.0.1:5432, trust auth, or ``--server``);
it creates a database of its own and drops it after.

    python benchmarks/fleet_propagation.py            # about 4 minutes
    python benchmarks/fleet_propagation.py --quick    # 30 rollbacks a cell, about a minute
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # for gateway.wire.turnout (our control-plane stubs) and tests.support

from process_usage import usage  # noqa: E402
from run_rollouts import Gateway, build_repository, percentiles  # noqa: E402

from gateway.wire.turnout.v1 import rollouts_pb2  # noqa: E402
from tests.support.postgres import own_database  # noqa: E402

# (cell name, hosts, processes per host)
CELLS = (("1 host x 1", 1, 1), ("1 host x 3", 1, 3), ("1 host x 6", 1, 6), ("3 hosts x 1", 3, 1),
         ("3 hosts x 2", 3, 2))  # fmt: skip


def rollbacks(hosts: list[Gateway], count: int) -> dict[str, Any]:
    """``count`` canary-then-rollback pairs, alternating the host that takes the calls."""
    hosts[0].set_policy(rollouts_pb2.Policy(stable=1))
    took_ms, applied_by = [], set()
    for index in range(count):
        caller = hosts[index % len(hosts)].control
        canary = rollouts_pb2.SetCanaryRequest(model="digits", version=3, weight_percent=100, reason="bench")
        caller.SetCanary(canary, timeout=30)
        started = time.perf_counter()
        answer = caller.Rollback(rollouts_pb2.RollbackRequest(model="digits", reason="bench"), timeout=30)
        took_ms.append((time.perf_counter() - started) * 1000)
        applied_by.add(len(answer.applied_by))
    return {
        "rollbacks": count, "processes_applied": sorted(applied_by), "call_to_last_applied_ms": percentiles(took_ms)
    }


def propagation(repository: Path, server: str, count: int) -> dict[str, Any]:
    cells = {}
    for name, hosts, processes in CELLS:
        with own_database(server) as url, ExitStack() as stack:
            started = []
            for _ in range(hosts):
                gateway = Gateway(repository, None, "--processes", str(processes), "--state-url", url)
                stack.callback(gateway.stop)
                started.append(gateway)
            cells[name] = rollbacks(started, count)
        print(f"{name}: {cells[name]}", file=sys.stderr, flush=True)
    return cells


def idle_cpu(repository: Path, server: str, idle_s: float) -> dict[str, Any]:
    cells = {}
    for store in ("sqlite", "postgresql"):
        with own_database(server) as url:
            flags = ("--state-url", url) if store == "postgresql" else ()
            gateway = Gateway(repository, None, *flags)
            try:
                time.sleep(2.0)  # settled: models loaded, first heartbeats written
                first = usage(gateway.process.pid)
                time.sleep(idle_s)
                last = usage(gateway.process.pid)
            finally:
                gateway.stop()
        cpu_percent = 100 * (last.cpu_s - first.cpu_s) / (last.at - first.at)
        cells[store] = {"idle_s": idle_s, "cpu_percent": round(cpu_percent, 3)}
        print(f"idle {store}: {cells[store]}", file=sys.stderr, flush=True)
    return cells


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rollbacks", type=int, default=200)
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="30 rollbacks a cell, 10 s idle")
    args = parser.parse_args(argv)
    count, idle_s = (30, 10.0) if args.quick else (args.rollbacks, args.idle_s)
    with tempfile.TemporaryDirectory(prefix="turnout-fleet-bench-") as root:
        repository = build_repository(Path(root), misbehaving_shadows=False)
        report = {
            "at": time.strftime("%Y-%m-%d %H:%M"),
            "propagation": propagation(repository, args.server, count),
            "idle_watching": idle_cpu(repository, args.server, idle_s),
        }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
