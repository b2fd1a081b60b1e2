"""A process's metrics as plain data, merged by addition (or maximum): across threads, across processes.

A snapshot maps each family (:mod:`gateway.telemetry.families`) to its values by label tuple; a value
is a number or a list of numbers (a histogram's bucket counts and sum, a duration's count and
nanoseconds). Merging is pure, associative and commutative, so the supervisor may sum its gateway
processes' snapshots in any order and get what one process counting everything would have counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from gateway.telemetry.families import MERGE, Merge

Value = float | list[float]
Labels = tuple[str, ...]
Snapshot = dict[str, dict[Labels, Value]]


def add_into(target: Snapshot, family: str, labels: Labels, value: Value) -> None:
    """Merge one value into ``target`` (in place), as the family's merge rule says."""
    values = target.setdefault(family, {})
    current = values.get(labels)
    if current is None:
        values[labels] = list(value) if isinstance(value, list) else value
    elif MERGE.get(family, Merge.SUM) is Merge.MAX:
        values[labels] = max(current, value)
    elif isinstance(current, list):
        assert isinstance(value, list)
        if len(value) > len(current):  # a longer list (more buckets) from a newer process
            current.extend([0.0] * (len(value) - len(current)))
        for index, number in enumerate(value):
            current[index] += number
    else:
        assert not isinstance(value, list)
        values[labels] = current + value


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    """One snapshot holding every given one's values merged; the inputs are left as they were."""
    total: Snapshot = {}
    for snapshot in snapshots:
        for family, values in snapshot.items():
            total.setdefault(family, {})  # a family with no values yet is still known
            for labels, value in values.items():
                add_into(total, family, labels, value)
    return total


def to_json(snapshot: Snapshot) -> bytes:
    document = {
        family: [[list(labels), value] for labels, value in values.items()] for family, values in snapshot.items()
    }
    return json.dumps(document, separators=(",", ":")).encode()


def from_json(data: bytes) -> Snapshot:
    document: dict[str, list[list[Any]]] = json.loads(data)
    return {
        family: {tuple(str(label) for label in labels): _value(value) for labels, value in pairs}
        for family, pairs in document.items()
    }


def _value(value: Any) -> Value:
    return [float(v) for v in value] if isinstance(value, list) else float(value)
