"""The row decoding both state stores share: policies as stored text, and history rows as changes."""

from __future__ import annotations

import pytest

from gateway.routing.policy import Canary, Policy, Shadow
from gateway.state import stored_rows
from gateway.state.store import PolicyChange


def test_a_policy_comes_back_as_it_was_stored_and_the_same_policy_is_the_same_text() -> None:
    policy = Policy(stable=2, canary=Canary(3, 500), shadows=(Shadow(4, 0.25),), sticky_key="user")
    text = stored_rows.encode_policy(policy)
    assert stored_rows.decode_policy(text) == policy
    assert text == stored_rows.encode_policy(
        Policy(stable=2, canary=Canary(3, 500), shadows=(Shadow(4, 0.25),), sticky_key="user")
    )
    assert stored_rows.encode_policy(None) is None and stored_rows.decode_policy(None) is None


def test_a_change_written_as_a_history_row_reads_back_as_the_same_change() -> None:
    change = PolicyChange("digits", 7, 1000.5, "alice", "set-policy", "why", Policy(stable=1), Policy(stable=2))
    assert stored_rows.policy_changes([stored_rows.history_values(change)]) == [change]
    assert stored_rows.replaced_stable_versions([(stored_rows.encode_policy(change.before),)]) == {1}


def test_a_history_row_without_an_after_policy_is_refused() -> None:
    row = ("digits", 7, 1000.5, "alice", "set-policy", "why", None, None)
    with pytest.raises(ValueError, match="without an 'after' policy"):
        stored_rows.policy_changes([row])
