"""Per-thread counters: each thread that records gets its own shard, so recording takes no shared lock.

A shard is a dict per family of plain numbers and lists, written only by its own thread. Summing
reads every shard's dicts with ``dict(d)`` and each list with ``list(l)``, copies that the GIL keeps
whole, and merges them; a shard outlives its thread, so nothing counted is lost when a dispatcher
ends. The one lock is taken once per thread, when its shard is registered.
"""

from __future__ import annotations

import threading
from typing import Any

from gateway.telemetry.snapshot import Snapshot, add_into

Shard = dict[str, dict[tuple[Any, ...], Any]]


class ThreadShards:
    def __init__(self, families: tuple[str, ...] = ()) -> None:
        self._families = families  # created in every new shard, so recording never checks for them
        # ``local.shard`` is this thread's shard once registered: the hot path reads it without a call.
        self.local = threading.local()
        self._shards: list[Shard] = []
        self._registering = threading.Lock()

    def mine(self) -> Shard:
        """This thread's shard (registered on its first use)."""
        try:
            shard: Shard = self.local.shard
        except AttributeError:
            shard = {family: {} for family in self._families}
            with self._registering:
                self._shards.append(shard)
            self.local.shard = shard
        return shard

    def totals(self) -> Snapshot:
        """Every shard summed, label values as strings (a version number becomes its decimal text)."""
        with self._registering:
            shards = list(self._shards)
        total: Snapshot = {}
        for shard in shards:
            for family, values in dict(shard).items():
                for key, value in dict(values).items():
                    copied = list(value) if isinstance(value, list) else value
                    add_into(total, family, tuple(str(part) for part in key), copied)
        return total
