"""Python function calls per request in the gateway process, for this checkout and a baseline; prints JSON.

Time on this shared host moves by a third from run to run; a count of calls does not. Each checkout's
gateway (worker processes, the example digits model, no policy) runs under a profile hook that counts
the Python functions it enters and the C functions it calls, but only between two signals: the
load generator warms the gateway up first, then sends a fixed number of requests inside the counted
window. The counts include what background threads do meanwhile (the policy sync polls every 20 ms),
which adds a little per request; both checkouts pay it alike.

    git worktree add /tmp/baseline efed16c
    python benchmarks/python_calls.py --baseline /tmp/baseline --requests 3000

With ``--flags`` this checkout's gateway gets more ``turnout serve`` flags, so ``--baseline .`` counts
what a setting costs: ``--baseline . --flags "--access-log on"``.

``--metrics-on this`` gives this checkout's gateway a metrics port (the others run with
``--metrics-port 0``): with ``--baseline .`` that counts what metrics add to a request.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rounds import commit_of

REPO_ROOT = Path(__file__).resolve().parents[1]
_READY = re.compile(r"turnout: serving .* on (?P<host>\S+):(?P<port>\d+)$")

# Run as `python -c` in the checkout being counted, so that `import gateway` finds that checkout.
# SIGUSR1 starts counting, SIGUSR2 stops it and writes the counts to the file named in argv[1].
_COUNTED_GATEWAY = """
import json, signal, sys, threading
counts = {"call": 0, "c_call": 0}
window = [False]
def hook(frame, event, arg):
    if window[0] and event in counts:
        counts[event] += 1
def start(signum, frame):
    window[0] = True
def stop(signum, frame):
    window[0] = False
    with open(sys.argv[1], "w") as out:
        json.dump(counts, out)
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
sys.setprofile(hook)
threading.setprofile(hook)
from gateway.cli import main
sys.exit(main(sys.argv[2:]))
"""


def loadgen(address: str, concurrency: int, amount: list[str]) -> dict[str, Any]:
    command = [
        sys.executable, str(REPO_ROOT / "benchmarks" / "loadgen.py"), "--target", address, "--batch", "1",
        "--concurrency", str(concurrency), "--warmup-s", "0", *amount,
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    measured: dict[str, Any] = json.loads(finished.stdout)
    return measured


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def count(
    tree: Path, repository: Path, concurrency: int, requests: int, flags: Sequence[str] = (), metrics: bool = False
) -> dict[str, Any]:
    counts_file = Path(tempfile.mkstemp(prefix="turnout-calls-", suffix=".json")[1])
    state = tempfile.mkdtemp(prefix="turnout-calls-state-")
    command = [
        sys.executable, "-c", _COUNTED_GATEWAY, str(counts_file), "serve", "--repository", str(repository),
        "--host", "127.0.0.1", "--port", "0", "--poll-interval-s", "0", "--log-level", "WARNING",
        "--state-dir", state, *flags,
    ]
    # No metrics port unless asked, a free control port (older trees ignore the variables).
    env = {**os.environ, "TURNOUT_METRICS_PORT": str(free_port()) if metrics else "0"}
    env["TURNOUT_CONTROL_ADDRESS"] = "127.0.0.1:0"
    gateway = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert gateway.stdout is not None
        for line in gateway.stdout:
            if match := _READY.search(line.strip()):
                address = f"127.0.0.1:{match['port']}"
                break
        else:
            raise RuntimeError(f"the gateway of {tree} exited before serving")
        loadgen(address, concurrency, ["--requests", str(max(requests // 4, 200))])  # warm-up, not counted
        gateway.send_signal(signal.SIGUSR1)
        time.sleep(0.3)  # the main thread runs the handler within 0.1 s
        measured = loadgen(address, concurrency, ["--requests", str(requests)])
        gateway.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while not counts_file.stat().st_size and time.monotonic() < deadline:
            time.sleep(0.05)
        counts = json.loads(counts_file.read_text())
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(60)
        counts_file.unlink(missing_ok=True)
        shutil.rmtree(state, ignore_errors=True)
    served = measured["requests"]
    return {
        "requests": served,
        "errors": measured.get("error_count", 0),
        "python_calls_per_request": round(counts["call"] / served, 1),
        "c_calls_per_request": round(counts["c_call"] / served, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the code to compare against")
    parser.add_argument("--requests", type=int, default=3000, help="requests counted per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--flags", default="", help="more `turnout serve` flags for this checkout's gateway only")
    parser.add_argument("--metrics-on", choices=["none", "this"], default="none", help="whose gateway serves metrics")
    args = parser.parse_args(argv)
    repository = Path(tempfile.mkdtemp(prefix="turnout-calls-"))
    shutil.copytree(REPO_ROOT / "examples" / "models" / "digits", repository / "digits")
    result: dict[str, Any] = {
        "command": " ".join(["python benchmarks/python_calls.py", *(argv if argv is not None else sys.argv[1:])]),
        "this": commit_of(REPO_ROOT),
        "baseline": f"{args.baseline} ({commit_of(args.baseline)})",
    }
    try:
        for concurrency in args.concurrency:
            for name, tree in (("this", REPO_ROOT), ("baseline", args.baseline)):
                flags = shlex.split(args.flags) if name == "this" else []
                metrics = name == "this" and args.metrics_on == "this"
                result[f"{name}@{concurrency}"] = count(tree, repository, concurrency, args.requests, flags, metrics)
    finally:
        shutil.rmtree(repository, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
