"""Translates Triton server flags on ``turnout serve``'s command line into Turnout's own flags.

A Triton deployment's arguments (``--model-repository=/models --grpc-port 8001 ...``) should start
Turnout unchanged where Turnout has the same setting, and fail loudly where it has not: a flag
that would be silently ignored is a setting the operator believes in and does not get. So every
Triton flag is either translated, accepted because its value is what Turnout does anyway, or
refused by name. Turnout's own flags and anything that is not a Triton flag pass through untouched
(argparse reports the typos). Pure: no I/O, no settings, just tokens in and tokens out.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

# Triton's ParseOption<bool> spellings (it lower-cases first); yes/no added for people.
_TRUE_WORDS = frozenset({"true", "on", "1", "yes"})
_FALSE_WORDS = frozenset({"false", "off", "0", "no"})


def parse_bool(text: str) -> bool:
    """``true``/``on``/``1``/``yes`` or ``false``/``off``/``0``/``no``, any case, as Triton reads booleans."""
    word = text.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError(f"{text!r} is not a boolean (true or false)")


class TritonFlagError(ValueError):
    """Triton flags that Turnout cannot honour; ``problems`` has one line per flag."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


@dataclass
class _Translation:
    """What the walk over the arguments has gathered so far."""

    flags: list[str] = field(default_factory=list)  # Turnout flags, --name=value
    problems: list[str] = field(default_factory=list)
    repositories: list[str] = field(default_factory=list)
    control_mode: str | None = None
    poll_secs: str | None = None
    log: dict[str, str] = field(default_factory=dict)
    use_ssl: bool = False
    mutual_tls: bool = False
    ssl_files: dict[str, str] = field(default_factory=dict)  # server-cert, server-key, root-cert


# A handler gets the Triton flag's name (without dashes), its value, and the translation to add to.
_Handler = Callable[[str, str, _Translation], None]


def _refuse(name: str, value: str, into: _Translation) -> None:
    into.problems.append(f"Triton flag --{name} has no Turnout equivalent")


def _rename(flag: str, convert: Callable[[str], str] = str) -> _Handler:
    """The same setting under Turnout's flag ``flag``, its value converted."""

    def handle(name: str, value: str, into: _Translation) -> None:
        try:
            into.flags.append(f"{flag}={convert(value)}")
        except ValueError:
            into.problems.append(f"Triton flag --{name}={value}: not a number")

    return handle


def _milliseconds_to_seconds(value: str) -> str:
    return str(int(value) / 1000)


def _only_when(expected: str, why: str) -> _Handler:
    """A flag whose value ``expected`` describes what Turnout does anyway; any other value is refused."""

    def handle(name: str, value: str, into: _Translation) -> None:
        if not _same_value(value, expected):
            into.problems.append(
                f"Triton flag --{name}={value} has no Turnout equivalent ({why}; --{name}={expected} is accepted)"
            )

    return handle


def _same_value(value: str, expected: str) -> bool:
    """Booleans compare as booleans (``off`` is ``false``), anything else as written."""
    if expected not in _TRUE_WORDS | _FALSE_WORDS:
        return value.strip() == expected
    try:
        return parse_bool(value) == parse_bool(expected)
    except ValueError:
        return False


def _restrict_protocol(name: str, value: str, into: _Translation) -> None:
    """``model-repository:KEY=VALUE``: loads and unloads may be made with that header (as with a control
    token). Turnout guards no other protocol group, so naming one would promise what it does not do."""
    groups, colon, header = value.partition(":")
    named = {group.strip() for group in groups.split(",")}
    if not colon or "=" not in header:
        into.problems.append(f"Triton flag --{name}={value}: expected PROTOCOLS:KEY=VALUE")
    elif named != {"model-repository"}:
        others = ", ".join(sorted(named - {"model-repository"}))
        into.problems.append(
            f"Triton flag --{name}={value}: Turnout restricts only model-repository, not {others}"
            " (the control plane has its own address and credentials)"
        )
    else:
        into.flags.append(f"--model-repository-header={header}")


def _allow_metrics(name: str, value: str, into: _Translation) -> None:
    """Metrics are on by default, as in Triton; false turns the metrics port off."""
    try:
        allowed = parse_bool(value)
    except ValueError:
        into.problems.append(f"Triton flag --{name}={value}: not a boolean")
        return
    if not allowed:
        into.flags.append("--metrics-port=0")


# Flags that only mean something together (control mode and poll interval, the log switches), or
# that may repeat (repositories), are gathered first and settled once every flag has been seen.


def _add_repository(name: str, value: str, into: _Translation) -> None:
    into.repositories.append(value)


def _set_control_mode(name: str, value: str, into: _Translation) -> None:
    into.control_mode = value.strip().lower()


def _set_poll_secs(name: str, value: str, into: _Translation) -> None:
    into.poll_secs = value


def _set_log_switch(name: str, value: str, into: _Translation) -> None:
    into.log[name] = value


def _set_use_ssl(name: str, value: str, into: _Translation) -> None:
    try:
        into.use_ssl = parse_bool(value)
    except ValueError:
        into.problems.append(f"Triton flag --{name}={value}: not a boolean")


