"""The operator's commands (status, policy, canary, shadow, promote, rollback, history) over Rollouts gRPC.

Each command talks to a running gateway's control address (``--server``, ``TURNOUT_SERVER``, default
``localhost:8003``) and prints the result for a person, or as JSON with ``--json`` for scripts. The
token from ``--token-file`` or ``TURNOUT_TOKEN`` travels as ``authorization: Bearer <token>``; the
gateway records the token's name as the actor. A refusal prints its status name and message.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from gateway.client.channel import ClientTlsError, add_tls_flags, open_channel
from gateway.client.rollout_command import (
    add_rollout_flags,
    describe_rollout,
    describe_rollout_state,
    rollout_call,
    rollout_json,
)
from gateway.wire.turnout.v1 import rollouts_pb2 as pb
from gateway.wire.turnout.v1 import rollouts_pb2_grpc as pb_grpc

# The operator commands' defaults, in one place; --help shows each of them.
DEFAULT_SERVER = "localhost:8003"  # the control address of a gateway on this host
SERVER_ENV = "TURNOUT_SERVER"
TOKEN_ENV = "TURNOUT_TOKEN"
DEFAULT_HEALTH_SERVER = "localhost:8001"  # turnout health asks the inference port, Triton's
DEFAULT_TIMEOUT_S = 30.0  # a policy change waits for every gateway process (--apply-timeout-s 10)
DEFAULT_HEALTH_TIMEOUT_S = 3.0  # under Docker's 4 s health check timeout
DEFAULT_HISTORY_LIMIT = 20
DEFAULT_WATCH_S = 2.0  # turnout status --watch
MIN_WATCH_S = 0.2  # no tighter loop than this, whatever was asked
CLEAR_SCREEN = "\x1b[H\x1b[2J"  # cursor home, erase the screen (ANSI)
COMMANDS = ("status", "policy", "canary", "shadow", "promote", "rollback", "history", "rollout")


def _server_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=os.environ.get(SERVER_ENV) or DEFAULT_SERVER,
        metavar="HOST:PORT",
        help=f"the gateway's control address (default: {DEFAULT_SERVER}; env {SERVER_ENV})",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"file holding the control token, sent as a bearer token (default: none; env {TOKEN_ENV} holds the"
        " token itself)",
    )


def control_metadata(token_file: str | None, environ: Mapping[str, str] = os.environ) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries the token: from ``--token-file``, else ``TURNOUT_TOKEN``, else none."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as error:
            raise SystemExit(f"turnout: cannot read the token file {token_file}: {error.strerror}") from None
    else:
        token = environ.get(TOKEN_ENV, "").strip()
    return (("authorization", f"Bearer {token}"),) if token else ()


def _timeout_flag(parser: argparse.ArgumentParser, default: float) -> None:
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=default,
        metavar="SECONDS",
        help=f"how long to wait for the gateway's answer (default: {default:g})",
    )


def _reason_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", default="", help="why, recorded in the audit history (default: none)")


def _sticky_key_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sticky-key",
        default="",
        metavar="HEADER",
        help="request metadata key that keeps a caller on one side of the split (default: none, a random draw)",
    )


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def add_commands(commands: Any) -> None:
    """Register ``health`` and the control commands on the ``turnout`` argument parser's subcommands."""
    health = commands.add_parser("health", help="ask a gateway's grpc.health.v1 service; exit 0 when SERVING")
    health.add_argument(
        "--server",
        default=DEFAULT_HEALTH_SERVER,
        metavar="HOST:PORT",
        help=f"the gateway's inference port (default: {DEFAULT_HEALTH_SERVER})",
    )
    add_tls_flags(health)
    _timeout_flag(health, DEFAULT_HEALTH_TIMEOUT_S)

    def command(name: str, text: str, model_optional: bool = False) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=text, description=text)
        if model_optional:
            parser.add_argument("model", nargs="?", help="model name (default: every model in the repository)")
        else:
            parser.add_argument("model", help="model name (required)")
        _server_flag(parser)
        add_tls_flags(parser)
        parser.add_argument("--json", action="store_true", help="print JSON for scripts (default: text for people)")
        _timeout_flag(parser, DEFAULT_TIMEOUT_S)
        return parser

    status = command(
        "status", "show models: policy, versions, each arm's last minute, shadow divergence", model_optional=True
    )
    status.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=DEFAULT_WATCH_S,
        default=None,
        metavar="SECONDS",
        help=f"show it again every SECONDS until interrupted (default: once; --watch alone: {DEFAULT_WATCH_S:g})",
    )
    policy = command("policy", "replace a model's policy with just a stable version (clears trials)")
    policy.add_argument("--stable", type=int, required=True, metavar="VERSION", help="the version to serve (required)")
    _sticky_key_flag(policy)
    _reason_flag(policy)
    canary = command("canary", "send a share of traffic to a candidate version")
    canary.add_argument(
        "version", type=int, nargs="?", default=0, help="the candidate version (required unless --clear)"
    )
    canary.add_argument(
        "--weight",
        type=float,
        metavar="PERCENT",
        help="percent of requests, in steps of 0.01 (required unless --clear)",
    )
    _sticky_key_flag(canary)
    canary.add_argument("--clear", action="store_true", help="remove the canary (default: off)")
    _reason_flag(canary)
    shadow = command("shadow", "mirror a fraction of requests to a version (0 removes it)")
    shadow.add_argument("version", type=int, help="the version to mirror to (required)")
    shadow.add_argument(
        "--fraction", type=float, required=True, help="share of requests mirrored, 0 to 1; 0 removes it (required)"
    )
    _reason_flag(shadow)
    promote = command("promote", "make the canary the stable version")
    _reason_flag(promote)
    rollback = command("rollback", "back to the last stable policy, at once")
    _reason_flag(rollback)
    rollout = command(
        "rollout", "a progressive rollout: canary raised step by step on evidence, promoted or rolled back"
    )
    add_rollout_flags(rollout)
    history = command("history", "the model's policy changes, newest first")
    history.add_argument(
        "--limit", type=_positive_int, default=DEFAULT_HISTORY_LIMIT, metavar="N",
        help=f"show at most N changes (default: {DEFAULT_HISTORY_LIMIT})",
    )


