"""The counted gate that model versions and the edge drain through."""

from __future__ import annotations

import threading
import time

from gateway.serving.in_flight import InFlight


def test_a_closed_gate_refuses_and_an_opened_one_counts() -> None:
    gate = InFlight(is_open=False)
    assert not gate.enter() and gate.count == 0
    gate.open()
    assert gate.enter() and gate.enter() and gate.count == 2
    gate.leave()
    assert gate.count == 1


def test_closing_refuses_new_entries_and_waits_for_the_ones_inside() -> None:
    gate = InFlight()
    assert gate.enter()
    threading.Timer(0.1, gate.leave).start()
    started = time.monotonic()
    assert gate.close_and_wait(5.0)
    assert 0.05 < time.monotonic() - started < 4.0
    assert not gate.enter() and gate.count == 0


def test_closing_gives_up_after_its_timeout_and_says_so() -> None:
    gate = InFlight()
    assert gate.enter()
    assert not gate.close_and_wait(0.05)
    assert gate.count == 1 and not gate.enter()


def test_an_idle_gate_closes_at_once() -> None:
    assert InFlight().close_and_wait(0.0)
