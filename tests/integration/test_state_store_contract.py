"""The state store contract: SQLite and PostgreSQL behave alike, so the gateway cannot tell them apart.

Every test here runs against both stores: SQLite in a temporary directory, PostgreSQL in a database
of the test's own on a real server (tests/support/postgres.py). ``open_store`` opens one more store
on the same state, as a second gateway process (or host) would.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import psycopg
import pytest

from gateway.routing.policy import Canary, Policy, Shadow
from gateway.state import postgres_store, sqlite_store
from gateway.state.arm_totals_record import StoredArm
from gateway.state.postgres_schema import SCHEMA_VERSION
from gateway.state.postgres_store import PostgresStateStore
from gateway.state.rollout_record import PAUSED, ROLLED_BACK, RUNNING, RolloutConflict, RolloutLimits, RolloutRecord
from gateway.state.sqlite_store import SqliteStateStore
from gateway.state.store import GenerationConflict, RefusedCall, StateSchemaTooNew, StateStore, StateUnavailable
from tests.support.postgres import cut_off, own_database, restore

Opener = Callable[[], StateStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database(kind: str, tmp_path: Path, postgres_server: str) -> Iterator[str]:
    """Where the state lives: a directory for SQLite, a database URL of this test's own for PostgreSQL."""
    if kind == "sqlite":
        yield str(tmp_path)
        return
    with own_database(postgres_server) as url:
        yield url


@pytest.fixture
def open_store(kind: str, database: str) -> Iterator[Opener]:
    opened: list[StateStore] = []

    def opener() -> StateStore:
        store: StateStore = SqliteStateStore(Path(database)) if kind == "sqlite" else PostgresStateStore(database)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Opener) -> StateStore:
    return open_store()


def test_a_commit_becomes_the_policy_and_an_audit_row(store: StateStore) -> None:
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


def test_replaced_stables_are_read_without_the_reasons(store: StateStore) -> None:
    first = store.commit("digits", None, Policy(stable=1), "set-policy", "alice", "why " * 1000)
    second = store.commit("digits", first.generation, Policy(stable=2), "set-policy", "alice", "")
    store.commit("digits", second.generation, Policy(stable=3), "set-policy", "alice", "")
    store.commit("other", None, Policy(stable=7), "set-policy", "alice", "")
    assert store.replaced_stables("digits", 0.0, 20) == {1, 2}
    assert store.replaced_stables("digits", 0.0, 1) == {2}, "the newest change first"
    assert store.replaced_stables("digits", time.time() + 60, 20) == set()
    assert store.replaced_stables("other", 0.0, 20) == set(), "a first policy replaced nothing"


def test_a_stale_change_is_refused_and_writes_nothing(store: StateStore) -> None:
    change = store.commit("digits", None, Policy(stable=1), "set-policy", "alice", "")
    store.commit("digits", change.generation, Policy(stable=2), "promote", "alice", "")
    with pytest.raises(GenerationConflict, match="generation 2, not 1"):
        store.commit("digits", change.generation, Policy(stable=3), "set-policy", "mallory", "")
    with pytest.raises(GenerationConflict, match="generation 2, not None"):
        store.commit("digits", None, Policy(stable=3), "set-policy", "mallory", "")
    assert store.policies()["digits"].policy == Policy(stable=2)
    assert len(store.history("digits", 10)) == 2
    assert store.generation() == 2, "a refused change takes no generation"


def test_state_survives_reopening(open_store: Opener) -> None:
    first = open_store()
    first.commit("digits", None, Policy(stable=2), "set-policy", "alice", "")
    first.close()
    again = open_store()
    assert again.policies()["digits"].policy == Policy(stable=2)
    assert again.generation() == 1


def test_process_reports_name_their_host(store: StateStore) -> None:
    store.report_applied("gw-a", 11, 3, "host-a")
    store.report_applied("gw-b", 12, 2, "host-b")
    store.report_applied("gw-b", 12, 4, "host-b")
    store.report_applied("gw-c", 13, 4)
    reports = {r.process_id: (r.host, r.pid, r.applied_generation) for r in store.reports()}
    assert reports["gw-a"] == ("host-a", 11, 3) and reports["gw-b"] == ("host-b", 12, 4)
    assert reports["gw-c"][0], "without a host, this machine's name"
    store.forget_process("gw-a")
    assert sorted(r.process_id for r in store.reports()) == ["gw-b", "gw-c"]


