"""One version of one model as it is served: its state, its hosts, its queue and its dispatchers.

States follow Triton's repository index: UNKNOWN, LOADING, READY, UNLOADING, UNAVAILABLE. A version
takes new requests only while READY; unloading first refuses new ones, then waits for the ones
in flight (reference count) before closing its queue and workers.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from gateway.errors import TurnoutError
from gateway.registry.model_settings import ModelSettings
from gateway.registry.repository import VersionEntry, sha256_of
from gateway.serving.batching import BatchingSettings, BatchQueue, Pending, split_outputs, wanted_outputs
from gateway.serving.in_flight import InFlight
from gateway.serving.reshape import Reshapes, declared_signature, reshapes_of
from gateway.serving.runtime_errors import domain_error
from gateway.serving.statistics import VersionStatistics
from runtimes.catalog import runtime_kind_for
from runtimes.contract import ModelHost, RuntimeFailure, RuntimeOptions, Signature

log = logging.getLogger(__name__)

HostFactory = Callable[[str, Path, RuntimeOptions, str], ModelHost]
# Called by a dispatcher once a batch's requests are answered (or failed): the batch, the time it
# was taken (time.monotonic()), and the seconds it spent in the runtime.
BatchFinished = Callable[[Sequence[Pending], float, float], None]
DEFAULT_MAX_BATCH_SIZE = 64


class VersionState(StrEnum):
    UNKNOWN = "UNKNOWN"
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


class ConfigMismatch(ValueError):
    """The artifact's signature contradicts what ``model.yaml`` (or ``config.pbtxt``) declares."""


def effective_max_batch_size(settings: ModelSettings, signature: Signature) -> int:
    """``max_batch_size`` as configured, or inferred from a free first dimension on every tensor."""
    batchable = all(spec.shape and spec.shape[0] == -1 for spec in (*signature.inputs, *signature.outputs))
    if settings.max_batch_size is None:
        return DEFAULT_MAX_BATCH_SIZE if batchable else 0
    if settings.max_batch_size > 0 and not batchable:
        raise ConfigMismatch(
            f"max_batch_size is {settings.max_batch_size} but not every input and output has a free first dimension"
        )
    return settings.max_batch_size


def check_declared(settings: ModelSettings, signature: Signature, max_batch_size: int) -> None:
    """Raise ConfigMismatch when declared inputs or outputs disagree with the artifact.

    A tensor declared with a reshape is compared by its reshape: that is the shape the model sees.
    """
    source = settings.source
    for kind, declared, actual in (
        ("input", settings.inputs, signature.inputs),
        ("output", settings.outputs, signature.outputs),
    ):
        if declared is None:
            continue
        by_name = {spec.name: spec for spec in actual}
        if {d.name for d in declared} != set(by_name):
            raise ConfigMismatch(
                f"{source} declares {kind}s {sorted(d.name for d in declared)} "
                f"but the artifact has {sorted(by_name)}"
            )
        for item in declared:
            spec = by_name[item.name]
            shape = spec.shape[1:] if max_batch_size > 0 else spec.shape
            dims, what = (item.dims, "") if item.reshape is None else (item.reshape, " reshape")
            fits = len(shape) == len(dims) and all(a in (-1, d) for a, d in zip(shape, dims, strict=True))
            if spec.datatype != item.datatype or not fits:
                raise ConfigMismatch(
                    f"{kind} {item.name!r}: {source} declares {item.datatype}{what} {list(dims)} "
                    f"but the artifact has {spec.datatype} {list(shape)}"
                )


@dataclass(frozen=True, slots=True)
class ServingPlan:
    """What is fixed once a version is READY: its signature (as clients see it) and batching."""

    signature: Signature
    max_batch_size: int
    batching: BatchingSettings
    runtime: str
    # Tensors whose declared dims differ from the model's shape; None for nearly every model.
    reshapes: Reshapes | None = None
    # Every output's name in the model's order, for each response that asks for all of them.
    output_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_names", tuple(spec.name for spec in self.signature.outputs))


