"""Stored rows to records, and policies to stored text: the decoding both state stores share.

The SQLite and PostgreSQL stores keep the same columns in the same order and select them in that
order, so one conversion serves both; only the SQL (placeholders, table names, locking) differs
and stays in each store.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.routing.policy import Policy, policy_from_dict, policy_to_dict
from gateway.state.arm_totals_record import PublishedTotals, arms_from_json
from gateway.state.rollout_record import RolloutRecord, record_from_json
from gateway.state.store import (
    Lease,
    PolicyChange,
    ProcessReport,
    RefusedCall,
    RepositoryRequest,
    StoredPolicy,
)

Row = Sequence[Any]


def encode_policy(policy: Policy | None) -> str | None:
    """A policy as stored: JSON with sorted keys, so the same policy is always the same text."""
    return None if policy is None else json.dumps(policy_to_dict(policy), sort_keys=True)


def decode_policy(text: str | None) -> Policy | None:
    return None if text is None else policy_from_dict(json.loads(text))


def require_policy(policy: Policy | None) -> Policy:
    if policy is None:
        raise ValueError("history row without an 'after' policy")
    return policy


def history_values(change: PolicyChange) -> tuple[Any, ...]:
    """A change as a history row: model, generation, at, actor, action, reason, before, after."""
    return (
        change.model,
        change.generation,
        change.at,
        change.actor,
        change.action,
        change.reason,
        encode_policy(change.before),
        encode_policy(change.after),
    )


def stored_policies(rows: Iterable[Row]) -> dict[str, StoredPolicy]:
    """Rows of (model, policy, generation)."""
    return {model: StoredPolicy(policy_from_dict(json.loads(text)), generation) for model, text, generation in rows}


def policy_changes(rows: Iterable[Row]) -> list[PolicyChange]:
    """Rows of (model, generation, at, actor, action, reason, before, after)."""
    return [
        PolicyChange(
            model, generation, at, actor, action, reason, decode_policy(before), require_policy(decode_policy(after))
        )
        for model, generation, at, actor, action, reason, before, after in rows
    ]


def replaced_stable_versions(rows: Iterable[Row]) -> set[int]:
    """Rows of (before,), none of them NULL: the stable version each replaced policy had."""
    return {require_policy(decode_policy(before)).stable for (before,) in rows}


def refused_calls(rows: Iterable[Row]) -> list[RefusedCall]:
    """Rows of (model, at, actor, action, detail)."""
    return [RefusedCall(*row) for row in rows]


def repository_requests(rows: Iterable[Row]) -> dict[str, RepositoryRequest]:
    """Rows of (model, action, generation, at, actor), by model."""
    return {row[0]: RepositoryRequest(*row) for row in rows}


def process_reports(rows: Iterable[Row]) -> list[ProcessReport]:
    """Rows of (process_id, pid, applied_generation, seen_at, host)."""
    return [ProcessReport(*row) for row in rows]


def published_totals(rows: Iterable[Row]) -> list[PublishedTotals]:
    """Rows of (process_id, started_at, seen_at, arms)."""
    return [PublishedTotals(row[0], row[1], row[2], arms_from_json(row[3])) for row in rows]


def lease_from_row(row: Row | None) -> Lease | None:
    """A row of (name, holder, expires_at), or None where there is no lease."""
    return None if row is None else Lease(*row)


def rollout_from_row(row: Row | None) -> RolloutRecord | None:
    """A row of (record,), or None where the model has no rollout."""
    return None if row is None else record_from_json(row[0])


def rollout_records(rows: Iterable[Row]) -> list[RolloutRecord]:
    """Rows of (record,)."""
    return [record_from_json(row[0]) for row in rows]
