"""The fleet as `turnout status` shows it: processes by host, live while their heartbeat is recent."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway.rollouts.fleet import GONE_AFTER_S, Fleet
from gateway.routing.policy import Policy
from gateway.state.sqlite_store import SqliteStateStore


def test_processes_by_host_live_then_lapsed_then_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SqliteStateStore(tmp_path)
    try:
        store.commit("digits", None, Policy(stable=1), "set-policy", "alice", "")
        store.report_applied("host-b:2:bb", 2, 1, "host-b")
        store.report_applied("host-a:1:aa", 1, 0, "host-a")
        view = Fleet(store, liveness_s=3.0).view()
        assert view.generation == 1 and view.liveness_s == 3.0
        assert [(p.report.host, p.report.applied_generation, p.live) for p in view.processes] == [
            ("host-a", 0, True), ("host-b", 1, True)
        ]
        now = time.time()
        monkeypatch.setattr("gateway.rollouts.fleet.time", SimpleNamespace(time=lambda: now + 10))
        assert [p.live for p in Fleet(store, liveness_s=3.0).view().processes] == [False, False]
        monkeypatch.setattr("gateway.rollouts.fleet.time", SimpleNamespace(time=lambda: now + GONE_AFTER_S + 1))
        assert Fleet(store, liveness_s=3.0).view().processes == ()
    finally:
        store.close()
