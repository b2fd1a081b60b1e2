"""The SQLite state store: atomic policy changes, an audit trail, and agreement across processes."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.routing.policy import Canary, Policy, Shadow
from gateway.state import sqlite_store
from gateway.state.sqlite_store import STATE_FILE, SqliteStateStore
from gateway.state.store import GenerationConflict, RefusedCall, StateUnavailable


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStateStore]:
    opened = SqliteStateStore(tmp_path)
    yield opened
    opened.close()


def test_a_commit_becomes_the_policy_and_an_audit_row(store: SqliteStateStore) -> None:
    assert store.generation() == 0 and store.policies() == {}
    first = store.commit("digits", None, Policy(stable=1), "set-policy", "alice", "first policy")
    canary = Policy(stable=1, canary=Canary(2, 1_000), shadows=(Shadow(3, 0.5),), sticky_key="x-user-id")
    second = store.commit("digits", first.generation, canary, "canary", "bob", "try v2")
    assert (first.generation, second.generation) == (1, 2)
    assert store.generation() == 2
    assert store.policies()["digits"].policy == canary
    assert store.policies()["digits"].generation == 2
    newest, oldest = store.history("digits", 10)
    assert (newest.actor, newest.action, newest.reason, newest.before, newest.after) == (
        "bob", "canary", "try v2", Policy(stable=1), canary
    )
    assert (oldest.before, oldest.after, oldest.generation) == (None, Policy(stable=1), 1)
    assert newest.at >= oldest.at


def test_replaced_stables_are_read_without_the_reasons(store: SqliteStateStore) -> None:
    first = store.commit("digits", None, Policy(stable=1), "set-policy", "alice", "why " * 1000)
    second = store.commit("digits", first.generation, Policy(stable=2), "set-policy", "alice", "")
    store.commit("digits", second.generation, Policy(stable=3), "set-policy", "alice", "")
    store.commit("other", None, Policy(stable=7), "set-policy", "alice", "")
    assert store.replaced_stables("digits", 0.0, 20) == {1, 2}
    assert store.replaced_stables("digits", 0.0, 1) == {2}, "the newest change first"
    assert store.replaced_stables("digits", time.time() + 60, 20) == set()
    assert store.replaced_stables("other", 0.0, 20) == set(), "a first policy replaced nothing"


def test_a_stale_change_is_refused_and_writes_nothing(store: SqliteStateStore) -> None:
    change = store.commit("digits", None, Policy(stable=1), "set-policy", "alice", "")
    store.commit("digits", change.generation, Policy(stable=2), "promote", "alice", "")
    with pytest.raises(GenerationConflict, match="generation 2, not 1"):
        store.commit("digits", change.generation, Policy(stable=3), "set-policy", "mallory", "")
    assert store.policies()["digits"].policy == Policy(stable=2)
    assert len(store.history("digits", 10)) == 2


def test_state_survives_reopening(tmp_path: Path) -> None:
    first = SqliteStateStore(tmp_path)
    first.commit("digits", None, Policy(stable=2), "set-policy", "alice", "")
    first.close()
    again = SqliteStateStore(tmp_path)
    try:
        assert again.policies()["digits"].policy == Policy(stable=2)
        assert again.generation() == 1
    finally:
        again.close()


def test_process_reports(store: SqliteStateStore) -> None:
    store.report_applied("gw-a", 11, 3)
    store.report_applied("gw-b", 12, 2)
    store.report_applied("gw-b", 12, 4)
    assert [(r.process_id, r.pid, r.applied_generation) for r in store.reports()] == [("gw-a", 11, 3), ("gw-b", 12, 4)]
    store.forget_process("gw-a")
    assert [r.process_id for r in store.reports()] == ["gw-b"]


def test_reports_skip_the_fsync_but_policy_commits_keep_it(store: SqliteStateStore) -> None:
    full = 2  # PRAGMA synchronous
    store.report_applied("gw-a", 11, 3)
    # The same thread's connection may commit a policy next: it must be back to FULL.
    assert store._connection().execute("PRAGMA synchronous").fetchone()[0] == full


def _commit_many(state_dir: str, actor: str, count: int) -> int:
    """Child process: make ``count`` changes, retrying on conflict; returns how many conflicts it met."""
    store = SqliteStateStore(Path(state_dir))
    conflicts = 0
    try:
        for i in range(count):
            while True:
                current = store.policies().get("digits")
                expected = current.generation if current else None
                try:
                    store.commit("digits", expected, Policy(stable=i + 1), "set", actor, "")
                    break
                except GenerationConflict:
                    conflicts += 1
    finally:
        store.close()
    return conflicts


def test_concurrent_writers_in_several_processes_lose_no_change(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        pool.starmap(_commit_many, [(str(tmp_path), f"writer-{n}", 20) for n in range(3)])
    store = SqliteStateStore(tmp_path)
    try:
        history = store.history("digits", 1_000)
        assert store.generation() == 60 == len(history)
        generations = [change.generation for change in reversed(history)]
        assert generations == list(range(1, 61))
        # Every change was computed from the one before it: no lost update.
        for older, newer in zip(reversed(history[1:]), reversed(history[:-1]), strict=True):
            assert newer.before == older.after
    finally:
        store.close()


def test_a_repository_request_takes_a_generation_and_replaces_the_models_last(store: SqliteStateStore) -> None:
    policy = store.commit("digits", None, Policy(stable=1), "set-policy", "alice", "")
    unload = store.request_repository_action("digits", "unload", "bob")
    other = store.request_repository_action("identity", "unload", "bob")
    load = store.request_repository_action("digits", "load", "carol")
    assert (unload.generation, other.generation, load.generation) == (2, 3, 4)
    assert store.generation() == 4, "watchers notice a load or unload as they notice a policy change"
    requests = store.repository_requests()
    assert (requests["digits"].action, requests["digits"].actor, requests["digits"].generation) == ("load", "carol", 4)
    assert requests["identity"].action == "unload"
    assert store.policies()["digits"].generation == policy.generation, "policies are untouched"
    store.clear_repository_requests()
    assert store.repository_requests() == {} and store.generation() == 4


def test_a_late_report_of_an_older_generation_does_not_take_a_process_back(store: SqliteStateStore) -> None:
    # The policy sync's heartbeat read generation 124, then waited for the write lock while the call
    # that made generation 125 reported it: the heartbeat lands last and must not undo that.
    store.report_applied("p", 1, 125)
    first_seen = store.reports()[0].seen_at
    store.report_applied("p", 1, 124)
    [report] = store.reports()
    assert report.applied_generation == 125
    assert report.seen_at >= first_seen, "still a heartbeat"


def test_a_deleted_state_file_refuses_changes_instead_of_losing_them(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path)
    store.commit("digits", None, Policy(stable=1), "set-policy", "alice", "")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store.path}{suffix}").unlink(missing_ok=True)
    with pytest.raises(StateUnavailable, match="was deleted while the gateway ran"):
        store.commit("digits", 1, Policy(stable=2), "set-policy", "alice", "")
    with pytest.raises(StateUnavailable, match="was deleted"):
        store.generation()  # the policy sync's poll notices it too
    store.close()


def test_a_replaced_state_file_refuses_changes(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path)
    other = SqliteStateStore(tmp_path / "elsewhere")
    other.close()
    os.replace(other.path, store.path)
    with pytest.raises(StateUnavailable, match="was replaced while the gateway ran"):
        store.policies()
    store.close()


def test_a_corrupt_state_file_is_named_at_start_and_while_running(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_bytes(b"not a database at all " * 200)
    with pytest.raises(StateUnavailable, match=f"{STATE_FILE} cannot be used: file is not a database"):
        SqliteStateStore(tmp_path)
    running = SqliteStateStore(tmp_path / "running")
    running.commit("digits", None, Policy(stable=1), "set-policy", "alice", "")
    running.close()  # its log is checkpointed into the file, which is then damaged in place
    with open(running.path, "r+b") as damaged:
        damaged.write(b"\xff" * 4096)
    failures: list[BaseException] = []
    reader = threading.Thread(target=lambda: _catch(running.policies, failures))  # a fresh connection
    reader.start()
    reader.join()
    assert [type(error) for error in failures] == [StateUnavailable]


def _catch(call: Callable[[], object], into: list[BaseException]) -> None:
    try:
        call()
    except BaseException as error:
        into.append(error)


def test_refused_calls_are_kept_newest_first_and_bounded(
    store: SqliteStateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "REFUSED_CALLS_KEPT", 3)
    for index in range(5):
        store.record_refused(RefusedCall("digits", 1000.0 + index, "unknown", "Rollback", f"attempt {index}"))
    store.record_refused(RefusedCall("other", 2000.0, "unknown", "SetPolicy", "elsewhere"))
    assert [row.detail for row in store.refused("digits", 10)] == ["attempt 4", "attempt 3"]
    assert [row.detail for row in store.refused("other", 10)] == ["elsewhere"]
    assert store.history("digits", 10) == [], "a refusal is no policy change"
