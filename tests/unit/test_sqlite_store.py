"""The SQLite state store's own concerns: its file (deleted, replaced, corrupt), fsyncs, several processes.

What every store must do is in tests/integration/test_state_store_contract.py, run against SQLite too.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.routing.policy import Policy
from gateway.state.sqlite_store import STATE_FILE, SqliteStateStore
from gateway.state.store import GenerationConflict, StateUnavailable


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStateStore]:
    opened = SqliteStateStore(tmp_path)
    yield opened
    opened.close()












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



def test_a_state_file_from_before_hosts_gains_the_host_column(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / STATE_FILE) as old:
        old.execute(
            "CREATE TABLE processes (process_id TEXT PRIMARY KEY, pid INTEGER NOT NULL,"
            " applied_generation INTEGER NOT NULL, seen_at REAL NOT NULL)"
        )
        old.execute("INSERT INTO processes VALUES ('gw-old', 7, 3, 1.0)")
    old.close()
    store = SqliteStateStore(tmp_path)
    try:
        store.report_applied("gw-new", 8, 3, "host-b")
        assert [(r.process_id, r.host) for r in store.reports()] == [("gw-old", ""), ("gw-new", "host-b")]
    finally:
        store.close()
