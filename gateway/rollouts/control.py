"""The rollout use cases: read and change a model's routing policy, promote, roll back, audit.

A change takes two steps. First, the versions the new policy names are made READY here, loading a
version that is in the repository but not loaded (:meth:`Rollouts._load_named_versions`). Then the
policy itself changes, which touches routing state only: it is written to the state store
atomically with its audit row, applied in this process at once, and waited on until every live
gateway process reports the new generation. A rollback skips the first step: it only ever returns
to versions that are loaded (the rollback window keeps them so), and refuses otherwise, so it never
reaches the registry nor waits behind a model that is loading.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from gateway.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from gateway.rollouts.propagation import Propagation
from gateway.rollouts.shadow import ShadowFigures, ShadowMirror
from gateway.routing.policy import Canary, Policy, PolicyInvalid, Shadow, checked, weight_bp_from_percent
from gateway.routing.table import RoutingTableHolder
from gateway.serving.model_manager import ModelManager
from gateway.serving.model_version import VersionState
from gateway.state.store import GenerationConflict, PolicyChange, RefusedCall, StateStore

_Compute = Callable[[Policy], Policy]  # a change, as a function of the policy it applies to

_CONFLICT_RETRIES = 5
# The audit trail keeps why, not essays: every process reads policies on each change, and a client
# reads a page of history in one message (a few 1 MiB reasons broke `turnout history`).
MAX_REASON_CHARS = 4096
MAX_HISTORY_LIMIT = 1000
_DEFAULT_HISTORY = 100


@dataclass(frozen=True, slots=True)
class PolicyView:
    model: str
    policy: Policy
    generation: int
    explicit: bool  # False: no policy was ever set and the highest READY version serves
    applied_by: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class VersionView:
    version: int
    state: str
    reason: str
    sha256: str
    role: str


class Rollouts:
    def __init__(
        self,
        store: StateStore,
        holder: RoutingTableHolder,
        manager: ModelManager,
        shadows: ShadowMirror,
        propagation: Propagation,
    ) -> None:
        self._store = store
        self._holder = holder
        self._manager = manager
        self._shadows = shadows
        self._propagation = propagation

    # --- reading ---------------------------------------------------------------------------

    def policy(self, model: str) -> PolicyView:
        route = self._holder.current.routes.get(model)
        if route is not None:
            return PolicyView(model, route.policy, route.generation, True)
        record = self._manager.record(model)
        if record.default is None:
            raise Unavailable(f"model {model!r} has no READY version and no policy")
        return PolicyView(model, Policy(stable=record.default.version), 0, False)

    def history(self, model: str, limit: int) -> list[PolicyChange | RefusedCall]:
        """The newest ``limit`` entries (0: the default page): changes, and calls refused for their
        credentials, newest first. A negative or huge limit is refused."""
        if not 0 <= limit <= MAX_HISTORY_LIMIT:
            raise InvalidArgument(
                f"history limit {limit} is out of range: 1 to {MAX_HISTORY_LIMIT}, or 0 for {_DEFAULT_HISTORY}"
            )
        limit = limit or _DEFAULT_HISTORY
        entries: list[PolicyChange | RefusedCall] = [*self._store.history(model, limit)]
        entries.extend(self._store.refused(model, limit))
        return sorted(entries, key=lambda entry: entry.at, reverse=True)[:limit]

    def versions(self, model: str) -> tuple[PolicyView | None, list[VersionView]]:
        record = self._manager.record(model)
        try:
            view: PolicyView | None = self.policy(model)
        except Unavailable:
            view = None
        roles = _roles(view.policy) if view is not None else {}
        listed = {
            number: VersionView(number, version.state.value, version.reason, version.sha256, roles.get(number, ""))
            for number, version in record.versions.items()
        }
        for number in self._manager.repository_versions(model) - set(listed):
            not_loaded = "in the repository; its version policy does not load it (a policy naming it will)"
            listed[number] = VersionView(number, VersionState.UNKNOWN.value, not_loaded, "", roles.get(number, ""))
        return view, [listed[number] for number in sorted(listed)]

    def shadow_figures(self, model: str) -> list[ShadowFigures]:
        self._manager.record(model)  # NOT_FOUND for a model we do not know
        return self._shadows.figures_of(model)

    # --- changing --------------------------------------------------------------------------

    def set_policy(self, model: str, policy: Policy, actor: str, reason: str) -> PolicyView:
        return self._change(model, "set-policy", actor, reason, lambda _: policy)

    def set_canary(
        self,
        model: str,
        version: int,
        weight_percent: float,
        sticky_key: str,
        actor: str,
        reason: str,
        *,
        compared: bool = False,
    ) -> PolicyView:
        """Make ``version`` the canary at ``weight_percent``. A shadow of that version is removed,
        unless ``compared``: then the version is (also) a shadow of every other request, whose answers
        are compared with the stable's (a rollout with ``--max-divergence``). A shadow of the canary
        it replaces goes with it: it was that canary's comparison."""
        weight_bp = _weight(weight_percent)

        def with_canary(current: Policy) -> Policy:
            replaced = current.canary.version if current.canary is not None else None
            shadows = tuple(s for s in current.shadows if s.version not in (version, replaced))
            if compared:
                shadows += (Shadow(version, COMPARED_FRACTION),)
            return replace(
                current, canary=Canary(version, weight_bp), shadows=shadows, sticky_key=sticky_key or current.sticky_key
            )

        return self._change(model, "set-canary", actor, reason, with_canary)

    def clear_canary(self, model: str, actor: str, reason: str) -> PolicyView:
        """Take the canary away, and a shadow of its version (its comparison, see :meth:`set_canary`)."""

        def without_canary(current: Policy) -> Policy:
            if current.canary is None:
                return current
            version = current.canary.version
            return replace(current, canary=None, shadows=tuple(s for s in current.shadows if s.version != version))

        return self._change(model, "clear-canary", actor, reason, without_canary)

    def set_shadow(self, model: str, version: int, fraction: float, actor: str, reason: str) -> PolicyView:
        def with_shadow(current: Policy) -> Policy:
            others = tuple(s for s in current.shadows if s.version != version)
            return replace(current, shadows=others + ((Shadow(version, fraction),) if fraction else ()))

        return self._change(model, "set-shadow", actor, reason, with_shadow)

    def promote(self, model: str, actor: str, reason: str) -> PolicyView:
        def promoted(current: Policy) -> Policy:
            if current.canary is None:
                raise FailedPrecondition(f"model {model!r} has no canary to promote (stable is {current.stable})")
            shadows = tuple(s for s in current.shadows if s.version != current.canary.version)
            return replace(current, stable=current.canary.version, canary=None, shadows=shadows)

        return self._change(model, "promote", actor, reason, promoted)

    def rollback(self, model: str, actor: str, reason: str) -> PolicyView:
        """Clear the canary and shadows; with none, undo the last promotion. Never loads a model."""

        def rolled_back(current: Policy) -> Policy:
            if current.canary is not None or current.shadows:
                return current.without_trials()
            # Undo the newest change of the stable version, unless that change was itself a rollback.
            for change in self._store.history(model, _DEFAULT_HISTORY):
                before = change.before
                if before is None or before.stable == change.after.stable:
                    continue
                if change.action == "rollback":
                    raise FailedPrecondition(
                        f"model {model!r} was already rolled back to version {change.after.stable} "
                        f"(generation {change.generation}); set a policy to move on"
                    )
                return replace(current.without_trials(), stable=before.stable)
            raise FailedPrecondition(
                f"nothing to roll back for model {model!r}: no canary, no shadows, and no earlier stable version"
            )

        return self._change(model, "rollback", actor, reason, rolled_back, prepare=self._require_loaded)

    def _change(
        self,
        model: str,
        action: str,
        actor: str,
        reason: str,
        compute: _Compute,
        *,
        prepare: Callable[[str, Policy], None] | None = None,
    ) -> PolicyView:
        """Compute the new policy, make its versions READY (``prepare``), then commit and apply it."""
        if len(reason) > MAX_REASON_CHARS:
            raise InvalidArgument(f"the reason is {len(reason)} characters long; at most {MAX_REASON_CHARS} are kept")
        prepare = prepare or self._load_named_versions
        self._manager.record(model)  # NOT_FOUND for a model the registry does not know
        for _ in range(_CONFLICT_RETRIES):
            stored = self._store.policies().get(model)
            current = stored.policy if stored is not None else self.policy(model).policy
            try:
                after = checked(compute(current))
            except PolicyInvalid as error:
                raise InvalidArgument(f"policy for model {model!r} is malformed: {error}") from None
            prepare(model, after)
            try:
                change = self._store.commit(
                    model, stored.generation if stored else None, after, action, actor or "unknown", reason
                )
            except GenerationConflict:
                continue  # another process changed it meanwhile: recompute from the new policy
            return self._wait_applied(model, change)
        raise Unavailable(f"policy of model {model!r} kept changing under this {action}; retry")

    def _load_named_versions(self, model: str, policy: Policy) -> None:
        """Step one of a change: load every version the policy names that is not READY here."""
        for number in sorted(policy.versions() - self._manager.ready_versions(model)):
            try:
                self._manager.ensure_ready(model, number)
            except NotFound as error:
                raise FailedPrecondition(f"policy names a version that does not exist: {error}") from None

    def _require_loaded(self, model: str, policy: Policy) -> None:
        """A rollback's only check: every version it returns to is READY here; nothing is loaded."""
        missing = sorted(policy.versions() - self._manager.ready_versions(model))
        if missing:
            states = ", ".join(f"version {n} is {self._state_of(model, n)}" for n in missing)
            raise FailedPrecondition(
                f"model {model!r}: {states}; rollback only returns to a loaded version"
            )

    def _state_of(self, model: str, number: int) -> str:
        found = self._manager.record(model).versions.get(number)
        return found.state.value if found is not None else "not in the registry"

    def _wait_applied(self, model: str, change: PolicyChange) -> PolicyView:
        applied = self._propagation.wait(change.generation, f"{change.action} of model {model!r}")
        return PolicyView(model, change.after, change.generation, True, applied)


# The share of the stable arm's requests copied to a compared canary: all of them, so that the
# divergence check gathers evidence as fast as the others (the shadow mirror sheds what it cannot keep up with).
COMPARED_FRACTION = 1.0


def _weight(weight_percent: float) -> int:
    try:
        return weight_bp_from_percent(weight_percent)
    except PolicyInvalid as error:
        raise InvalidArgument(str(error)) from None


def _roles(policy: Policy) -> dict[int, str]:
    roles = {shadow.version: "shadow" for shadow in policy.shadows}
    if policy.canary is not None:
        roles[policy.canary.version] = "canary"
    roles[policy.stable] = "stable"
    return roles
