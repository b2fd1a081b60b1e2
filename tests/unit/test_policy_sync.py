"""The policy sync of one process against a real SQLite store: it applies new generations, follows
another process's explicit unloads, and says where its time went when a sync is slow."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.registry.repository import ModelRepository
from gateway.rollouts.policy_sync import PolicySync
from gateway.routing.policy import Policy
from gateway.routing.table import RoutingTableHolder
from gateway.serving.model_manager import ModelManager
from gateway.state.sqlite_store import SqliteStateStore
from gateway.state.store import StoredPolicy
from runtimes.contract import ModelHost, RuntimeOptions


class SlowReadingStore(SqliteStateStore):
    """The real store, whose policy reads take ``delay_s``: a disk or a lock holding a sync up."""

    delay_s = 0.0

    def policies(self) -> dict[str, StoredPolicy]:
        time.sleep(self.delay_s)
        return super().policies()


def no_hosts(kind: str, artifact: Path, options: RuntimeOptions, label: str) -> ModelHost:
    raise AssertionError("the repository is empty; nothing is loaded")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SlowReadingStore]:
    opened = SlowReadingStore(tmp_path / "state")
    yield opened
    opened.close()


@pytest.fixture
def sync(tmp_path: Path, store: SlowReadingStore) -> PolicySync:
    (tmp_path / "repository").mkdir()
    manager = ModelManager(
        ModelRepository(tmp_path / "repository"), no_hosts, RuntimeOptions(1, 1), poll_interval_s=0, drain_timeout_s=1
    )
    return PolicySync(
        store, RoutingTableHolder(), manager, poll_interval_s=0.01, heartbeat_interval_s=0.5, rollback_window_s=60
    )


def test_a_new_generation_is_applied_and_reported(store: SlowReadingStore, sync: PolicySync) -> None:
    change = store.commit("absent", None, Policy(stable=1), "set-policy", "alice", "")
    assert sync.sync_now()
    assert sync.applied_generation == change.generation
    assert [r.applied_generation for r in store.reports()] == [change.generation]


def test_a_slow_sync_is_logged_with_the_time_of_each_step(
    store: SlowReadingStore, sync: PolicySync, caplog: pytest.LogCaptureFixture
) -> None:
    store.commit("absent", None, Policy(stable=1), "set-policy", "alice", "")
    store.delay_s = 0.15
    with caplog.at_level(logging.WARNING, logger="gateway.rollouts.policy_sync"):
        sync.sync_now()
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("applying generation 1 took ")
    read_ms = int(warning.split("read policies ")[1].split(" ms")[0])
    assert read_ms >= 150 and "keep loaded" in warning and "report" in warning


def test_an_unload_asked_through_another_process_is_followed_once(
    store: SlowReadingStore, sync: PolicySync, caplog: pytest.LogCaptureFixture
) -> None:
    store.request_repository_action("absent", "unload", "bob")
    with caplog.at_level(logging.INFO, logger="gateway.rollouts.policy_sync"):
        sync.sync_now()
        sync.sync_now()
    followed = [r.getMessage() for r in caplog.records if "another process" in r.getMessage()]
    # This process never loaded it, so the unload cannot be carried out here; it is tried once.
    assert followed == [
        "could not unload model 'absent' as asked through another process: model 'absent' is not loaded"
    ]
