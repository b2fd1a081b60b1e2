"""Keeps this process's routing table in step with the state store, and says which generation it serves.

Every gateway process runs one. It polls the store's generation (a single-row read); a store that
pushes changes (PostgreSQL's LISTEN/NOTIFY) wakes it at once instead, and the poll slows to the
heartbeat's pace, a safety net for a notification lost with its connection. When the generation
grows, it makes sure every version the new policies name is loaded here, swaps in the new routing
table and reports the generation back, which is what a policy change waits for. It also tells the
model manager which versions to keep loaded whatever the version policy says: the ones policies
name, and the stable versions of the rollback window. And it follows explicit model loads and
unloads made through any process (:mod:`gateway.rollouts.repository_control`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from types import MappingProxyType

from gateway.errors import TurnoutError
from gateway.routing.table import ModelRoute, RoutingTable, RoutingTableHolder
from gateway.serving.model_manager import ModelManager
from gateway.state.store import RepositoryRequest, StateStore, StateUnavailable, StoredPolicy

log = logging.getLogger(__name__)


# A change is promised everywhere within 100 ms; a sync slower than that says where its time went.
_SLOW_SYNC_S = 0.1


class _Steps:
    """Wall time per step of one sync, for the slow-sync warning."""

    def __init__(self) -> None:
        self._started = self._last = time.monotonic()
        # Formatted only for the warning: the sync polls every 20 ms and is rarely slow.
        self._took: list[tuple[str, float]] = []

    def done(self, step: str) -> None:
        now = time.monotonic()
        self._took.append((step, now - self._last))
        self._last = now

    def total_s(self) -> float:
        return self._last - self._started

    def __str__(self) -> str:
        return ", ".join(f"{step} {seconds * 1000:.0f} ms" for step, seconds in self._took)


class PolicySync:
    def __init__(
        self,
        store: StateStore,
        holder: RoutingTableHolder,
        manager: ModelManager,
        *,
        poll_interval_s: float,
        heartbeat_interval_s: float,
        rollback_window_s: float,
    ) -> None:
        self._store = store
        self._holder = holder
        self._manager = manager
        self._poll_interval_s = poll_interval_s
        self._heartbeat_interval_s = heartbeat_interval_s
        self._rollback_window_s = rollback_window_s
        self.host = os.uname().nodename
        self.process_id = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._sync_lock = threading.Lock()
        # The generation of each model's load or unload request this process has carried out.
        self._followed: dict[str, int] = {}
        self._stopping = threading.Event()
        # Set by the store's listener on every commit anywhere in the fleet, and by close().
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        # Why the routing state cannot be used now (logged once when it starts); None while it can.
        self.state_problem: str | None = None

    @property
    def applied_generation(self) -> int:
        return self._holder.current.generation

    def start(self) -> None:
        self.sync_now()
        if self._store.on_change(self._wake.set):
            self._poll_interval_s = max(self._poll_interval_s, self._heartbeat_interval_s)
        self._thread = threading.Thread(target=self._run, name="policy-sync", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._store.forget_process(self.process_id)
        except Exception:  # the store may be gone at shutdown; nobody waits for us any more anyway
            log.exception("could not deregister %s from the state store", self.process_id)

    def _run(self) -> None:
        next_heartbeat = 0.0
        while True:
            asleep_since = time.monotonic()
            woken = self._wake.wait(self._poll_interval_s)
            if self._stopping.is_set():
                return
            self._wake.clear()  # before the sync: a commit landing during it wakes the next round
            late_s = 0.0 if woken else time.monotonic() - asleep_since - self._poll_interval_s
            if late_s > _SLOW_SYNC_S:
                # Every change waits for this thread; say so when it wakes up late (a starved GIL, a stalled host).
                log.warning("the policy sync woke %.0f ms late", late_s * 1000)
            try:
                changed = self.sync_now()
                if changed or time.monotonic() >= next_heartbeat:
                    if not changed:
                        started = time.monotonic()
                        self._keep_needed_versions(self._store.policies())
                        self._report()
                        if (took_s := time.monotonic() - started) > _SLOW_SYNC_S:  # the next sync waited for it
                            log.warning("a heartbeat of the policy sync took %.0f ms", took_s * 1000)
                    next_heartbeat = time.monotonic() + self._heartbeat_interval_s
            except StateUnavailable as error:  # serve on with the policies applied; say so once
                # Once per outage: a database going away says "terminating connection" first, then
                # "not accepting connections" on every retry; that is one problem, not two.
                if self.state_problem is None:
                    log.error("%s; serving with the policies applied so far", error)
                self.state_problem = str(error)
                continue
            except Exception:  # a failed pass must not end the sync; the next one retries
                log.exception("policy sync failed")
            if self.state_problem is not None:
                log.warning("the routing state can be read again")
                self.state_problem = None

    def sync_now(self) -> bool:
        """Apply the store's newest generation if it is newer than ours; True when it was."""
        steps = _Steps()
        with self._sync_lock:
            steps.done("lock")
            generation = self._store.generation()
            steps.done("read generation")
            if generation <= self._holder.current.generation and self._thread is not None:
                if steps.total_s() > _SLOW_SYNC_S:  # finding nothing new can be slow too
                    log.warning("checking for a new generation took %.0f ms (%s)", steps.total_s() * 1000, steps)
                return False
            self._follow_repository_requests()
            steps.done("follow loads and unloads")
            policies = self._store.policies()
            steps.done("read policies")
            self._keep_needed_versions(policies)
            steps.done("keep loaded")
            self._load_missing_versions(policies)
            steps.done("load missing")
            routes = {model: ModelRoute(stored.policy, stored.generation) for model, stored in policies.items()}
            self._holder.swap(RoutingTable(generation, MappingProxyType(routes)))
            self._report()
            steps.done("report")
            if steps.total_s() > _SLOW_SYNC_S:
                log.warning("applying generation %d took %.0f ms (%s)", generation, steps.total_s() * 1000, steps)
            elif generation:
                log.info("routing by policy generation %d", generation)
            return True

    def mark_followed(self, request: RepositoryRequest) -> None:
        """This process carried out ``request`` itself (it took the call)."""
        with self._sync_lock:
            self._followed[request.model] = max(self._followed.get(request.model, 0), request.generation)

    def _follow_repository_requests(self) -> None:
        requests = sorted(self._store.repository_requests().values(), key=lambda r: r.generation)
        for request in requests:
            if request.generation <= self._followed.get(request.model, 0):
                continue
            self._followed[request.model] = request.generation
            action, model = request.action, request.model
            try:
                if action == "load":
                    self._manager.load_model(model)
                else:
                    self._manager.unload_model(model)
                log.info("%sed model %r as %s asked through another process", action, model, request.actor,
                         extra={"model": model})  # fmt: skip
            except TurnoutError as error:  # e.g. unloading what this process never loaded
                log.warning("could not %s model %r as asked through another process: %s", action, model, error,
                            extra={"model": model})  # fmt: skip

    def _report(self) -> None:
        self._store.report_applied(self.process_id, os.getpid(), self._holder.current.generation, self.host)

    def _keep_needed_versions(self, policies: dict[str, StoredPolicy]) -> None:
        since = time.time() - self._rollback_window_s
        for model, stored in policies.items():
            # A stable version replaced within the window stays loaded: a rollback must never load it.
            needed = set(stored.policy.versions()) | self._store.replaced_stables(model, since, 20)
            self._manager.keep_loaded(model, frozenset(needed))

    def _load_missing_versions(self, policies: dict[str, StoredPolicy]) -> None:
        """Load the versions the policies name that are not READY here, before the new table is applied.

        The process that accepted a change loaded them already; the others catch up here. A version
        that is READY is never looked up in the repository, so applying a rollback, whose versions
        are loaded by design (the rollback window), never waits for the registry or a loading pass.
        """
        for model, stored in policies.items():
            ready = self._manager.ready_versions(model)
            for version in sorted(stored.policy.versions() - ready):
                try:
                    self._manager.ensure_ready(model, version)
                except TurnoutError as error:
                    log.error("policy of %r names version %d, which cannot serve here: %s", model, version, error,
                              extra={"model": model, "version": version})  # fmt: skip
