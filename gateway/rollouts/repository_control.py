"""Explicit model loads and unloads (``RepositoryModelLoad``/``Unload``), in every gateway process at once.

The process a call lands on acts first, so an error (no such model, no version that loads) comes back
before anything is recorded. A success is recorded in the state store under a new generation; every
other process follows it on its next poll (:class:`gateway.rollouts.policy_sync.PolicySync`), and the call
returns once all of them have, as a policy change does. Behind a load balancer, a model unloaded
through one connection is then unloaded on every connection.
"""

from __future__ import annotations

from gateway.rollouts.policy_sync import PolicySync
from gateway.rollouts.propagation import Propagation
from gateway.serving.model_manager import ModelManager
from gateway.state.store import StateStore


class RepositoryControl:
    def __init__(self, manager: ModelManager, store: StateStore, sync: PolicySync, propagation: Propagation) -> None:
        self._manager = manager
        self._store = store
        self._sync = sync
        self._propagation = propagation

    def load(self, model: str, actor: str) -> tuple[str, ...]:
        """Load (or reload) a model here and in every process; returns the processes that did."""
        self._manager.load_model(model)
        return self._publish(model, "load", actor)

    def unload(self, model: str, actor: str) -> tuple[str, ...]:
        """Unload every version of a model here and in every process, until it is loaded again."""
        self._manager.unload_model(model)
        return self._publish(model, "unload", actor)

    def _publish(self, model: str, action: str, actor: str) -> tuple[str, ...]:
        request = self._store.request_repository_action(model, action, actor)
        self._sync.mark_followed(request)  # done here already; the sync must not do it twice
        return self._propagation.wait(request.generation, f"{action} of model {model!r}")
