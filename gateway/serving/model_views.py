"""Frozen views of the served models, for the edge: metadata, configuration, statistics, the index.

The edge answers ModelMetadata, ModelConfig, ModelStatistics, ModelReady and RepositoryIndex from
these alone; it never holds a :class:`ModelVersion`, a record of the model manager or a lock. Each
view is a snapshot taken when it is asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from gateway.errors import NotFound
from gateway.serving.model_manager import ModelManager
from gateway.serving.model_version import ModelVersion, VersionState
from gateway.serving.statistics import StatisticsSnapshot
from runtimes.contract import TensorSpec


@dataclass(frozen=True, slots=True)
class ArmView:
    """One arm's last minute as ``turnout status`` shows it (kept by :mod:`gateway.telemetry.recent_traffic`)."""

    version: int
    arm: str
    requests: int
    errors: int
    requests_per_s: float
    error_rate: float  # errors / requests
    p50_s: float | None  # None with no requests
    p99_s: float | None


@dataclass(frozen=True, slots=True)
class TrafficView:
    model: str
    window_s: int
    processes: int  # gateway processes whose figures are summed
    arms: tuple[ArmView, ...]
    kept: bool = True  # False with --metrics-port 0: no per-request telemetry is kept at all


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One row of the repository index: a model's version and its state (version "" when none loaded)."""

    name: str
    version: str
    state: str
    reason: str


@dataclass(frozen=True, slots=True)
class ModelMetadataView:
    name: str
    ready_versions: tuple[str, ...]
    platform: str  # "" until the version has loaded
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True, slots=True)
class BatchingView:
    max_queue_delay_us: int
    max_queue_size: int
    queue_timeout_us: int  # 0: none
    preferred_batch_sizes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class VersionPolicyView:
    kind: Literal["latest", "all", "specific"]
    latest_count: int
    specific: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelConfigView:
    """A version's configuration as Triton's ModelConfig shows it; tensor dims exclude the batch axis."""

    name: str
    state: str
    sha256: str
    artifact_file: str  # "" when the version directory has no model file
    version_policy: VersionPolicyView
    instance_count: int
    loaded: bool  # False: the fields below are unknown (not loaded, or failed to)
    platform: str = ""
    runtime: str = ""
    max_batch_size: int = 0
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    batching: BatchingView | None = None  # None: the model has no batch axis
    # Tensors the model sees in another shape than their dims (config.pbtxt's reshape), by name.
    reshapes: tuple[tuple[str, tuple[int, ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class StatisticsView:
    model: str
    version: str
    snapshot: StatisticsSnapshot


class ModelViews:
    """The read side of the served models, as frozen views."""

    def __init__(
        self, manager: ModelManager, process_wide: Callable[[list[StatisticsView]], list[StatisticsView]] | None = None
    ) -> None:
        """``process_wide``: adds the other gateway processes' counters to statistics (several processes)."""
        self._manager = manager
        self._process_wide = process_wide

    def is_ready(self, name: str, version: str) -> bool:
        try:
            return self._manager.version(name, version).state is VersionState.READY
        except NotFound:
            return False

    def metadata(self, name: str, version: str) -> ModelMetadataView:
        found = self._manager.version(name, version)
        record = self._manager.record(name)
        ready = tuple(str(n) for n, v in sorted(record.versions.items()) if v.state is VersionState.READY)
        plan = found.plan
        if plan is None:
            return ModelMetadataView(name, ready, "", (), ())
        signature = plan.signature
        return ModelMetadataView(name, ready, signature.platform, signature.inputs, signature.outputs)

    def config(self, name: str, version: str) -> ModelConfigView:
        return _config_of(self._manager.version(name, version))

    def statistics(self, name: str, version: str) -> list[StatisticsView]:
        """Every loaded version's figures (all models when ``name`` is empty, all versions when ``version`` is)."""
        if not name:
            versions = [v for v in self._manager.versions() if v.plan is not None]
        elif not version:
            record = self._manager.record(name)
            versions = [v for _, v in sorted(record.versions.items()) if v.plan is not None]
        else:
            versions = [self._manager.version(name, version)]
        views = [StatisticsView(v.model, str(v.version), v.statistics.snapshot()) for v in versions]
        return views if self._process_wide is None else self._process_wide(views)

    def index(self, ready_only: bool) -> list[IndexEntry]:
        entries = []
        for record in self._manager.records():
            if not record.versions and record.problem:
                # Nothing loaded (e.g. model.yaml is invalid): still list the model, with why.
                entries.append(IndexEntry(record.name, "", VersionState.UNAVAILABLE.value, record.problem))
            for number, version in sorted(record.versions.items()):
                reason = version.reason or _reason_from_problem(record.problem, version.state)
                entries.append(IndexEntry(record.name, str(number), version.state.value, reason))
        return [e for e in entries if e.state == VersionState.READY.value] if ready_only else entries


def _reason_from_problem(problem: str, state: VersionState) -> str:
    """What the model's problem (an invalid model.yaml, say) means for one of its versions."""
    if not problem:
        return ""
    if state is VersionState.READY:  # a model.yaml broken under a serving model: serve on, but say so
        return f"serving with the settings it was loaded with; the model's settings now fail: {problem}"
    return problem


def _config_of(version: ModelVersion) -> ModelConfigView:
    settings = version.settings
    policy = settings.version_policy
    policy_view = VersionPolicyView(
        policy.kind,
        policy.latest.num_versions if policy.latest else 1,
        policy.specific.versions if policy.specific else (),
    )
    artifact = version.entry.artifact
    base = ModelConfigView(
        version.model,
        version.state.value,
        version.sha256,
        artifact.name if artifact is not None else "",
        policy_view,
        settings.instance_count,
        loaded=False,
    )
    plan = version.plan
    if plan is None:
        return base
    skip = 1 if plan.max_batch_size > 0 else 0
    batching = plan.batching
    return ModelConfigView(
        base.name,
        base.state,
        base.sha256,
        base.artifact_file,
        base.version_policy,
        base.instance_count,
        loaded=True,
        platform=plan.signature.platform,
        runtime=plan.runtime,
        max_batch_size=plan.max_batch_size,
        inputs=tuple(TensorSpec(s.name, s.datatype, s.shape[skip:]) for s in plan.signature.inputs),
        outputs=tuple(TensorSpec(s.name, s.datatype, s.shape[skip:]) for s in plan.signature.outputs),
        batching=BatchingView(
            int(batching.max_queue_delay_s * 1e6),
            batching.max_queue_size,
            int((batching.queue_timeout_s or 0) * 1e6),
            tuple(sorted(batching.preferred_batch_sizes)),
        )
        if plan.max_batch_size > 0
        else None,
        reshapes=tuple(
            (item.name, item.reshape)
            for item in (*(settings.inputs or ()), *(settings.outputs or ()))
            if item.reshape is not None
        ),
    )