def run(args: argparse.Namespace) -> int:
    """Run one control command; exit status 0 on success, 1 when the gateway refused."""
    metadata = control_metadata(args.token_file)
    try:
        channel = open_channel(args)
    except ClientTlsError as error:
        print(f"turnout {args.command}: {error}", file=sys.stderr)
        return 2
    with channel:
        stub = pb_grpc.RolloutsStub(channel)
        try:
            if args.command == "status":
                return _status(channel, stub, args, metadata)
            call, request, show = _call_for(stub, args)
            response = call(request, timeout=args.timeout_s, metadata=metadata)
        except grpc.RpcError as error:
            print(f"turnout {args.command}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    _print(response, args.json, show)
    return 0


def _call_for(stub: Any, args: argparse.Namespace) -> tuple[Any, Any, Callable[[Any], str]]:
    model, reason = args.model, getattr(args, "reason", "")
    if args.command == "policy":
        policy = pb.Policy(stable=args.stable, sticky_key=args.sticky_key)
        return stub.SetPolicy, pb.SetPolicyRequest(model=model, policy=policy, reason=reason), describe_policy
    if args.command == "canary":
        if not args.clear and (not args.version or args.weight is None):
            raise SystemExit("turnout canary: give VERSION and --weight, or --clear")
        request = pb.SetCanaryRequest(
            model=model,
            version=args.version,
            weight_percent=args.weight or 0.0,
            sticky_key=args.sticky_key,
            reason=reason,
            clear=args.clear,
        )
        return stub.SetCanary, request, describe_policy
    if args.command == "shadow":
        request = pb.SetShadowRequest(model=model, version=args.version, fraction=args.fraction, reason=reason)
        return stub.SetShadow, request, describe_policy
    if args.command == "promote":
        return stub.Promote, pb.PromoteRequest(model=model, reason=reason), describe_policy
    if args.command == "rollback":
        return stub.Rollback, pb.RollbackRequest(model=model, reason=reason), describe_policy
    if args.command == "rollout":
        call, request = rollout_call(stub, args)
        return call, request, describe_rollout_state
    return stub.History, pb.HistoryRequest(model=model, limit=args.limit), describe_history


def _status(channel: grpc.Channel, stub: Any, args: argparse.Namespace, metadata: Any) -> int:
    if args.watch is None:
        print(_status_report(channel, stub, args, metadata))
        return 0
    try:
        while True:  # a terminal view: clear the screen, show, wait; Ctrl-C ends it
            report = _status_report(channel, stub, args, metadata)
            print(("" if args.json else CLEAR_SCREEN) + report, flush=True)
            time.sleep(max(args.watch, MIN_WATCH_S))
    except KeyboardInterrupt:
        return 0


def _status_report(channel: grpc.Channel, stub: Any, args: argparse.Namespace, metadata: Any) -> str:
    if args.model:
        models = [args.model]
    else:
        # Imported here, not with the module: building the parser must not register the `inference`
        # protos, which clash with tritonclient's copies when both live in one process (the tests).
        from gateway.wire import inference_pb2, inference_pb2_grpc

        index = inference_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
            inference_pb2.RepositoryIndexRequest(), timeout=args.timeout_s, metadata=metadata
        )
        models = sorted({entry.name for entry in index.models})
    reports = []
    for model in models:
        versions = stub.ListVersions(pb.ListVersionsRequest(model=model), timeout=args.timeout_s, metadata=metadata)
        try:
            policy = stub.GetPolicy(pb.GetPolicyRequest(model=model), timeout=args.timeout_s, metadata=metadata)
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.UNAVAILABLE:
                raise
            policy = None
        figures = stub.GetShadowComparison(
            pb.ShadowComparisonRequest(model=model), timeout=args.timeout_s, metadata=metadata
        )
        traffic = stub.GetTraffic(pb.TrafficRequest(model=model), timeout=args.timeout_s, metadata=metadata)
        reports.append((policy, versions, figures, traffic, _rollout(stub, model, args, metadata)))
    fleet = _fleet(stub, args, metadata)
    if args.json:
        fleet_json = _to_dict(fleet) if fleet is not None else None
        return json.dumps([{**_status_json(*report), "fleet": fleet_json} for report in reports], indent=2)
    return "\n\n".join([*(_status_text(*report) for report in reports), _fleet_text(fleet)])


