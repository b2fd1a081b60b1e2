"""What TLS costs the serving path: plaintext against TLS on the same build, in interleaved rounds; prints JSON.

Two gateways of this checkout with worker processes serve the example digits model: one plaintext
and one with ``--tls-cert-file``/``--tls-key-file`` (a P-256 certificate from a CA made for the
run by tests/support/certificates.py, which needs the ``cryptography`` test dependency). The load
generator holds one channel per process, so the handshake happens once and what is measured is
the encryption of every message. With ``--pin`` both gateways run on CPU 0 and the load generator
on CPU 1. Each round loads each gateway at each concurrency (batch 1, unary), the order rotating
from round to round. Reported per concurrency: each mode's median throughput, p50/p99 latency and
gateway CPU per request, and the median over rounds of TLS/plaintext for throughput, p99 and CPU,
with a bootstrap 95% interval.

    python benchmarks/tls_cost.py --pin --rounds 5 --concurrency 1 64
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence

import rounds
from run_rollouts import Gateway

from tests.support.certificates import make_authority

MODES = ("off", "on")  # off: plaintext; on: TLS (rounds.against_off compares every mode with "off")
COMPARED = ("throughput_rps", "p99_ms", "server_cpu_us_per_request")


def main(argv: Sequence[str] | None = None) -> int:
    args = rounds.cost_arguments(__doc__).parse_args(argv)
    started = time.time()
    work = rounds.digits_work_directory("turnout-tls-cost-")
    ca = make_authority(work / "certificates", "benchmark-ca")
    server = ca.issue(work / "certificates", "gateway")
    server_cpu, client_cpu = rounds.cpus_of(args.pin)
    tls = ("--tls-cert-file", str(server.certificate), "--tls-key-file", str(server.key))
    starts = {
        "off": lambda: Gateway(work / "models", server_cpu),
        "on": lambda: Gateway(work / "models", server_cpu, *tls, client_flags=("--tls-ca-file", str(ca.certificate))),
    }
    with rounds.started_gateways(starts) as gateways:
        cells = rounds.interleaved_cells(gateways, args.rounds, args.concurrency, args.duration_s, client_cpu)
    shutil.rmtree(work, ignore_errors=True)
    document = {
        **rounds.document_head("tls_cost.py", argv, started),
        "modes": {"off": "plaintext", "on": "TLS (P-256 certificate, one connection per load generator process)"},
        "per_concurrency": {f"{c}_in_flight": rounds.against_off(cells, c, MODES, COMPARED) for c in args.concurrency},
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
