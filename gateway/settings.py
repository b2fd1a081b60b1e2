"""Gateway settings, parsed once at start-up and handed down.

Sources, highest first: command-line flags, ``TURNOUT_*`` environment variables, an optional YAML
config file (``--config``), then the defaults below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

# Triton's server accepts messages up to INT32_MAX; 1 GiB is generous and keeps one request from
# pinning unbounded memory. Operators can raise or lower it.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 30


class Settings(BaseSettings):
    """Everything ``turnout serve`` can be told."""

    model_config = SettingsConfigDict(env_prefix="TURNOUT_", extra="forbid", frozen=True)

    repository: Path = Path("models")
    host: str = "0.0.0.0"
    port: int = Field(8001, ge=0, le=65535)  # Triton's gRPC port, so Turnout is a drop-in
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, ge=1024, le=(1 << 31) - 1)
    grpc_threads: int = Field(128, ge=1, le=4096)
    worker_mode: Literal["process", "inprocess"] = "process"
    # fork: workers are forked from a zygote process (quick to start, cheaper round trips);
    # spawn: each worker is a new interpreter, for platforms or libraries that dislike fork.
    worker_start: Literal["fork", "spawn"] = "fork"
    intra_op_threads: int = Field(1, ge=0)
    inter_op_threads: int = Field(1, ge=0)
    poll_interval_s: float = Field(2.0, ge=0)  # 0 turns polling off
    drain_timeout_s: float = Field(30.0, ge=0)
    grace_period_s: float = Field(10.0, ge=0)
    keepalive_time_s: float = Field(60.0, gt=0)
    keepalive_timeout_s: float = Field(20.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Routing state (policies, history) shared by every gateway process on this host.
    state_dir: Path = Path("state")
    processes: int = Field(1, ge=1, le=256)
    # Set by the supervisor for the gateway processes it starts; not for people.
    worker_broker: Path | None = None
    reuse_port: bool = False
    policy_poll_interval_s: float = Field(0.02, gt=0)  # how soon a change made elsewhere is seen here
    apply_timeout_s: float = Field(10.0, gt=0)  # a policy change waits this long for every process
    rollback_window_s: float = Field(600.0, ge=0)  # an old stable version stays loaded this long
    shadow_queue_size: int = Field(128, ge=1)  # copies waiting per shadow version; more are dropped
    shadow_timeout_s: float = Field(5.0, gt=0)
    # CPUs the gateway's own threads run on ("0", "0,2", "4-7"); workers stay free. With
    # --processes N, process i gets the i-th listed CPU alone. Empty: wherever the kernel likes.
    gateway_cpus: Annotated[tuple[int, ...], NoDecode] = ()  # NoDecode: TURNOUT_GATEWAY_CPUS=0-3 is not JSON

    @property
    def forks_workers(self) -> bool:
        """Whether this process forks its own workers from a zygote: not in-process, not spawned, and
        not a gateway whose workers a supervisor's broker starts."""
        return self.worker_mode == "process" and self.worker_start == "fork" and self.worker_broker is None

    @field_validator("gateway_cpus", mode="before")
    @classmethod
    def _cpu_list(cls, value: Any) -> Any:
        return parse_cpu_list(value) if isinstance(value, str) else value


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
