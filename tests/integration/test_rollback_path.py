"""A rollback touches routing state only: it never reads the repository, loads nothing, and does not
wait behind a repository pass that is loading or stuck on a slow disk.

The rollout use case runs here as the gateway wires it (real SQLite state store, policy sync,
propagation, model manager with real ONNX models in-process); only the repository is slowed down on
purpose, the way a network filesystem would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.errors import FailedPrecondition
from gateway.registry.repository import ModelEntry, ModelRepository
from gateway.rollouts.control import Rollouts
from gateway.rollouts.policy_sync import PolicySync
from gateway.rollouts.propagation import Propagation
from gateway.rollouts.shadow import ShadowMirror
from gateway.routing.policy import Policy
from gateway.routing.table import RoutingTableHolder
from gateway.serving.model_manager import ModelManager
from gateway.state.sqlite_store import SqliteStateStore
from runtimes.contract import ModelHost, RuntimeOptions
from runtimes.inprocess_host import InProcessHost
from tests.support.model_repository import identity_model, save_version


class StallingRepository(ModelRepository):
    """The real repository; counts its scans, and can be made to stall them until released."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.scans = 0
        self.stalled = threading.Event()  # set while a scan is held up
        self.release = threading.Event()
        self.release.set()

    def scan_model(self, name: str) -> ModelEntry | None:
        self.scans += 1
        if not self.release.is_set():
            self.stalled.set()
            self.release.wait(30)
        return super().scan_model(name)


@dataclass
class Rig:
    repository: StallingRepository
    manager: ModelManager
    rollouts: Rollouts
    loads: list[str]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    for version in (1, 2):
        save_version(tmp_path / "models", "echo", version, identity_model("FP32"))
    loads: list[str] = []

    def in_process(kind: str, artifact: Path, options: RuntimeOptions, label: str) -> ModelHost:
        loads.append(label)
        return InProcessHost(kind, artifact, options)

    repository = StallingRepository(tmp_path / "models")
    manager = ModelManager(repository, in_process, RuntimeOptions(1, 1), poll_interval_s=0, drain_timeout_s=5)
    store = SqliteStateStore(tmp_path / "state")
    routes = RoutingTableHolder()
    sync = PolicySync(store, routes, manager, poll_interval_s=0.02, heartbeat_interval_s=0.5, rollback_window_s=60)
    shadows = ShadowMirror(lambda model, version: manager.acquire(model, str(version)), 16, 5.0)
    propagation = Propagation(store, sync, apply_timeout_s=10, liveness_s=3)
    manager.start()
    sync.start()
    yield Rig(repository, manager, Rollouts(store, routes, manager, shadows, propagation), loads)
    repository.release.set()
    sync.close()
    shadows.close()
    manager.close()
    store.close()


def test_a_rollback_reads_no_repository_and_loads_nothing(rig: Rig) -> None:
    rig.rollouts.set_policy("echo", Policy(stable=1), "alice", "baseline")
    rig.rollouts.set_canary("echo", 2, 50.0, "", "alice", "candidate")
    scans, loads = rig.repository.scans, list(rig.loads)
    view = rig.rollouts.rollback("echo", "alice", "p99 up")
    assert view.policy == Policy(stable=1)
    assert (rig.repository.scans, rig.loads) == (scans, loads)


def test_a_rollback_does_not_wait_behind_a_stalled_repository_pass(rig: Rig) -> None:
    rig.rollouts.set_policy("echo", Policy(stable=1), "alice", "baseline")
    rig.rollouts.set_canary("echo", 2, 50.0, "", "alice", "candidate")
    rig.repository.release.clear()
    stuck = threading.Thread(target=rig.manager.reconcile_all, daemon=True)  # a poll pass on a slow disk
    stuck.start()
    assert rig.repository.stalled.wait(5)
    started = time.monotonic()
    view = rig.rollouts.rollback("echo", "alice", "error rate up")
    assert time.monotonic() - started < 2.0, "the rollback waited for the repository pass"
    assert view.policy == Policy(stable=1) and stuck.is_alive()
    rig.repository.release.set()
    stuck.join(5)


def test_a_rollback_to_a_version_that_is_not_loaded_is_refused_without_loading_it(rig: Rig) -> None:
    rig.rollouts.set_policy("echo", Policy(stable=1), "alice", "baseline")
    rig.rollouts.set_policy("echo", Policy(stable=2), "alice", "new stable")
    rig.manager.keep_loaded("echo", frozenset())  # as if the rollback window had passed
    rig.manager.version("echo", "1").unload(drain_timeout_s=5)
    loads = list(rig.loads)
    with pytest.raises(FailedPrecondition, match="version 1 is UNAVAILABLE; rollback only returns to a loaded"):
        rig.rollouts.rollback("echo", "alice", "too late")
    assert rig.loads == loads


def test_a_canary_on_a_version_that_is_not_loaded_loads_it_first(rig: Rig) -> None:
    rig.rollouts.set_policy("echo", Policy(stable=1), "alice", "baseline")
    rig.manager.keep_loaded("echo", frozenset())
    rig.manager.version("echo", "2").unload(drain_timeout_s=5)
    view = rig.rollouts.set_canary("echo", 2, 10.0, "", "alice", "again")
    assert view.policy.canary is not None and rig.manager.ready_versions("echo") == {1, 2}