class ModelVersion:
    """A model version's lifecycle and its request path into the batch queue."""

    def __init__(
        self,
        model: str,
        entry: VersionEntry,
        settings: ModelSettings,
        on_batch_finished: BatchFinished | None = None,
        on_availability: Callable[[], None] | None = None,
    ) -> None:
        """``on_availability``: called when the version stops or starts serving on its own, without a
        load or an unload (its workers cannot be restarted, and then can), so the default moves."""
        self.model = model
        self.version = entry.version
        self.entry = entry
        self.settings = settings
        self.state = VersionState.UNKNOWN
        self.reason = ""
        self.sha256 = ""
        self.plan: ServingPlan | None = None
        self.statistics = VersionStatistics()
        self._hosts: list[ModelHost] = []
        self._queue: BatchQueue | None = None
        self._dispatchers: list[threading.Thread] = []
        self._on_batch_finished = on_batch_finished
        self._requests = InFlight(is_open=False)  # opened once READY; unloading closes and drains it
        # acquire() counts a request in (False unless READY), release() counts it out: the gate's own
        # methods, so the request path makes no call of ours in between.
        self.acquire: Callable[[], bool] = self._requests.enter
        self.release: Callable[[], None] = self._requests.leave
        self._unload_lock = threading.Lock()
        self._on_availability = on_availability
        self._failed_hosts: dict[int, str] = {}  # host index -> why it cannot serve
        self._down_by_hosts = False  # UNAVAILABLE because every host failed, not unloaded or never loaded

    @property
    def label(self) -> str:
        return f"version {self.version} of model {self.model!r}"

    @property
    def hosts(self) -> tuple[ModelHost, ...]:
        return tuple(self._hosts)

    # --- lifecycle -------------------------------------------------------------------------

    def load(self, make_host: HostFactory, runtime_options: RuntimeOptions) -> None:
        """Start the workers and the queue; ends READY, or UNAVAILABLE with the reason."""
        self.state = VersionState.LOADING
        started = time.monotonic()
        about = self._about()
        log.info("loading %s", self.label, extra=about)
        artifact = self.entry.artifact
        try:
            if artifact is None:
                raise ConfigMismatch(f"{self.entry.directory.name}/ holds no model file")
            self.sha256 = sha256_of(artifact)
            kind = self.settings.runtime or runtime_kind_for(artifact)
            options = self._options(runtime_options)
            for index in range(self.settings.instance_count):
                self._hosts.append(make_host(kind, artifact, options, f"{self.model}/{self.version}#{index}"))
            signature = self._hosts[0].signature
            max_batch_size = effective_max_batch_size(self.settings, signature)
            check_declared(self.settings, signature, max_batch_size)
        except (RuntimeFailure, ConfigMismatch, OSError) as error:
            self._close_hosts()
            self.state, self.reason = VersionState.UNAVAILABLE, str(error)
            log.error("%s failed to load in %.2f s: %s", self.label, time.monotonic() - started, error, extra=about)
            return
        batching = self.settings.dynamic_batching
        timeout_us = batching.default_queue_timeout_microseconds
        self.plan = ServingPlan(
            declared_signature(signature, self.settings, max_batch_size),
            max_batch_size,
            BatchingSettings(
                max_batch_size,
                batching.max_queue_delay_microseconds / 1e6,
                batching.max_queue_size,
                timeout_us / 1e6 if timeout_us else None,
                frozenset(batching.preferred_batch_sizes),
            ),
            kind,
            reshapes_of(self.settings, max_batch_size),
        )
        self._queue = BatchQueue(self.label, self.plan.batching)
        for index, host in enumerate(self._hosts):
            host.watch_failure(functools.partial(self._host_failure, index))
        for index, host in enumerate(self._hosts):
            thread = threading.Thread(
                target=self._dispatch, args=(host,), name=f"batch-{self.model}-{self.version}-{index}", daemon=True
            )
            thread.start()
            self._dispatchers.append(thread)
        self.state, self.reason = VersionState.READY, ""
        self._requests.open()
        log.info("%s is READY, loaded in %.2f s (sha256 %s, max_batch_size %d)", self.label,
                 time.monotonic() - started, self.sha256[:12], max_batch_size, extra=about)  # fmt: skip

    def _host_failure(self, index: int, failure: str | None) -> None:
        """A host's worker cannot be restarted (``failure``), or serves again (None); on its thread.

        With every host failed the version is UNAVAILABLE with the reason, so routing and the default
        move off it at once, instead of requests waiting for workers that are not coming back.
        """
        with self._unload_lock:
            if failure is None:
                self._failed_hosts.pop(index, None)
            else:
                self._failed_hosts[index] = failure
            every_host_failed = len(self._failed_hosts) == len(self._hosts)
            if every_host_failed and self.state is VersionState.READY:
                self.state, self.reason = VersionState.UNAVAILABLE, failure or ""
                self._down_by_hosts = True
                log.error("%s is UNAVAILABLE: %s", self.label, self.reason)
            elif not every_host_failed and self._down_by_hosts and self.state is VersionState.UNAVAILABLE:
                self.state, self.reason = VersionState.READY, ""
                self._down_by_hosts = False
                log.warning("%s is READY again: its workers serve", self.label)
            else:
                return
        if self._on_availability is not None:
            self._on_availability()

    def _options(self, defaults: RuntimeOptions) -> RuntimeOptions:
        own = self.settings.runtime_options
        if own is None:
            return defaults
        return RuntimeOptions(own.intra_op_threads, own.inter_op_threads, defaults.extra)

    def unload(self, drain_timeout_s: float) -> None:
        """Refuse new requests, wait for those in flight, then stop the workers."""
        with self._unload_lock:
            if self.state not in (VersionState.READY, VersionState.LOADING) and not self._down_by_hosts:
                return  # never loaded, or unloaded already; one whose workers failed still has hosts to stop
            self.state = VersionState.UNLOADING
        if not self._requests.close_and_wait(drain_timeout_s):
            log.warning("%s: %d requests still in flight after %.1fs; unloading anyway",
                        self.label, self._requests.count, drain_timeout_s, extra=self._about())
        if self._queue is not None:
            self._queue.close()
        for thread in self._dispatchers:
            thread.join(timeout=drain_timeout_s)
        self._close_hosts()
        self.state, self.reason = VersionState.UNAVAILABLE, "unloaded"
        log.info("%s unloaded", self.label, extra=self._about())

    def _about(self) -> dict[str, object]:
        """The model and version as the JSON log's keys, for ``extra=``."""
        return {"model": self.model, "version": self.version}

    def _close_hosts(self) -> None:
        for host in self._hosts:
            host.close()
        self._hosts.clear()

    # --- request path ----------------------------------------------------------------------

    def submit(self, pending: Pending) -> None:
        """Queue an acquired request; raises Unavailable when the queue is full."""
        assert self._queue is not None
        self._queue.put(pending)

    def queued(self) -> int:
        return len(self._queue) if self._queue is not None else 0

    def in_flight(self) -> int:
        """Requests acquired and not yet released (queued, in a batch, or being answered)."""
        return self._requests.count

    def _dispatch(self, host: ModelHost) -> None:
        queue = self._queue
        assert queue is not None and self.plan is not None
        batched = self.plan.max_batch_size > 0
        reshapes = self.plan.reshapes
        while (batch := queue.take()) is not None:
            if batch:
                self._run_batch(host, batch, batched, reshapes)

    def _run_batch(self, host: ModelHost, batch: list[Pending], batched: bool, reshapes: Reshapes | None) -> None:
        started = time.monotonic()
        t0 = time.perf_counter_ns()
        parts = {name: [item.inputs[name] for item in batch] for name in batch[0].inputs}
        if reshapes is not None:
            parts = reshapes.model_inputs(parts)
        names = wanted_outputs(batch)
        t1 = time.perf_counter_ns()
        error: TurnoutError | None = None
        try:
            outputs = host.infer(parts, names)
            if reshapes is not None:
                outputs = reshapes.client_outputs(outputs)
            per_request = split_outputs(batch, outputs, batched)
        except RuntimeFailure as failure:
            error = domain_error(failure, self.label)
        except TurnoutError as problem:
            error = problem
        t2 = time.perf_counter_ns()
        if error is not None:
            self._fail(batch, error)
        else:
            for item, outputs_of_item in zip(batch, per_request, strict=True):
                item.dispatched_at = started
                item.resolve(outputs_of_item)
            t3 = time.perf_counter_ns()
            queue_ns = sum(int((started - item.enqueued_at) * 1e9) for item in batch)
            self.statistics.record_batch(len(batch), sum(i.rows for i in batch), queue_ns, t1 - t0, t2 - t1, t3 - t2)
        # The request observers, once every caller of the batch has its answer or error.
        if self._on_batch_finished is not None:
            try:
                self._on_batch_finished(batch, started, (t2 - t1) / 1e9)
            except Exception:  # observers must never stop a dispatcher
                log.exception("%s: the request observers failed on a batch", self.label, extra=self._about())

    @staticmethod
    def _fail(batch: list[Pending], error: TurnoutError) -> None:
        for item in batch:
            item.resolve(None, error)
