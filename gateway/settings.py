"""Gateway settings, parsed once at start-up and handed down.

Sources, highest first: command-line flags, ``TURNOUT_*`` environment variables, an optional YAML
config file (``--config``), then the defaults below. Each field's description is also its
``turnout serve --help`` text, so the flags and this model cannot disagree about a default.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

ENV_PREFIX = "TURNOUT_"
# Triton's server accepts messages up to INT32_MAX; 1 GiB is generous and keeps one request from
# pinning unbounded memory. Operators can raise or lower it.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 30
# How --help shows the state directory's default, which depends on the repository.
STATE_DIR_DEFAULT_TEXT = "$XDG_STATE_HOME/turnout/<repository name>-<hash of its path>"


def default_state_dir(repository: Path, environ: Mapping[str, str] | None = None) -> Path:
    """Where a gateway serving ``repository`` keeps its routing state unless told otherwise.

    Under the XDG state directory (``~/.local/state``), one subdirectory per repository: two
    gateways serving different repositories on one host must not share policies by accident (a
    policy for ``digits`` of one repository would route the other's ``digits``). The name keeps the
    repository's directory name for people and a hash of its resolved path for uniqueness.
    """
    environ = os.environ if environ is None else environ
    xdg = environ.get("XDG_STATE_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path(environ.get("HOME") or Path.home()) / ".local/state"
    resolved = repository.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
    return base / "turnout" / f"{resolved.name or 'root'}-{digest}"


def _state_dir_for(data: dict[str, Any]) -> Path:
    return default_state_dir(data["repository"])


class Settings(BaseSettings):
    """Everything ``turnout serve`` can be told."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    repository: Path = Field(Path("models"), description="model repository directory, in Triton's layout")
    host: str = Field("0.0.0.0", description="address to listen on")
    port: int = Field(8001, ge=0, le=65535, description="gRPC port, Triton's; 0 picks a free one")
    max_message_bytes: int = Field(
        DEFAULT_MAX_MESSAGE_BYTES, ge=1024, le=(1 << 31) - 1, description="largest request or response accepted"
    )
    grpc_threads: int = Field(128, ge=1, le=4096, description="threads serving gRPC calls")
    worker_mode: Literal["process", "inprocess"] = Field(
        "process", description="run models in worker processes, or in the gateway process itself"
    )
    # fork: workers are forked from a zygote process (quick to start, cheaper round trips);
    # spawn: each worker is a new interpreter, for platforms or libraries that dislike fork.
    worker_start: Literal["fork", "spawn"] = Field(
        "fork", description="fork workers from a zygote process, or spawn a fresh interpreter for each"
    )
    intra_op_threads: int = Field(1, ge=0, description="ONNX Runtime intra-op threads per worker")
    inter_op_threads: int = Field(1, ge=0, description="ONNX Runtime inter-op threads per worker")
    poll_interval_s: float = Field(2.0, ge=0, description="seconds between repository scans; 0 turns polling off")
    drain_timeout_s: float = Field(
        30.0, ge=0, description="longest wait for a version's in-flight requests when unloading it"
    )
    grace_period_s: float = Field(10.0, ge=0, description="longest wait for in-flight calls on SIGTERM")
    keepalive_time_s: float = Field(60.0, gt=0, description="seconds between the server's keepalive pings")
    keepalive_timeout_s: float = Field(
        20.0, gt=0, description="seconds to wait for a keepalive ping's answer before closing the connection"
    )
    # As Triton's --strict-readiness, and on by default as there: a readiness probe that says ready
    # while a model is missing sends callers to a server that answers them UNAVAILABLE.
    strict_readiness: bool = Field(
        True,
        description="ServerReady says ready only while every model has a READY version (Triton's default);"
        " false: ready once the server is up",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="lowest level logged")
    # Logs and readiness (gateway/logs, the model manager's loads)
    log_format: Literal["text", "json"] = Field(
        "text", description="text lines, or JSON lines (time, level, logger, message, model, version, request_id)"
    )
    access_log: bool = Field(
        False, description="log one line per request (logger turnout.access), written off the request path"
    )
    access_log_sample: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="fraction of requests in the access log, decided by request id; failed ones always",
    )
    # Triton's --model-load-thread-count: different models load side by side; one model's versions in order.
    model_load_threads: int = Field(4, ge=1, le=256, description="models loaded at the same time")
    # Routing state (policies, history) shared by every gateway process on this host. The default
    # depends on the repository, so it is computed from the validated repository field above.
    state_dir: Path = Field(
        default_factory=_state_dir_for,
        description="directory of the routing state (policies, history), shared by the gateway processes",
    )
    # A fleet of hosts shares one routing state in PostgreSQL; without it, SQLite under state_dir.
    state_url: str | None = Field(
        None,
        pattern=r"^postgres(ql)?://",
        description="PostgreSQL URL (postgresql://USER@HOST:PORT/DB) of the routing state shared by every"
        " host of a fleet; unset: SQLite under --state-dir",
    )
    processes: int = Field(
        1, ge=1, le=256, description="gateway processes sharing the port (SO_REUSEPORT) and the workers"
    )
    # Set by the supervisor for the gateway processes it starts; not for people.
    worker_broker: Path | None = Field(None, description="the supervisor's worker broker socket (internal)")
    reuse_port: bool = Field(False, description="bind the port with SO_REUSEPORT (internal)")
    policy_poll_interval_s: float = Field(
        0.02, gt=0, description="seconds between checks for policy changes made through other gateway processes"
    )
    apply_timeout_s: float = Field(
        10.0, gt=0, description="how long a policy change waits for every gateway process (of every host: --state-url)"
    )
    rollback_window_s: float = Field(
        600.0, ge=0, description="seconds a replaced stable version stays loaded for a rollback"
    )
    shadow_queue_size: int = Field(
        128, ge=1, description="shadow copies waiting per shadow version; more are dropped"
    )
    shadow_timeout_s: float = Field(
        5.0, gt=0, description="a shadow answer later than this many seconds counts as failed"
    )
    # CPUs the gateway's own threads run on ("0", "0,2", "4-7"); workers stay free. With
    # --processes N, process i gets the i-th listed CPU alone. Empty: wherever the kernel likes.
    gateway_cpus: Annotated[tuple[int, ...], NoDecode] = Field(  # NoDecode: TURNOUT_GATEWAY_CPUS=0-3 is not JSON
        (),
        description="CPUs for the gateway's threads, e.g. 0 or 0-3 (none: any); with --processes N, one each",
    )

    # Request capture (gateway/capture): on when a directory is given.
    capture_dir: Path | None = Field(
        None, description="directory of captured request records (write-ahead log and Parquet); none: capture off"
    )
    capture_durability: Literal["async", "sync"] = Field(
        "async",
        description="async: records reach the disk within --capture-flush-ms; sync: a caller is answered only"
        " once its record is on disk",
    )
    capture_overflow: Literal["block", "drop"] = Field(
        "drop", description="when the capture buffer is full: drop the record (counted) or make the request wait"
    )
    capture_flush_ms: int = Field(200, ge=1, le=60_000, description="longest time an async record waits to be written")
    capture_max_bytes: int = Field(
        0, ge=0, description="disk budget of the capture directory; the oldest Parquet files go first; 0: none"
    )
    capture_outputs: bool = Field(True, description="capture the outputs as well as the inputs")
    capture_sample: float = Field(
        1.0, ge=0.0, le=1.0, description="fraction of requests captured, decided by request id; failed ones always"
    )

    # Running drift (gateway/capture/drift_window.py): needs no capture directory, only a version's
    # reference.parquet; the metrics exporter reads it.
    drift_window_rows: int = Field(
        10_000,
        ge=0,
        description="latest served input rows kept per model version with a reference.parquet, for the"
        " metrics' running drift (once full, every 8th batch is written into it); 0: off (off with"
        " --metrics-port 0 too)",
    )
    # Metrics (gateway/telemetry): Prometheus's /metrics, Turnout's names and Triton's.
    metrics_port: int = Field(
        8002, ge=0, le=65535, description="port serving Prometheus metrics at /metrics, Triton's; 0: off"
    )
    metrics_host: str | None = Field(None, description="address the metrics port listens on; default: --host's")
    # Set by the supervisor for the gateway processes it starts; not for people.
    telemetry_dir: Path | None = Field(
        None, description="the supervisor's directory where gateway processes serve their metrics (internal)"
    )

    # Transport security (gateway/edge/tls.py): TLS on the inference port when a certificate is given.
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate chain the gRPC port serves TLS with (re-read on SIGHUP); none: plaintext"
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of --tls-cert-file (re-read on SIGHUP)")
    tls_client_ca_file: Path | None = Field(
        None,
        description="PEM CA certificates; clients without a certificate from them are refused (mutual TLS;"
        " re-read on SIGHUP)",
    )

    # Limits (docs/architecture.md, "Limits"): each refusal names its flag, and the server goes on serving.
    # An open stream holds one of the --grpc-threads threads for its whole life (gateway/edge/stream_slots.py),
    # so streams get fewer threads than the pool: the rest stay for unary calls and health checks.
    max_streams: int = Field(
        0,
        ge=0,
        description="ModelStreamInfer streams open at once per gateway process, fewer than --grpc-threads;"
        " more are refused RESOURCE_EXHAUSTED; 0: half of --grpc-threads",
    )
    max_streams_per_connection: int = Field(
        16, ge=1, description="streams one client connection may have open at once; more are refused RESOURCE_EXHAUSTED"
    )
    max_in_flight: int = Field(
        1024,
        ge=0,
        description="inference requests served at once per gateway process, unary and streamed; more are"
        " refused RESOURCE_EXHAUSTED; 0: no limit",
    )
    # 2**28 FP32 elements fill the default 1 GiB message; the bound matters for the encodings whose
    # cost grows with the elements rather than the bytes (typed contents, BYTES).
    max_tensor_elements: int = Field(
        1 << 28, ge=1, description="elements one input tensor may have; more are refused RESOURCE_EXHAUSTED"
    )

    @property
    def stream_limit(self) -> int:
        """How many streams may be open at once: --max-streams, or half the server's threads."""
        return self.max_streams or self.grpc_threads // 2

    @model_validator(mode="after")
    def _streams_leave_threads_for_unary_calls(self) -> Settings:
        if self.max_streams >= self.grpc_threads:
            raise ValueError(
                f"max_streams ({self.max_streams}) must be below grpc_threads ({self.grpc_threads}): each open"
                " stream holds a server thread, and unary calls and health checks need some left"
            )
        return self

    # The control plane (turnout.v1.Rollouts, and model loads and unloads): its own listener, and who may use it.
    control_address: str = Field(
        "127.0.0.1:8003",
        description="HOST:PORT of the control plane's listener (turnout.v1.Rollouts); port 0 picks a free one",
    )
    control_tokens_file: Path | None = Field(
        None,
        description="file of 'name token' lines; a control call needs 'authorization: Bearer <token>' of one,"
        " and the name is the audit history's actor; re-read on SIGHUP",
    )
    control_client_ca_file: Path | None = Field(
        None,
        description="CA of the client certificates that may use the control plane (needs TLS); the"
        " certificate's subject is the actor",
    )
    # Triton's --grpc-restricted-protocol=model-repository:KEY=VALUE, translated to this.
    model_repository_header: str | None = Field(
        None,
        description="KEY=VALUE: RepositoryModelLoad/Unload are also allowed with this header, as Triton's"
        " restricted model-repository protocol",
    )

    @property
    def control_is_loopback(self) -> bool:
        return is_loopback_address(self.control_address)

    @property
    def control_open_locally(self) -> bool:
        """Nothing says who may change routing, and the control address is loopback: every local caller may."""
        return self.control_tokens_file is None and self.control_client_ca_file is None and self.control_is_loopback

    @property
    def tls_configured(self) -> bool:
        """Whether the listeners serve TLS (the inference port and the control address, one certificate)."""
        return self.tls_cert_file is not None

    @model_validator(mode="after")
    def _control_plane_is_guarded(self) -> Settings:
        split_address(self.control_address)
        if self.control_client_ca_file is not None and not self.tls_configured:
            raise ValueError("--control-client-ca-file needs TLS: client certificates are only seen over TLS")
        if self.model_repository_header is not None and "=" not in self.model_repository_header:
            raise ValueError(f"--model-repository-header {self.model_repository_header!r} is not KEY=VALUE")
        guarded = self.control_tokens_file is not None or self.control_client_ca_file is not None
        if not guarded and not self.control_is_loopback:
            raise ValueError(
                f"the control address {self.control_address} is not loopback, and nothing says who may change"
                " routing there: give --control-tokens-file or --control-client-ca-file, or keep the control"
                " address on 127.0.0.1"
            )
        return self

    @property
    def forks_workers(self) -> bool:
        """Whether this process forks its own workers from a zygote: not in-process, not spawned, and
        not a gateway whose workers a supervisor's broker starts."""
        return self.worker_mode == "process" and self.worker_start == "fork" and self.worker_broker is None

    @model_validator(mode="after")
    def _tls_files_come_together(self) -> Settings:
        """A certificate needs its key and the other way round; client certificates need a server one."""
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            flags = ("--tls-cert-file", "--tls-key-file")
            given, missing = flags if self.tls_key_file is None else flags[::-1]
            raise ValueError(f"{given} needs {missing} too: TLS takes a certificate and its private key")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("--tls-client-ca-file needs --tls-cert-file and --tls-key-file: mutual TLS is TLS first")
        return self

    @field_validator("gateway_cpus", mode="before")
    @classmethod
    def _cpu_list(cls, value: Any) -> Any:
        return parse_cpu_list(value) if isinstance(value, str) else value

    # Capture from several hosts into one --capture-dir (a network filesystem): the host's name is in
    # every capture file's name and every record. Resolved here, once, so a supervisor's processes
    # inherit the same name.
    capture_host: str = Field(
        "",
        description="this host's name in capture file names and in each captured record's host column, for"
        " hosts sharing one --capture-dir: letters, digits, '.', '_' and '-'; empty: the machine's host name",
    )

    @field_validator("capture_host")
    @classmethod
    def _capture_host_name(cls, value: str) -> str:
        return capture_host_name(value)


