"""The ``turnout`` command line: parses arguments and hands settings to the composition root.

``turnout serve``'s flags are built from the fields of :class:`gateway.settings.Settings`: the
field's description, its default and its ``TURNOUT_*`` variable make the help text, so a default
lives in one place. Triton's flags are translated first (:mod:`gateway.triton_flags`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from gateway.logs.configure import configure_logging
from gateway.settings import ENV_PREFIX, STATE_DIR_DEFAULT_TEXT, Settings
from gateway.triton_flags import TritonFlagError, parse_bool, translate_triton_flags
from gateway.version import package_version

log = logging.getLogger("turnout")

# Set by the supervisor of --processes N for the gateway processes it starts; not for people.
_INTERNAL_FIELDS = ("worker_broker", "reuse_port")


def flag_for(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def env_for(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def default_text(field_name: str, field: FieldInfo) -> str:
    """A setting's default as ``--help`` shows it (and as the flag would take it back)."""
    if field_name == "state_dir":
        return STATE_DIR_DEFAULT_TEXT
    default = field.get_default(call_default_factory=False)
    if isinstance(default, bool):
        return str(default).lower()
    if default in (None, ()):
        return "none"
    return str(default)


def setting_help(field_name: str, field: FieldInfo) -> str:
    text = f"{field.description} (default: {default_text(field_name, field)}; env {env_for(field_name)})"
    return text.replace("%", "%%")  # argparse formats help with %


def _argument_kind(field_name: str, annotation: Any) -> dict[str, Any]:
    """argparse's type, choices and metavar for a setting's type; the settings model validates the rest."""
    if get_origin(annotation) is Literal:
        return {"choices": list(get_args(annotation))}
    if annotation is bool:
        # --strict-readiness, --strict-readiness=false and --strict-readiness off all work, as in Triton.
        return {"type": parse_bool, "nargs": "?", "const": True, "metavar": "true|false"}
    if annotation is int:
        return {"type": int, "metavar": "N"}
    if annotation is float:
        return {"type": float, "metavar": "SECONDS" if field_name.endswith("_s") else "X"}
    if annotation is Path:
        return {"type": Path, "metavar": "DIR"}
    return {"type": str, "metavar": field_name.rsplit("_", 1)[-1].upper()}  # --gateway-cpus CPUS


def add_setting_flags(serve: argparse.ArgumentParser) -> None:
    """One flag per Settings field, default None so that the environment and the file still count."""
    for name, field in Settings.model_fields.items():
        if name in _INTERNAL_FIELDS:
            continue
        serve.add_argument(flag_for(name), **_argument_kind(name, field.annotation), help=setting_help(name, field))
    # How the supervisor of --processes N starts its gateway processes.
    serve.add_argument("--worker-broker", type=Path, help=argparse.SUPPRESS)
    serve.add_argument("--reuse-port", action="store_const", const=True, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turnout", description="Turnout model-serving gateway")
    parser.add_argument("--version", action="version", version=f"turnout {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do")
    serve = commands.add_parser(
        "serve",
        help="serve a model repository over gRPC",
        description="Serve a model repository over gRPC. Every flag is also a TURNOUT_* environment variable and "
        "a key of the --config file; flags win over the environment, which wins over the file. Triton's flags "
        "(--model-repository, --grpc-port, ...) are accepted where Turnout has the same setting.",
    )
    serve.add_argument(
        "--config",
        type=Path,
        default=os.environ.get(f"{ENV_PREFIX}CONFIG"),
        metavar="FILE",
        help=f"YAML file of settings; flags and {ENV_PREFIX}* variables win over it"
        f" (default: none; env {ENV_PREFIX}CONFIG)",
    )
    add_setting_flags(serve)
    from gateway.client.commands import add_commands

    add_commands(commands)
    # Both read capture files and talk to no gateway.
    from gateway.capture.drift_command import add_drift_command
    from gateway.capture.report import add_capture_command

    add_capture_command(commands)
    add_drift_command(commands)
    return parser


def subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of ``turnout NAME``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise KeyError(name)


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
    configure_logging(settings)
    if settings.worker_broker is None:  # said once, not again by each of a supervisor's processes
        from gateway.state.open_store import describe_state_location

        log.info("routing state (policies, history) in %s", describe_state_location(settings))
        log.debug("settings: %s", settings.model_dump_json(exclude={"state_url"}))  # its password stays out
    if settings.processes > 1:
        from gateway.process.supervisor import supervise

        return supervise(settings)
    from gateway.app import serve

    return serve(settings)


def _health(args: argparse.Namespace) -> int:
    from gateway.client.channel import ClientTlsError
    from gateway.client.health import probe

    try:
        status = probe(args)
    except ClientTlsError as error:
        print(f"turnout health: {error}", file=sys.stderr)
        return 2
    print(status)
    return 0 if status == "SERVING" else 1


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if arguments[:1] == ["serve"]:
        native = subcommand(parser, "serve")._option_string_actions
        try:
            arguments = ["serve", *translate_triton_flags(arguments[1:], native)]
        except TritonFlagError as error:
            for problem in error.problems:
                print(f"turnout: {problem}", file=sys.stderr)
            return 2
    args = parser.parse_args(arguments)
    if args.command == "serve":
        return _serve(args)
    if args.command == "health":
        return _health(args)
    if args.command == "drift":
        from gateway.capture.drift_command import run_drift

        return run_drift(args)
    if args.command == "capture":  # reads files; talks to no gateway
        from gateway.capture.report import run_capture

        return run_capture(args)
    from gateway.client.commands import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
