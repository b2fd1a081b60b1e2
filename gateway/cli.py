"""The ``turnout`` command line: parses arguments and hands settings to the composition root."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

_SERVE_FLAGS: list[tuple[str, type, str]] = [
    ("--host", str, "address to listen on (default 0.0.0.0)"),
    ("--port", int, "gRPC port (default 8001, Triton's; 0 picks a free one)"),
    ("--max-message-bytes", int, "largest request or response accepted (default 1 GiB)"),
    ("--grpc-threads", int, "threads serving gRPC calls (default 128)"),
    ("--intra-op-threads", int, "ONNX Runtime intra-op threads per worker (default 1)"),
    ("--inter-op-threads", int, "ONNX Runtime inter-op threads per worker (default 1)"),
    ("--poll-interval-s", float, "seconds between repository scans; 0 turns polling off (default 2)"),
    ("--drain-timeout-s", float, "longest wait for in-flight requests when unloading (default 30)"),
    ("--grace-period-s", float, "longest wait for in-flight calls on SIGTERM (default 10)"),
    ("--processes", int, "gateway processes sharing the port (SO_REUSEPORT) and the workers (default 1)"),
    ("--state-dir", Path, "directory of the routing state shared by gateway processes (default ./state)"),
    ("--apply-timeout-s", float, "how long a policy change waits for every gateway process (default 10)"),
    ("--rollback-window-s", float, "how long a replaced stable version stays loaded (default 600)"),
    ("--shadow-queue-size", int, "shadow copies waiting per shadow version; more are dropped (default 128)"),
    ("--shadow-timeout-s", float, "a shadow answer later than this counts as failed (default 5)"),
    ("--gateway-cpus", str, "CPUs for the gateway's threads, e.g. 0 or 0-3; with --processes N, one each"),
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turnout", description="Turnout model-serving gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a model repository over gRPC")
    serve.add_argument("--repository", type=Path, help="model repository directory (TURNOUT_REPOSITORY)")
    serve.add_argument("--config", type=Path, help="YAML file of settings (flags and TURNOUT_* win over it)")
    serve.add_argument(
        "--worker-mode", choices=["process", "inprocess"], help="run models in worker processes (default) or here"
    )
    serve.add_argument(
        "--worker-start", choices=["fork", "spawn"], help="fork workers from a zygote (default) or spawn each"
    )
    serve.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    for flag, kind, text in _SERVE_FLAGS:
        serve.add_argument(flag, type=kind, help=text)
    # How the supervisor of --processes N starts its gateway processes.
    serve.add_argument("--worker-broker", type=Path, help=argparse.SUPPRESS)
    serve.add_argument("--reuse-port", action="store_const", const=True, help=argparse.SUPPRESS)
    health = commands.add_parser("health", help="ask a gateway's grpc.health.v1 service; exit 0 when SERVING")
    health.add_argument("--server", default="localhost:8001", help="HOST:PORT (default localhost:8001)")
    health.add_argument("--timeout-s", type=float, default=3.0)
    from gateway.client.commands import add_commands

    add_commands(commands)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from gateway.settings import load_settings

    flags: dict[str, Any] = {
        key: value for key, value in vars(args).items() if key not in ("command", "config")
    }
    try:
        settings = load_settings(args.config, flags)
    except (ValidationError, ValueError, OSError) as error:
        print(f"turnout: invalid settings: {error}", file=sys.stderr)
        return 2
    if settings.processes > 1:
        from gateway.process.supervisor import supervise

        return supervise(settings)
    from gateway.app import serve

    return serve(settings)


def _health(args: argparse.Namespace) -> int:
    from gateway.client.health import probe

    status = probe(args.server, args.timeout_s)
    print(status)
    return 0 if status == "SERVING" else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "health":
        return _health(args)
    from gateway.client.commands import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