def _fleet(stub: Any, args: argparse.Namespace, metadata: Any) -> Any:
    """Every gateway process on the shared state; None when the state cannot be read now (the
    database is down: the gateway serves on) or the gateway predates the call."""
    try:
        return stub.GetFleet(pb.FleetRequest(), timeout=args.timeout_s, metadata=metadata)
    except grpc.RpcError as error:
        if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED):
            raise
        return None


def _fleet_text(fleet: Any) -> str:
    if fleet is None:
        return "fleet: unknown (the routing state cannot be read now)"
    hosts = {p.host for p in fleet.processes}
    lines = [f"fleet: generation {fleet.generation}, {len(hosts)} host(s), {len(fleet.processes)} process(es)"]
    now_ms = time.time() * 1000
    for p in fleet.processes:
        if not p.live:
            state = f"  heartbeat lapsed (> {fleet.liveness_s:g} s): not waited for"
        elif p.applied_generation < fleet.generation:
            state = "  behind"
        else:
            state = ""
        ago_s = max(now_ms - p.last_heartbeat_unix_ms, 0) / 1000
        lines.append(
            f"  {p.host or '-':<16} {p.process_id:<32} generation {p.applied_generation:<5}"
            f" heartbeat {ago_s:.1f} s ago{state}"
        )
    return "\n".join(lines)


def _to_dict(message: Any) -> dict[str, Any]:
    converted: dict[str, Any] = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return converted


def _rollout(stub: Any, model: str, args: argparse.Namespace, metadata: Any) -> Any:
    """The model's newest rollout; None when it never had one."""
    try:
        return stub.GetRollout(pb.GetRolloutRequest(model=model), timeout=args.timeout_s, metadata=metadata)
    except grpc.RpcError as error:
        if error.code() is not grpc.StatusCode.NOT_FOUND:
            raise
        return None


def _status_json(policy: Any, versions: Any, figures: Any, traffic: Any, rollout: Any) -> dict[str, Any]:
    return {
        "model": versions.model,
        "policy": _to_dict(policy) if policy is not None else None,
        "versions": _to_dict(versions)["versions"],
        "traffic": _to_dict(traffic),
        "shadow_comparison": _to_dict(figures)["figures"],
        "rollout": rollout_json(rollout) if rollout is not None else None,
    }


