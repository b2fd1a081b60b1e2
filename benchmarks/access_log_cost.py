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

import json
import shutil
import time
from collections.abc import Sequence
from functools import partial

import rounds
from run_rollouts import Gateway

MODES = ("off", "text", "json")
FLAGS = {"off": [], "text": ["--access-log", "on"], "json": ["--log-format", "json", "--access-log", "on"]}


def main(argv: Sequence[str] | None = None) -> int:
    args = rounds.cost_arguments(__doc__).parse_args(argv)
    started = time.time()
    work = rounds.digits_work_directory("turnout-access-log-cost-")
    server_cpu, client_cpu = rounds.cpus_of(args.pin)
    starts = {mode: partial(Gateway, work / "models", server_cpu, *FLAGS[mode]) for mode in MODES}
    with rounds.started_gateways(starts) as gateways:
        cells = rounds.interleaved_cells(gateways, args.rounds, args.concurrency, args.duration_s, client_cpu)
    shutil.rmtree(work, ignore_errors=True)
    document = {
        **rounds.document_head("access_log_cost.py", argv, started, commit=True),
        "per_concurrency": {f"{c}_in_flight": rounds.against_off(cells, c, MODES) for c in args.concurrency},
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