# A capture file's name begins with the host's: one path component, never hidden from readers (a
# leading '.' or '_' is how pyarrow skips files), short enough to leave room for the rest.
_CAPTURE_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def capture_host_name(given: str) -> str:
    """``--capture-host`` checked, or when empty the machine's host name made fit to be one."""
    if given:
        if not _CAPTURE_HOST.fullmatch(given):
            raise ValueError(
                f"--capture-host {given!r} is not a host name for capture files: 1 to 128 letters, digits,"
                " '.', '_' or '-', beginning with a letter or digit"
            )
        return given
    fitted = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).lstrip("._-")[:128]
    return fitted or "localhost"


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8003`` for IPv6) -> (host, port); raises ValueError when it is not one."""
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host, int(port)


def is_loopback_address(address: str) -> bool:
    """Whether ``host:port`` listens on loopback only (``localhost``, 127.0.0.0/8, ``[::1]``); a name
    other than localhost may resolve anywhere, so it is not."""
    host = split_address(address)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """``"0,2,4-6"`` -> (0, 2, 4, 5, 6), the notation of taskset and cpusets."""
    cpus: list[int] = []
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{part!r} is not a CPU number or range like 4-7")
        low, high = int(first), int(last or first)
        if high < low:
            raise ValueError(f"the CPU range {part!r} runs backwards")
        cpus.extend(range(low, high + 1))
    return tuple(dict.fromkeys(cpus))


def load_settings(config_file: Path | None, flags: dict[str, Any]) -> Settings:
    """Merge the config file, the environment and the flags that were given (not None)."""
    from_file: dict[str, Any] = {}
    if config_file is not None:
        loaded = yaml.safe_load(config_file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_file}: expected a mapping of settings")
        from_file = loaded
    from_env = EnvSettingsSource(Settings)()
    given = {key: value for key, value in flags.items() if value is not None}
    return Settings(**{**from_file, **from_env, **given})
