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

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from rounds import against_off, interleaved_cells
from run_rollouts import REPO_ROOT, Gateway
from run_serving import CLIENT_CPU, SERVER_CPU, machine

from tests.support.certificates import make_authority

MODES = ("off", "on")  # off: plaintext; on: TLS (rounds.against_off compares every mode with "off")
COMPARED = ("throughput_rps", "p99_ms", "server_cpu_us_per_request")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration-s", type=float, default=3.0, help="measured seconds per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--pin", action="store_true", help="gateways on CPU 0, the load generator on CPU 1")
    args = parser.parse_args(argv)
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="turnout-tls-cost-"))
    shutil.copytree(REPO_ROOT / "examples" / "models" / "digits", work / "models" / "digits")
    ca = make_authority(work / "certificates", "benchmark-ca")
    server = ca.issue(work / "certificates", "gateway")
    server_cpu, client_cpu = (SERVER_CPU, CLIENT_CPU) if args.pin else (None, None)
    gateways: dict[str, Gateway] = {}
    try:
        gateways["off"] = Gateway(work / "models", server_cpu)
        gateways["on"] = Gateway(
            work / "models", server_cpu, "--tls-cert-file", str(server.certificate), "--tls-key-file", str(server.key),
            client_flags=("--tls-ca-file", str(ca.certificate)),
        )
        cells = interleaved_cells(gateways, args.rounds, args.concurrency, args.duration_s, client_cpu)
    finally:
        for gateway in gateways.values():
            gateway.stop()
    shutil.rmtree(work, ignore_errors=True)
    document = {
        "command": " ".join(["python benchmarks/tls_cost.py", *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_s": round(time.time() - started, 1),
        "machine": machine(),
        "modes": {"off": "plaintext", "on": "TLS (P-256 certificate, one connection per load generator process)"},
        "per_concurrency": {f"{c}_in_flight": against_off(cells, c, MODES, COMPARED) for c in args.concurrency},
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