def test_a_late_report_of_an_older_generation_does_not_take_a_process_back(store: StateStore) -> None:
    # The policy sync's heartbeat read generation 124, then waited while the call that made
    # generation 125 reported it: the heartbeat lands last and must not undo that.
    store.report_applied("p", 1, 125, "h")
    first_seen = store.reports()[0].seen_at
    store.report_applied("p", 1, 124, "h")
    [report] = store.reports()
    assert report.applied_generation == 125
    assert report.seen_at >= first_seen, "still a heartbeat"


def test_a_repository_request_takes_a_generation_and_replaces_the_models_last(store: StateStore) -> None:
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


def test_refused_calls_are_kept_newest_first_and_bounded(
    kind: str, store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    module: ModuleType = sqlite_store if kind == "sqlite" else postgres_store
    monkeypatch.setattr(module, "REFUSED_CALLS_KEPT", 3)
    for index in range(5):
        store.record_refused(RefusedCall("digits", 1000.0 + index, "unknown", "Rollback", f"attempt {index}"))
    store.record_refused(RefusedCall("other", 2000.0, "unknown", "SetPolicy", "elsewhere"))
    assert [row.detail for row in store.refused("digits", 10)] == ["attempt 4", "attempt 3"]
    assert [row.detail for row in store.refused("other", 10)] == ["elsewhere"]
    assert store.history("digits", 10) == [], "a refusal is no policy change"


def _commit_many(store: StateStore, actor: str, count: int) -> None:
    for i in range(count):
        while True:
            current = store.policies().get("digits")
            try:
                store.commit("digits", current.generation if current else None, Policy(stable=i + 1), "set", actor, "")
                break
            except GenerationConflict:
                continue


def test_concurrent_writers_never_share_a_generation_nor_lose_a_change(open_store: Opener) -> None:
    """Three writers, each with a store of its own (as three gateways would), race on one model."""
    writers = [open_store() for _ in range(3)]
    threads = [threading.Thread(target=_commit_many, args=(w, f"writer-{n}", 15)) for n, w in enumerate(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    history = writers[0].history("digits", 1_000)
    assert writers[0].generation() == 45 == len(history)
    assert [change.generation for change in reversed(history)] == list(range(1, 46))
    for older, newer in zip(reversed(history[1:]), reversed(history[:-1]), strict=True):
        assert newer.before == older.after, "every change was computed from the one before it"


def test_a_lease_has_one_holder_until_it_expires_or_is_released(open_store: Opener) -> None:
    one, other = open_store(), open_store()
    assert one.lease("rollouts") is None
    assert one.acquire_lease("rollouts", "gateway-a", 0.5)
    assert not other.acquire_lease("rollouts", "gateway-b", 0.5), "held by another"
    assert one.acquire_lease("rollouts", "gateway-a", 0.5), "the holder renews it"
    assert one.renew_lease("rollouts", "gateway-a", 0.5) and not other.renew_lease("rollouts", "gateway-b", 30)
    held = other.lease("rollouts")
    assert held is not None and held.holder == "gateway-a" and held.expires_at > time.time()
    time.sleep(0.6)
    assert other.acquire_lease("rollouts", "gateway-b", 30), "lapsed: another takes over"
    assert not one.acquire_lease("rollouts", "gateway-a", 30), "the old holder lost it"
    assert not one.renew_lease("rollouts", "gateway-a", 30), "a renewal tells the old holder to stop leading"
    one.release_lease("rollouts", "gateway-a")  # not its lease: nothing happens
    assert other.lease("rollouts") is not None
    other.release_lease("rollouts", "gateway-b")
    assert one.acquire_lease("rollouts", "gateway-a", 30), "released: free at once"


def _rollout(model: str, phase: str = RUNNING) -> RolloutRecord:
    return RolloutRecord(
        model=model, version=2, stable=1, steps=(5.0, 50.0, 100.0), step_s=60.0, phase=phase, step_index=0,
        weight_percent=5.0, limits=RolloutLimits(alpha=0.01, max_divergence=0.02, min_requests=20),
        started_at=1000.0, step_started_at=1000.0, sticky_key="x-user", reason="new weights", actor="ana",
    )  # fmt: skip


def test_a_rollout_is_kept_whole_and_survives_reopening(open_store: Opener) -> None:
    one = open_store()
    assert one.rollout("resnet") is None and one.active_rollouts() == []
    saved = one.save_rollout(_rollout("resnet"), None)
    assert saved.revision == 1
    evidence = {"verdict": "continue", "checks": [{"check": "error_rate", "e_value_worse": 1.5}]}
    stepped = one.save_rollout(replace(saved, step_index=1, weight_percent=50.0, evidence=evidence), 1)
    one.save_rollout(_rollout("bert", PAUSED), None)
    one.save_rollout(_rollout("gone", ROLLED_BACK), None)
    one.close()
    again = open_store()
    assert again.rollout("resnet") == stepped and stepped.revision == 2
    assert again.rollout("resnet").limits.max_divergence == 0.02  # type: ignore[union-attr]
    assert [record.model for record in again.active_rollouts()] == ["bert", "resnet"]


def test_a_rollout_saved_from_a_stale_read_is_refused(open_store: Opener) -> None:
    one, other = open_store(), open_store()
    first = one.save_rollout(_rollout("resnet"), None)
    with pytest.raises(RolloutConflict):
        other.save_rollout(_rollout("resnet"), None)  # a second first rollout
    other.save_rollout(replace(first, phase=PAUSED), first.revision)
    with pytest.raises(RolloutConflict):
        one.save_rollout(replace(first, step_index=1), first.revision)  # the pause landed first
    found = one.rollout("resnet")
    assert found is not None and found.phase == PAUSED and found.step_index == 0


def test_every_processs_arm_totals_are_read_by_any_process_newest_replacing_older(open_store: Opener) -> None:
    one, other = open_store(), open_store()
    stable = StoredArm("resnet", 1, "stable", 120, 2, [0, 100, 18])
    canary = StoredArm("resnet", 2, "canary", 9, 0, [0, 9, 0])
    one.publish_arm_totals("host-a:1", 1000.0, [StoredArm("resnet", 1, "stable", 5, 0, [5])])
    one.publish_arm_totals("host-a:1", 1000.0, [stable, canary])  # replaces the first
    other.publish_arm_totals("host-b:7", 1001.5, [stable])
    read = {published.process_id: published for published in other.arm_totals(fresh_s=60)}
    assert set(read) == {"host-a:1", "host-b:7"}
    assert read["host-a:1"].arms == (stable, canary) and read["host-a:1"].started_at == 1000.0
    assert read["host-b:7"].arms == (stable,) and time.time() - read["host-b:7"].seen_at < 60
    time.sleep(0.3)
    one.publish_arm_totals("host-a:1", 1000.0, [stable])
    assert [published.process_id for published in other.arm_totals(fresh_s=0.2)] == ["host-a:1"], "b is stale"
    one.forget_arm_totals("host-a:1")
    assert [published.process_id for published in other.arm_totals(fresh_s=60)] == ["host-b:7"]


def test_a_commit_anywhere_wakes_the_watchers_of_a_store_that_pushes(kind: str, open_store: Opener) -> None:
    watcher, writer = open_store(), open_store()
    woken = threading.Event()
    pushes = watcher.on_change(woken.set)
    assert pushes is (kind == "postgresql")
    if not pushes:
        return  # SQLite: the policy sync polls the generation instead
    time.sleep(0.3)  # the listener's connection is up
    writer.commit("digits", None, Policy(stable=1), "set-policy", "alice", "")
    assert woken.wait(5), "a commit through another store is notified"
    woken.clear()
    writer.request_repository_action("digits", "unload", "bob")
    assert woken.wait(5), "a load or unload is notified too"
    also = threading.Event()
    watcher.on_change(also.set)
    writer.commit("digits", 1, Policy(stable=2), "set-policy", "alice", "")
    assert also.wait(5), "every watcher of one store is woken"


# --- PostgreSQL only: its schema and its connection ----------------------------------------------


@pytest.fixture
def postgres_database(postgres_server: str) -> Iterator[str]:
    with own_database(postgres_server) as url:
        yield url


def test_the_schema_is_versioned_and_a_newer_one_is_refused(postgres_database: str) -> None:
    PostgresStateStore(postgres_database).close()
    with psycopg.connect(postgres_database, autocommit=True) as connection:
        row = connection.execute("SELECT version FROM turnout_schema_version").fetchone()
        assert row is not None and row[0] == SCHEMA_VERSION
        connection.execute("UPDATE turnout_schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StateSchemaTooNew) as refused:
        PostgresStateStore(postgres_database)
    assert f"schema version {SCHEMA_VERSION + 1}" in str(refused.value)
    assert f"version {SCHEMA_VERSION} that this Turnout knows" in str(refused.value)


def test_gateways_starting_together_migrate_once(postgres_database: str) -> None:
    stores: list[PostgresStateStore] = []
    failures: list[BaseException] = []

    def open_one() -> None:
        try:
            stores.append(PostgresStateStore(postgres_database))
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert failures == [] and len(stores) == 4
        assert stores[0].generation() == 0
    finally:
        for store in stores:
            store.close()


def test_a_database_cut_off_is_state_unavailable_and_the_store_reconnects(
    postgres_server: str, postgres_database: str
) -> None:
    store = PostgresStateStore(postgres_database)
    try:
        store.commit("digits", None, Policy(stable=1), "set-policy", "alice", "")
        cut_off(postgres_server, postgres_database)
        with pytest.raises(StateUnavailable, match="cannot be reached"):
            store.generation()
        with pytest.raises(StateUnavailable, match="cannot be reached"):
            store.commit("digits", 1, Policy(stable=2), "set-policy", "alice", "")
        restore(postgres_server, postgres_database)
        assert store.generation() == 1, "the next call connects again"
        store.commit("digits", 1, Policy(stable=2), "set-policy", "alice", "")
        assert store.policies()["digits"].policy == Policy(stable=2)
    finally:
        restore(postgres_server, postgres_database)
        store.close()


def test_a_password_in_the_url_is_never_in_a_message() -> None:
    with pytest.raises(StateUnavailable) as refused:
        PostgresStateStore("postgresql://turnout:s3cret-pw@127.0.0.1:1/nowhere")
    assert "s3cret-pw" not in str(refused.value) and "127.0.0.1:1/nowhere" in str(refused.value)


@pytest.mark.skipif(shutil.which("pg_dump") is None, reason="pg_dump is not installed")
def test_the_runbooks_backup_and_restore_keep_policies_history_and_generations(
    postgres_server: str, postgres_database: str, tmp_path: Path
) -> None:
    """docs/operations.md, "Fleet": pg_dump of the turnout_* tables, pg_restore into an empty database."""
    store = PostgresStateStore(postgres_database)
    first = store.commit("digits", None, Policy(stable=1), "set-policy", "alice", "")
    store.commit("digits", first.generation, Policy(stable=2), "promote", "alice", "v2 is good")
    store.close()
    dump = tmp_path / "turnout-state.dump"
    subprocess.run(["pg_dump", "-t", "turnout_*", "-Fc", "-f", str(dump), postgres_database], check=True, timeout=60)
    with own_database(postgres_server) as restored_url:
        subprocess.run(["pg_restore", "--no-owner", "-d", restored_url, str(dump)], check=True, timeout=60)
        restored = PostgresStateStore(restored_url)
        try:
            assert restored.generation() == 2
            assert restored.policies()["digits"].policy == Policy(stable=2)
            assert [change.reason for change in restored.history("digits", 10)] == ["v2 is good", ""]
            assert restored.commit("digits", 2, Policy(stable=1), "rollback", "bob", "").generation == 3
        finally:
            restored.close()
