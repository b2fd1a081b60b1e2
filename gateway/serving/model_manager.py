"""Keeps the served versions in step with the repository (desired-state reconciliation).

Each pass reads a model's directory, works out which versions its version policy wants, loads the
missing ones and only then unloads versions no longer wanted: a new version never interrupts the
one serving, and the last READY version is never unloaded to make room for one that failed. Passes
run on a timer (polling) and on demand (RepositoryModelLoad); the request path never waits on them.
Within a pass different models are reconciled side by side, up to ``load_threads`` at once (Triton's
``--model-load-thread-count``); one model's versions still load one after another, in order.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from gateway.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable, echoed
from gateway.registry.model_settings import ModelSettings
from gateway.registry.repository import ModelEntry, ModelRepository, valid_model_name, version_number
from gateway.serving.model_version import BatchFinished, HostFactory, ModelVersion, VersionState
from runtimes.contract import RuntimeOptions

log = logging.getLogger(__name__)

_REMOVED = "model directory was removed"


@dataclass(slots=True)
class ModelRecord:
    """Everything known about one model name; ``default`` is its highest READY version."""

    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    default: ModelVersion | None = None
    settings: ModelSettings | None = None
    problem: str = ""
    explicitly_unloaded: bool = False

    def refresh_default(self) -> None:
        ready = [v for v in self.versions.values() if v.state is VersionState.READY]
        self.default = max(ready, key=lambda v: v.version) if ready else None


class ModelManager:
    """Owns every ModelVersion; the one place that loads and unloads them."""

    def __init__(
        self,
        repository: ModelRepository,
        make_host: HostFactory,
        runtime_options: RuntimeOptions,
        *,
        poll_interval_s: float,
        drain_timeout_s: float,
        on_batch_finished: BatchFinished | None = None,
        load_threads: int = 1,
    ) -> None:
        """``on_batch_finished``: handed to every version's dispatchers (the request observers' seam).
        ``load_threads``: how many models a repository pass reconciles (loads) at the same time."""
        self._repository = repository
        self._on_batch_finished = on_batch_finished
        self._make_host = make_host
        self._runtime_options = runtime_options
        self._poll_interval_s = poll_interval_s
        self._drain_timeout_s = drain_timeout_s
        self._models: dict[str, ModelRecord] = {}
        # Versions routing needs loaded whatever the version policy says (named by a policy, or
        # inside the rollback window), per model.
        self._kept: dict[str, frozenset[int]] = {}
        self._reconcile_lock = threading.RLock()
        self._stopping = threading.Event()
        self._poller: threading.Thread | None = None
        self.initial_load_done = False
        # Threads start only when a pass has two models to reconcile at once; with 1, passes run inline.
        self._loaders = (
            ThreadPoolExecutor(max_workers=load_threads, thread_name_prefix="model-load") if load_threads > 1 else None
        )
        # Loads started and loads that ended other than READY, per model, for the metrics exporter.
        self.loads: dict[str, int] = {}
        self.load_failures: dict[str, int] = {}

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Load everything the repository holds, then poll it for changes (if polling is on)."""
        started = time.monotonic()
        self.reconcile_all()
        self.initial_load_done = True
        self._log_load_summary(time.monotonic() - started)
        if self._poll_interval_s > 0:
            self._poller = threading.Thread(target=self._poll, name="repository-poll", daemon=True)
            self._poller.start()

    def _log_load_summary(self, seconds: float) -> None:
        """``loaded 3 of 4 models in 1.20 s; failed: broken (reason)``, once the first pass is over."""
        records = self.records()
        failed = [record for record in records if record.default is None]
        summary = f"loaded {len(records) - len(failed)} of {len(records)} models in {seconds:.2f} s"
        if failed:
            log.warning("%s; failed: %s", summary, "; ".join(f"{r.name} ({_why_not_ready(r)})" for r in failed))
        else:
            log.info("%s", summary)

    def _poll(self) -> None:
        while not self._stopping.wait(self._poll_interval_s):
            try:
                self.reconcile_all()
            except Exception:  # a bad pass must not end polling
                log.exception("repository poll failed")

    def close(self) -> None:
        """Stop polling and unload every version (each drains first)."""
        self._stopping.set()
        if self._poller is not None:
            self._poller.join()
        with self._reconcile_lock:
            versions: list[ModelVersion] = []
            for record in self._models.values():
                record.default = None
                versions.extend(record.versions.values())
            # All at once: a stop waits for the slowest drain, not for the sum of them.
            unloading = [
                threading.Thread(target=v.unload, args=(self._drain_timeout_s,), name=f"unload-{v.label}")
                for v in versions
            ]
            for thread in unloading:
                thread.start()
            for thread in unloading:
                thread.join()
        if self._loaders is not None:
            self._loaders.shutdown(wait=True)

    # --- reconciliation --------------------------------------------------------------------

    def reconcile_all(self) -> None:
        """One pass over every model: different models side by side (up to ``load_threads``)."""
        with self._reconcile_lock:
            names = sorted(set(self._repository.model_names()) | set(self._models))
            loaders = self._loaders
            if loaders is None or len(names) < 2:
                for name in names:
                    self._reconcile(name)
                return
            # Each task touches its own model's record only; the pass holds the lock for all of them.
            tasks: list[Future[None]] = [loaders.submit(self._reconcile, name) for name in names]
            problems = [error for error in (task.exception() for task in tasks) if error is not None]
            if problems:  # every model was tried; the pass fails as before, with the first error
                raise problems[0]

    def _reconcile(self, name: str) -> None:
        entry = self._repository.scan_model(name)
        record = self._models.get(name)
        if record is None:
            if entry is None:
                return
            record = ModelRecord(name)
        if entry is None:
            record.problem = _REMOVED
            self._unload(record, set(record.versions))
        elif not record.explicitly_unloaded:
            self._apply(record, entry)
        self._models[name] = record

    def _apply(self, record: ModelRecord, entry: ModelEntry) -> None:
        if entry.settings is None:
            # Keep serving what is loaded; new versions wait for a valid model.yaml.
            problem = entry.settings_error or "invalid settings"
            if problem != record.problem and record.versions:  # said once, not at every scan
                log.error("model %s: %s; its loaded versions serve on with the settings they had", record.name, problem)
            record.problem = problem
            return
        record.settings, record.problem = entry.settings, ""
        present = {number for number, item in entry.versions.items() if item.artifact is not None}
        wanted = entry.settings.version_policy.select(present) | (self._kept.get(record.name, frozenset()) & present)
        for number in sorted(wanted):
            current = record.versions.get(number)
            item = entry.versions[number]
            retry = current is not None and current.state is VersionState.UNAVAILABLE and (
                current.reason == "unloaded" or current.entry.fingerprint != item.fingerprint
            )
            if current is None or retry:
                version = ModelVersion(
                    record.name, item, entry.settings, self._on_batch_finished, on_availability=record.refresh_default
                )
                record.versions[number] = version
                version.load(self._make_host, self._runtime_options)
                self.loads[record.name] = self.loads.get(record.name, 0) + 1
                if version.state is not VersionState.READY:
                    self.load_failures[record.name] = self.load_failures.get(record.name, 0) + 1
                record.refresh_default()
        for number, item in entry.versions.items():
            if item.artifact is None and number not in record.versions:
                placeholder = ModelVersion(record.name, item, entry.settings)
                placeholder.state = VersionState.UNAVAILABLE
                placeholder.reason = f"{item.directory.name}/ holds no model file"
                record.versions[number] = placeholder
        ready_wanted = any(record.versions[n].state is VersionState.READY for n in wanted if n in record.versions)
        unwanted = {n for n in record.versions if n not in wanted}
        gone = {n for n in unwanted if n not in entry.versions}
        # Availability first: unload unwanted versions only once a wanted one serves, unless deleted.
        self._unload(record, unwanted if ready_wanted else gone)

    def _unload(self, record: ModelRecord, numbers: set[int]) -> None:
        leaving = [record.versions[n] for n in numbers if record.versions[n].state is VersionState.READY]
        # Take them out of routing first, so requests without a version move on at once; the
        # unload itself then waits for the requests already inside.
        remaining = [v for v in record.versions.values() if v not in leaving and v.state is VersionState.READY]
        record.default = max(remaining, key=lambda v: v.version) if remaining else None
        for version in leaving:
            threading.Thread(
                target=version.unload, args=(self._drain_timeout_s,), name=f"unload-{version.label}", daemon=True
            ).start()

    # --- explicit control (RepositoryModelLoad / Unload) ------------------------------------

    def load_model(self, name: str) -> None:
        """Load (or reload) a model now; raises when it has no version that could be loaded."""
        if not valid_model_name(name) or self._repository.scan_model(name) is None:
            raise NotFound(f"model {echoed(name)} is not in the repository")
        with self._reconcile_lock:
            record = self._models.get(name)
            if record is not None:
                record.explicitly_unloaded = False
            self._reconcile(name)
            record = self._models[name]
            if record.problem:
                raise FailedPrecondition(f"model {echoed(name)} cannot be loaded: {record.problem}")
            if record.default is None:
                reasons = "; ".join(f"version {n}: {v.reason}" for n, v in sorted(record.versions.items()))
                raise FailedPrecondition(f"model {echoed(name)} has no version that loads ({reasons or 'no versions'})")

    def repository_versions(self, name: str) -> set[int]:
        """Version numbers the repository holds for a model right now, loaded or not."""
        entry = self._repository.scan_model(name)
        return set(entry.versions) if entry is not None else set()

    def keep_loaded(self, name: str, versions: frozenset[int]) -> None:
        """Keep these versions of a model loaded (routing needs them) beyond what its version policy wants."""
        self._kept[name] = versions

    def ready_versions(self, name: str) -> frozenset[int]:
        """The versions of a model that are READY right now; takes no lock and never reads the repository."""
        record = self._models.get(name)
        if record is None:
            return frozenset()
        # tuple() copies the items in one step under the GIL, so a concurrent reconcile cannot
        # change the dict under the loop.
        return frozenset(n for n, v in tuple(record.versions.items()) if v.state is VersionState.READY)

    def ensure_ready(self, name: str, version: int) -> None:
        """Load one version now if it is in the repository but not loaded; raise unless it ends READY.

        NotFound when the repository has no such version, FailedPrecondition when it fails to load.
        """
        with self._reconcile_lock:
            record = self._models.get(name)
            found = record.versions.get(version) if record is not None else None
            if found is not None and found.state is VersionState.READY:
                return
            if record is not None and record.explicitly_unloaded:
                raise FailedPrecondition(f"model {echoed(name)} was unloaded; load it before routing to it")
            entry = self._repository.scan_model(name)
            if entry is None or version not in entry.versions:
                known = sorted(entry.versions) if entry is not None else []
                raise NotFound(f"model {echoed(name)} has no version {version} in the repository (present: {known})")
            self._kept[name] = self._kept.get(name, frozenset()) | {version}
            self._reconcile(name)
            found = self._models[name].versions.get(version)
            if found is None or found.state is not VersionState.READY:
                why = (found.reason if found is not None else "") or self._models[name].problem or "unknown reason"
                raise FailedPrecondition(f"version {version} of model {echoed(name)} cannot serve: {why}")

    def unload_model(self, name: str) -> None:
        """Unload every version of a model and keep it unloaded until load_model."""
        with self._reconcile_lock:
            record = self._models.get(name)
            if record is None:
                raise NotFound(f"model {echoed(name)} is not loaded")
            record.explicitly_unloaded = True
            leaving = [v for v in record.versions.values() if v.state is VersionState.READY]
            record.default = None
        for version in leaving:
            version.unload(self._drain_timeout_s)

    def every_model_ready(self) -> bool:
        """Whether every model in the repository has a READY version (Triton's strict readiness).

        A model unloaded on request, or whose directory was removed, is not expected to serve.
        """
        return all(
            record.default is not None
            for record in list(self._models.values())
            if not record.explicitly_unloaded and record.problem != _REMOVED
        )

    # --- queries (request path) ------------------------------------------------------------

    def acquire(self, name: str, version: str) -> ModelVersion:
        """The version that serves this request, counted in flight; the caller must release it."""
        for _ in range(3):
            chosen = self._resolve(name, version)
            if chosen.acquire():
                return chosen
        raise Unavailable(f"{chosen.label} is {chosen.state.value}")

    def _resolve(self, name: str, version: str) -> ModelVersion:
        record = self._models.get(name)
        if record is not None and not record.versions and record.problem:
            raise Unavailable(f"model {echoed(name)} is not available: {record.problem}")
        if record is None or not record.versions:
            raise NotFound(f"unknown model {echoed(name)}")
        if not version:
            chosen = record.default
            if chosen is None:
                raise Unavailable(f"model {echoed(name)} has no READY version ({self._summary(record)})")
            return chosen
        number = version_number(version)
        if number is None:
            raise InvalidArgument(f"model version {echoed(version)} is not a positive integer")
        found = record.versions.get(number)
        if found is None:
            raise NotFound(f"model {echoed(name)} has no version {number} (known: {sorted(record.versions)})")
        if found.state is not VersionState.READY:
            detail = f": {found.reason}" if found.reason else ""
            raise Unavailable(f"{found.label} is not ready, it is {found.state.value}{detail}")
        return found

    @staticmethod
    def _summary(record: ModelRecord) -> str:
        parts = [
            f"{n} {v.state.value}" + (f": {v.reason}" if v.reason else "") for n, v in sorted(record.versions.items())
        ]
        return ", ".join(parts) or record.problem or "no versions"

    def version(self, name: str, version: str) -> ModelVersion:
        """Look a version up for metadata: NOT_FOUND when unknown, any state otherwise."""
        record = self._models.get(name)
        if record is None or not record.versions:
            raise NotFound(f"unknown model {echoed(name)}")
        if not version:
            if record.default is not None:
                return record.default
            return record.versions[max(record.versions)]
        number = version_number(version)
        if number is None or number not in record.versions:
            raise NotFound(f"model {echoed(name)} has no version {echoed(version)} (known: {sorted(record.versions)})")
        return record.versions[number]

    def record(self, name: str) -> ModelRecord:
        record = self._models.get(name)
        if record is None:
            raise NotFound(f"unknown model {echoed(name)}")
        return record

    def versions(self) -> list[ModelVersion]:
        return [v for record in self._models.values() for _, v in sorted(record.versions.items())]

    def records(self) -> list[ModelRecord]:
        """Every model known, by name."""
        return [record for _, record in sorted(self._models.items())]


def _why_not_ready(record: ModelRecord) -> str:
    """Why a model has no READY version, in a few words for the start-up summary."""
    if record.problem:
        return record.problem
    reasons = [f"version {n}: {v.reason}" for n, v in sorted(record.versions.items()) if v.reason]
    return "; ".join(reasons) or "no versions"