def _traffic_text(traffic: Any) -> list[str]:
    if not traffic.kept:
        return ["  traffic: not kept (the gateway runs with --metrics-port 0)"]
    processes = f", {traffic.processes} gateway processes" if traffic.processes > 1 else ""
    if not traffic.arms:
        return [f"  last {traffic.window_s} s{processes}: no requests"]
    lines = [
        f"  last {traffic.window_s} s{processes}:",
        f"    {'arm':<7} {'version':<6}  {'req/s':>9}  {'errors':>7}  {'p50':>8}  {'p99':>8}  {'requests':>8}",
    ]
    for arm in traffic.arms:
        lines.append(
            f"    {arm.arm:<7} v{arm.version:<5}  {arm.requests_per_s:>9.2f}  {100 * arm.error_rate:>6.2f}%"
            f"  {arm.p50_ms:>5.2f} ms  {arm.p99_ms:>5.2f} ms  {arm.requests:>8}"
        )
    return lines


def _status_text(policy: Any, versions: Any, figures: Any, traffic: Any, rollout: Any) -> str:
    lines = [describe_policy(policy) if policy is not None else f"{versions.model}: no READY version"]
    if rollout is not None:
        lines.append(describe_rollout(rollout))
    lines.append("  versions:")
    for v in versions.versions:
        role = f"  {v.role}" if v.role else ""
        why = f"  ({v.reason})" if v.reason else ""
        lines.append(f"    {v.version:>4}  {v.state:<11} sha256 {v.artifact_sha256[:12] or '-':<12}{role}{why}")
    lines.extend(_traffic_text(traffic))
    for f in figures.figures:
        agreement = f"{100 * f.top1_agreed / f.top1_rows:.2f}% top-1 agreement" if f.top1_rows else "no class scores"
        diffs = ", ".join(_divergence(d) for d in f.outputs)
        paused = f", {f.paused} paused after repeated failures" if f.paused else ""
        lines.append(
            f"  shadow v{f.shadow_version} vs v{f.primary_version}: {f.compared} compared, {f.failed} failed, "
            f"{f.dropped} dropped{paused}; {agreement}; {diffs or 'nothing compared yet'}"
        )
    return "\n".join(lines)


def _divergence(output: Any) -> str:
    equal = f"{100 * output.equal_elements / output.elements:.2f}% equal" if output.elements else "none compared"
    return f"{output.output}: {equal}, max |diff| {output.max_abs_diff:.3g}"


def policy_arms(policy: Any) -> list[tuple[str, str]]:
    """A policy as (role, what) pairs, in one order for every view of it: stable, canary, shadows, sticky key."""
    arms = [("stable", f"v{policy.stable}")]
    if policy.HasField("canary"):
        arms.append(("canary", f"v{policy.canary.version} {policy.canary.weight_bp / 100:.2f}%"))
    arms.extend(("shadow", f"v{s.version} {100 * s.fraction:g}%") for s in policy.shadows)
    if policy.sticky_key:
        arms.append(("sticky", policy.sticky_key))
    return arms


def describe_policy(state: Any) -> str:
    """A policy in effect, one arm a line."""
    kind = "policy" if state.explicit else "no policy set; highest READY version serves"
    lines = [f"{state.model}  generation {state.generation}  ({kind})"]
    lines.extend(f"  {role:<7} {what}" for role, what in policy_arms(state.policy))
    if state.applied_by:
        lines.append(f"  applied by {len(state.applied_by)} gateway process(es)")
    if state.note:
        lines.append(f"  note: {state.note}")
    return "\n".join(lines)


def _one_line(policy: Any) -> str:
    return ", ".join(f"{role} {what}" for role, what in policy_arms(policy))


def describe_history(history: Any) -> str:
    refused = sum(not change.HasField("after") for change in history.changes)
    also = f" and {refused} refused call(s)" if refused else ""
    lines = [f"{history.model}: {len(history.changes) - refused} change(s){also}, newest first"]
    for change in history.changes:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(change.at_unix_ms / 1000))
        if not change.HasField("after"):  # a call refused for its credentials: it changed nothing
            lines.append(f"  #-    {at}  {change.action} by {change.actor}: {change.reason}")
            continue
        before = _one_line(change.before) if change.HasField("before") else "(none)"
        reason = f"  \"{change.reason}\"" if change.reason else ""
        lines.append(f"  #{change.generation:<4} {at}  {change.action:<12} by {change.actor}{reason}")
        lines.append(f"        {before}  ->  {_one_line(change.after)}")
    return "\n".join(lines)


def _print(response: Any, as_json: bool, show: Callable[[Any], str]) -> None:
    print(json.dumps(_to_dict(response), indent=2) if as_json else show(response))