def _set_use_ssl_mutual(name: str, value: str, into: _Translation) -> None:
    """As in Triton, the flag turns TLS on whatever its value; its value says whether clients need certificates."""
    try:
        into.mutual_tls = parse_bool(value)
    except ValueError:
        into.problems.append(f"Triton flag --{name}={value}: not a boolean")
        return
    into.use_ssl = True


def _set_ssl_file(name: str, value: str, into: _Translation) -> None:
    into.ssl_files[name.removeprefix("grpc-")] = value


TRITON_FLAGS: Mapping[str, _Handler] = {
    "model-repository": _add_repository,
    "model-store": _add_repository,
    "grpc-port": _rename("--port"),
    "grpc-address": _rename("--host"),
    "exit-timeout-secs": _rename("--grace-period-s"),
    "model-control-mode": _set_control_mode,
    "repository-poll-secs": _set_poll_secs,
    "grpc-keepalive-time": _rename("--keepalive-time-s", _milliseconds_to_seconds),
    "grpc-keepalive-timeout": _rename("--keepalive-timeout-s", _milliseconds_to_seconds),
    "model-load-thread-count": _rename("--model-load-threads", lambda value: str(int(value))),
    "log-verbose": _set_log_switch,
    "log-info": _set_log_switch,
    "log-warning": _set_log_switch,
    "log-error": _set_log_switch,
    "allow-grpc": _only_when("true", "Turnout serves gRPC only"),
    "allow-http": _only_when("false", "Turnout serves gRPC only"),
    "allow-sagemaker": _only_when("false", "Turnout serves gRPC only"),
    "allow-vertex-ai": _only_when("false", "Turnout serves gRPC only"),
    "allow-metrics": _allow_metrics,
    "metrics-address": _rename("--metrics-host"),
    "grpc-restricted-protocol": _restrict_protocol,
    "allow-gpu-metrics": _only_when("false", "Turnout has no GPU or CPU metrics"),
    "allow-cpu-metrics": _only_when("false", "Turnout has no GPU or CPU metrics"),
    # Turnout reads a model's signature from the ONNX file when model.yaml leaves it out, as
    # Triton's auto-completion does; it cannot insist on a complete configuration.
    "strict-model-config": _only_when("false", "Turnout completes a model's signature from its ONNX file"),
    # A model that fails to load at start leaves Turnout serving the others, as Triton with false.
    "exit-on-error": _only_when("false", "a model that fails to load does not stop Turnout"),
    "reuse-grpc-port": _only_when("false", "one gateway owns its port; --processes N shares it"),
    "grpc-keepalive-permit-without-calls": _only_when("true", "Turnout always permits pings without calls"),
    "grpc-http2-max-ping-strikes": _only_when("0", "Turnout never closes a connection for its pings"),
    "grpc-http2-min-recv-ping-interval-without-data": _only_when("10000", "Turnout accepts pings 10 s apart"),
    "grpc-use-ssl": _set_use_ssl,
    "grpc-use-ssl-mutual": _set_use_ssl_mutual,
    "grpc-server-cert": _set_ssl_file,
    "grpc-server-key": _set_ssl_file,
    "grpc-root-cert": _set_ssl_file,
}

# Every other flag of tritonserver (r24.x), refused by name so that none is silently dropped.
UNSUPPORTED_TRITON_FLAGS = frozenset(
    {
        "id", "log-format", "log-file", "disable-auto-complete-config", "load-model",
        "model-load-retry-count", "model-namespacing",
        "http-address", "http-port", "reuse-http-port", "http-header-forward-pattern", "http-thread-count",
        "http-restricted-api", "grpc-header-forward-pattern", "grpc-infer-allocation-pool-size",
        "grpc-max-response-pool-size", "grpc-infer-response-compression-level",
        "grpc-http2-max-pings-without-data", "grpc-max-connection-age",
        "grpc-max-connection-age-grace", "sagemaker-port", "sagemaker-safe-port-range", "sagemaker-thread-count",
        "vertex-ai-port", "vertex-ai-thread-count", "vertex-ai-default-model", "metrics-interval-ms",
        "metrics-config", "trace-file", "trace-level", "trace-rate", "trace-count",
        "trace-log-frequency", "trace-config", "rate-limit", "rate-limit-resource", "pinned-memory-pool-byte-size",
        "cuda-memory-pool-byte-size", "cuda-virtual-address-size", "response-cache-byte-size", "cache-config",
        "cache-directory", "min-supported-compute-capability", "backend-directory", "repoagent-directory",
        "buffer-manager-thread-count", "backend-config", "host-policy", "model-load-gpu-limit",
    }
)
# Triton flags given without a value: the one that takes none, and booleans written bare.
_TAKES_NO_VALUE = frozenset({"disable-auto-complete-config"})
_BOOLEAN_FLAGS = frozenset(
    {
        "log-info", "log-warning", "log-error", "allow-grpc", "allow-http", "allow-sagemaker", "allow-vertex-ai",
        "allow-metrics", "allow-gpu-metrics", "allow-cpu-metrics", "strict-model-config", "exit-on-error",
        "reuse-grpc-port", "grpc-keepalive-permit-without-calls", "model-namespacing", "grpc-use-ssl",
        "grpc-use-ssl-mutual", "reuse-http-port",
    }
)


