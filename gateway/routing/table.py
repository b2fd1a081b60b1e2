"""The routing table: every model's policy in effect, as one immutable snapshot with a generation.

A request reads the table once and keeps that snapshot for its whole life; a policy change builds a
new table and swaps the reference, so readers never lock and never see half a change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gateway.routing.policy import Policy


@dataclass(frozen=True, slots=True)
class ModelRoute:
    policy: Policy
    generation: int


@dataclass(frozen=True, slots=True)
class RoutingTable:
    generation: int = 0
    routes: Mapping[str, ModelRoute] = field(default_factory=lambda: MappingProxyType({}))


class RoutingTableHolder:
    """Holds the current table; assignment of one reference is atomic, so no lock is needed to read."""

    def __init__(self) -> None:
        self.current = RoutingTable()

    def swap(self, table: RoutingTable) -> None:
        if table.generation >= self.current.generation:  # never step back to an older snapshot
            self.current = table
