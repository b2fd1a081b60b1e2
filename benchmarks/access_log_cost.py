"""What the access log costs the serving path: off, on in text and on in JSON, in interleaved rounds; prints JSON.

Three gateways with worker processes serve the example digits model (no policy): one without the
access log, one with ``--access-log on`` (text lines) and one with ``--log-format json --access-log
on``, every gateway on CPU 0 and the load generator on CPU 1 with ``--pin``. Each round loads each
gateway at each concurrency (batch 1, unary), the order rotating from round to round. Reported per
concurrency: each mode's median throughput, p50/p99 latency and gateway CPU per request, and the
median over rounds of text/off and json/off with a bootstrap 95% interval. The gateways' stderr
(the access lines) goes wherever this script's stderr goes: send it to a file, as a service's log
would be.

    python benchmarks/access_log_cost.py --pin --rounds 5 2> /tmp/access-lines.log
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from rounds import against_off, commit_of, interleaved_cells
from run_rollouts import REPO_ROOT, Gateway
from run_serving import CLIENT_CPU, SERVER_CPU, machine

MODES = ("off", "text", "json")
FLAGS = {"off": [], "text": ["--access-log", "on"], "json": ["--log-format", "json", "--access-log", "on"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration-s", type=float, default=3.0, help="measured seconds per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--pin", action="store_true", help="gateways on CPU 0, the load generator on CPU 1")
    args = parser.parse_args(argv)
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="turnout-access-log-cost-"))
    shutil.copytree(REPO_ROOT / "examples" / "models" / "digits", work / "models" / "digits")
    server_cpu, client_cpu = (SERVER_CPU, CLIENT_CPU) if args.pin else (None, None)
    gateways: dict[str, Gateway] = {}
    try:
        for mode in MODES:
            gateways[mode] = Gateway(work / "models", server_cpu, *FLAGS[mode])
        cells = interleaved_cells(gateways, args.rounds, args.concurrency, args.duration_s, client_cpu)
    finally:
        for gateway in gateways.values():
            gateway.stop()
    shutil.rmtree(work, ignore_errors=True)
    document = {
        "command": " ".join(["python benchmarks/access_log_cost.py", *(argv if argv is not None else sys.argv[1:])]),
        "commit": commit_of(REPO_ROOT),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_s": round(time.time() - started, 1),
        "machine": machine(),
        "per_concurrency": {f"{c}_in_flight": against_off(cells, c, MODES) for c in args.concurrency},
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