def is_triton_flag(name: str) -> bool:
    return name in TRITON_FLAGS or name in UNSUPPORTED_TRITON_FLAGS


def translate_triton_flags(arguments: Sequence[str], native: Collection[str]) -> list[str]:
    """``turnout serve``'s arguments with Triton's flags replaced by Turnout's.

    ``native`` holds Turnout's own option strings (``--port``...): those, their values and anything
    unknown are kept as they are. Raises TritonFlagError naming every Triton flag that cannot be
    honoured.
    """
    kept: list[str] = []
    into = _Translation()
    position = 0
    while position < len(arguments):
        token = arguments[position]
        position += 1
        if token == "--":
            kept.extend(arguments[position - 1 :])
            break
        name, equals, value = token[2:].partition("=")
        if not token.startswith("--") or f"--{name}" in native or not is_triton_flag(name):
            kept.append(token)
            continue
        if not equals and name not in _TAKES_NO_VALUE:
            following = arguments[position] if position < len(arguments) else None
            if name in _BOOLEAN_FLAGS and (following is None or following.lower() not in _TRUE_WORDS | _FALSE_WORDS):
                value = "true"  # a bare boolean flag means true
            elif following is None or following.startswith("--"):
                into.problems.append(f"Triton flag --{name} needs a value")
                continue
            else:
                value = following
                position += 1
        TRITON_FLAGS.get(name, _refuse)(name, value, into)
    _finish_repository(into)
    _finish_control_mode(into)
    _finish_log_level(into)
    _finish_tls(into)
    if into.problems:
        raise TritonFlagError(into.problems)
    return kept + into.flags


def _finish_repository(into: _Translation) -> None:
    distinct = list(dict.fromkeys(into.repositories))
    if len(distinct) > 1:
        into.problems.append(
            f"Turnout serves one model repository; --model-repository/--model-store name {len(distinct)}: "
            + ", ".join(distinct)
        )
    elif distinct:
        into.flags.append(f"--repository={distinct[0]}")


def _finish_control_mode(into: _Translation) -> None:
    """Triton's default mode, none, loads at start and never polls; Turnout polls unless told none."""
    mode, seconds = into.control_mode, into.poll_secs
    if mode == "none":
        into.flags.append("--poll-interval-s=0")  # Triton ignores --repository-poll-secs here too
    elif mode in ("poll", None):
        if seconds is not None:
            into.flags.append(f"--poll-interval-s={seconds}")
    elif mode == "explicit":
        into.problems.append(
            "Triton flag --model-control-mode=explicit: Turnout does not support explicit model control yet "
            "(it loads every model in the repository; use none or poll)"
        )
    else:
        into.problems.append(f"Triton flag --model-control-mode={mode}: expected none, poll or explicit")


def _finish_log_level(into: _Translation) -> None:
    """Triton switches error, warning and info logging on and off one by one, plus verbose levels;
    Turnout logs from one level up, so the lowest level Triton would log is the one kept."""
    if not into.log:
        return
    try:
        verbose = into.log.get("log-verbose", "0")
        # Triton reads --log-verbose as a number, or true/false for 1/0.
        verbosity = int(parse_bool(verbose)) if verbose.lower() in _TRUE_WORDS | _FALSE_WORDS else int(verbose)
        enabled = {level: parse_bool(into.log.get(f"log-{level}", "true")) for level in ("info", "warning")}
    except ValueError as error:
        into.problems.append(f"Triton log flags: {error}")
        return
    if verbosity > 0:
        level = "DEBUG"
    elif enabled["info"]:
        level = "INFO"
    elif enabled["warning"]:
        level = "WARNING"
    else:
        level = "ERROR"  # Turnout always logs errors, even with --log-error=false
    into.flags.append(f"--log-level={level}")


def _finish_tls(into: _Translation) -> None:
    """Triton's TLS flags as Turnout's: without --grpc-use-ssl (or -mutual) the files are unused, as in
    Triton; the root certificate is the client CA, and Triton reads it only for mutual TLS."""
    if not into.use_ssl:
        return
    files = into.ssl_files
    missing = [f"--grpc-{name}" for name in ("server-cert", "server-key") if name not in files]
    if into.mutual_tls and "root-cert" not in files:
        missing.append("--grpc-root-cert")
    if missing:
        flag = "--grpc-use-ssl-mutual" if into.mutual_tls else "--grpc-use-ssl"
        into.problems.append(f"Triton flag {flag} needs {' and '.join(missing)}")
        return
    into.flags.extend([f"--tls-cert-file={files['server-cert']}", f"--tls-key-file={files['server-key']}"])
    if into.mutual_tls:
        into.flags.append(f"--tls-client-ca-file={files['root-cert']}")
