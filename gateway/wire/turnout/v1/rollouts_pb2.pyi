from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Canary(_message.Message):
    __slots__ = ("version", "weight_bp")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BP_FIELD_NUMBER: _ClassVar[int]
    version: int
    weight_bp: int
    def __init__(self, version: _Optional[int] = ..., weight_bp: _Optional[int] = ...) -> None: ...

class Shadow(_message.Message):
    __slots__ = ("version", "fraction")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    version: int
    fraction: float
    def __init__(self, version: _Optional[int] = ..., fraction: _Optional[float] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("stable", "canary", "shadows", "sticky_key")
    STABLE_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    SHADOWS_FIELD_NUMBER: _ClassVar[int]
    STICKY_KEY_FIELD_NUMBER: _ClassVar[int]
    stable: int
    canary: Canary
    shadows: _containers.RepeatedCompositeFieldContainer[Shadow]
    sticky_key: str
    def __init__(self, stable: _Optional[int] = ..., canary: _Optional[_Union[Canary, _Mapping]] = ..., shadows: _Optional[_Iterable[_Union[Shadow, _Mapping]]] = ..., sticky_key: _Optional[str] = ...) -> None: ...

class PolicyState(_message.Message):
    __slots__ = ("model", "policy", "generation", "explicit", "applied_by", "note")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    EXPLICIT_FIELD_NUMBER: _ClassVar[int]
    APPLIED_BY_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    model: str
    policy: Policy
    generation: int
    explicit: bool
    applied_by: _containers.RepeatedScalarFieldContainer[str]
    note: str
    def __init__(self, model: _Optional[str] = ..., policy: _Optional[_Union[Policy, _Mapping]] = ..., generation: _Optional[int] = ..., explicit: _Optional[bool] = ..., applied_by: _Optional[_Iterable[str]] = ..., note: _Optional[str] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class SetPolicyRequest(_message.Message):
    __slots__ = ("model", "policy", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    policy: Policy
    reason: str
    def __init__(self, model: _Optional[str] = ..., policy: _Optional[_Union[Policy, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class SetCanaryRequest(_message.Message):
    __slots__ = ("model", "version", "weight_percent", "sticky_key", "reason", "clear")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_PERCENT_FIELD_NUMBER: _ClassVar[int]
    STICKY_KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CLEAR_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    weight_percent: float
    sticky_key: str
    reason: str
    clear: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., weight_percent: _Optional[float] = ..., sticky_key: _Optional[str] = ..., reason: _Optional[str] = ..., clear: _Optional[bool] = ...) -> None: ...

class SetShadowRequest(_message.Message):
    __slots__ = ("model", "version", "fraction", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    fraction: float
    reason: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., fraction: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("model", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("model", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("model", "limit")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    model: str
    limit: int
    def __init__(self, model: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class PolicyChange(_message.Message):
    __slots__ = ("generation", "at_unix_ms", "actor", "action", "reason", "before", "after")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    generation: int
    at_unix_ms: int
    actor: str
    action: str
    reason: str
    before: Policy
    after: Policy
    def __init__(self, generation: _Optional[int] = ..., at_unix_ms: _Optional[int] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., reason: _Optional[str] = ..., before: _Optional[_Union[Policy, _Mapping]] = ..., after: _Optional[_Union[Policy, _Mapping]] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("model", "changes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    model: str
    changes: _containers.RepeatedCompositeFieldContainer[PolicyChange]
    def __init__(self, model: _Optional[str] = ..., changes: _Optional[_Iterable[_Union[PolicyChange, _Mapping]]] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class VersionInfo(_message.Message):
    __slots__ = ("version", "state", "reason", "artifact_sha256", "role")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: str
    reason: str
    artifact_sha256: str
    role: str
    def __init__(self, version: _Optional[int] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., artifact_sha256: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("model", "versions", "generation")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    model: str
    versions: _containers.RepeatedCompositeFieldContainer[VersionInfo]
    generation: int
    def __init__(self, model: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[VersionInfo, _Mapping]]] = ..., generation: _Optional[int] = ...) -> None: ...

class ShadowComparisonRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class OutputDivergence(_message.Message):
    __slots__ = ("output", "max_abs_diff", "mean_max_abs_diff", "equal_elements", "elements")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    MEAN_MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    EQUAL_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    output: str
    max_abs_diff: float
    mean_max_abs_diff: float
    equal_elements: int
    elements: int
    def __init__(self, output: _Optional[str] = ..., max_abs_diff: _Optional[float] = ..., mean_max_abs_diff: _Optional[float] = ..., equal_elements: _Optional[int] = ..., elements: _Optional[int] = ...) -> None: ...

class ShadowFigures(_message.Message):
    __slots__ = ("primary_version", "shadow_version", "mirrored", "compared", "failed", "dropped", "top1_agreed", "top1_rows", "outputs", "mean_shadow_latency_ms", "paused")
    PRIMARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    MIRRORED_FIELD_NUMBER: _ClassVar[int]
    COMPARED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    TOP1_AGREED_FIELD_NUMBER: _ClassVar[int]
    TOP1_ROWS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    MEAN_SHADOW_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    primary_version: int
    shadow_version: int
    mirrored: int
    compared: int
    failed: int
    dropped: int
    top1_agreed: int
    top1_rows: int
    outputs: _containers.RepeatedCompositeFieldContainer[OutputDivergence]
    mean_shadow_latency_ms: float
    paused: int
    def __init__(self, primary_version: _Optional[int] = ..., shadow_version: _Optional[int] = ..., mirrored: _Optional[int] = ..., compared: _Optional[int] = ..., failed: _Optional[int] = ..., dropped: _Optional[int] = ..., top1_agreed: _Optional[int] = ..., top1_rows: _Optional[int] = ..., outputs: _Optional[_Iterable[_Union[OutputDivergence, _Mapping]]] = ..., mean_shadow_latency_ms: _Optional[float] = ..., paused: _Optional[int] = ...) -> None: ...

class ShadowComparisonResponse(_message.Message):
    __slots__ = ("model", "figures")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FIGURES_FIELD_NUMBER: _ClassVar[int]
    model: str
    figures: _containers.RepeatedCompositeFieldContainer[ShadowFigures]
    def __init__(self, model: _Optional[str] = ..., figures: _Optional[_Iterable[_Union[ShadowFigures, _Mapping]]] = ...) -> None: ...

class TrafficRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ArmTraffic(_message.Message):
    __slots__ = ("version", "arm", "requests", "errors", "requests_per_s", "error_rate", "p50_ms", "p99_ms")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_S_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    version: int
    arm: str
    requests: int
    errors: int
    requests_per_s: float
    error_rate: float
    p50_ms: float
    p99_ms: float
    def __init__(self, version: _Optional[int] = ..., arm: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., requests_per_s: _Optional[float] = ..., error_rate: _Optional[float] = ..., p50_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ...) -> None: ...

class TrafficResponse(_message.Message):
    __slots__ = ("model", "window_s", "processes", "arms", "kept")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    model: str
    window_s: int
    processes: int
    arms: _containers.RepeatedCompositeFieldContainer[ArmTraffic]
    kept: bool
    def __init__(self, model: _Optional[str] = ..., window_s: _Optional[int] = ..., processes: _Optional[int] = ..., arms: _Optional[_Iterable[_Union[ArmTraffic, _Mapping]]] = ..., kept: _Optional[bool] = ...) -> None: ...

class FleetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GatewayProcess(_message.Message):
    __slots__ = ("host", "process_id", "pid", "applied_generation", "last_heartbeat_unix_ms", "live")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PROCESS_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    APPLIED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    host: str
    process_id: str
    pid: int
    applied_generation: int
    last_heartbeat_unix_ms: int
    live: bool
    def __init__(self, host: _Optional[str] = ..., process_id: _Optional[str] = ..., pid: _Optional[int] = ..., applied_generation: _Optional[int] = ..., last_heartbeat_unix_ms: _Optional[int] = ..., live: _Optional[bool] = ...) -> None: ...

class FleetResponse(_message.Message):
    __slots__ = ("generation", "processes", "liveness_s")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    LIVENESS_S_FIELD_NUMBER: _ClassVar[int]
    generation: int
    processes: _containers.RepeatedCompositeFieldContainer[GatewayProcess]
    liveness_s: float
    def __init__(self, generation: _Optional[int] = ..., processes: _Optional[_Iterable[_Union[GatewayProcess, _Mapping]]] = ..., liveness_s: _Optional[float] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ("model", "version", "steps", "step_s", "sticky_key", "max_error_increase", "max_latency_ratio", "max_divergence", "alpha", "min_requests", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_S_FIELD_NUMBER: _ClassVar[int]
    STICKY_KEY_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_INCREASE_FIELD_NUMBER: _ClassVar[int]
    MAX_LATENCY_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_DIVERGENCE_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    steps: _containers.RepeatedScalarFieldContainer[float]
    step_s: float
    sticky_key: str
    max_error_increase: float
    max_latency_ratio: float
    max_divergence: float
    alpha: float
    min_requests: int
    reason: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., steps: _Optional[_Iterable[float]] = ..., step_s: _Optional[float] = ..., sticky_key: _Optional[str] = ..., max_error_increase: _Optional[float] = ..., max_latency_ratio: _Optional[float] = ..., max_divergence: _Optional[float] = ..., alpha: _Optional[float] = ..., min_requests: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ChangeRolloutRequest(_message.Message):
    __slots__ = ("model", "action", "reason")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[ChangeRolloutRequest.Action]
        PAUSE: _ClassVar[ChangeRolloutRequest.Action]
        RESUME: _ClassVar[ChangeRolloutRequest.Action]
        ABORT: _ClassVar[ChangeRolloutRequest.Action]
    ACTION_UNSPECIFIED: ChangeRolloutRequest.Action
    PAUSE: ChangeRolloutRequest.Action
    RESUME: ChangeRolloutRequest.Action
    ABORT: ChangeRolloutRequest.Action
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    action: ChangeRolloutRequest.Action
    reason: str
    def __init__(self, model: _Optional[str] = ..., action: _Optional[_Union[ChangeRolloutRequest.Action, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class GetRolloutRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class RolloutState(_message.Message):
    __slots__ = ("model", "version", "stable", "phase", "steps", "step_index", "weight_percent", "step_s", "started_at_unix_s", "step_started_at_unix_s", "sticky_key", "reason", "actor", "message", "evidence_json", "alpha", "max_error_increase", "max_latency_ratio", "max_divergence", "min_requests")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_PERCENT_FIELD_NUMBER: _ClassVar[int]
    STEP_S_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    STEP_STARTED_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    STICKY_KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_JSON_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_INCREASE_FIELD_NUMBER: _ClassVar[int]
    MAX_LATENCY_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_DIVERGENCE_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    stable: int
    phase: str
    steps: _containers.RepeatedScalarFieldContainer[float]
    step_index: int
    weight_percent: float
    step_s: float
    started_at_unix_s: float
    step_started_at_unix_s: float
    sticky_key: str
    reason: str
    actor: str
    message: str
    evidence_json: str
    alpha: float
    max_error_increase: float
    max_latency_ratio: float
    max_divergence: float
    min_requests: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., stable: _Optional[int] = ..., phase: _Optional[str] = ..., steps: _Optional[_Iterable[float]] = ..., step_index: _Optional[int] = ..., weight_percent: _Optional[float] = ..., step_s: _Optional[float] = ..., started_at_unix_s: _Optional[float] = ..., step_started_at_unix_s: _Optional[float] = ..., sticky_key: _Optional[str] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ..., message: _Optional[str] = ..., evidence_json: _Optional[str] = ..., alpha: _Optional[float] = ..., max_error_increase: _Optional[float] = ..., max_latency_ratio: _Optional[float] = ..., max_divergence: _Optional[float] = ..., min_requests: _Optional[int] = ...) -> None: ...
