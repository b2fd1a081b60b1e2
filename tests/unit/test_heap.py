"""Freezing the start-up heap: garbage is collected first, what lives is kept out of later collections."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from runtimes.heap import YOUNG_GENERATION_THRESHOLD, freeze_startup_heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_collector")
def test_garbage_is_collected_then_the_living_heap_is_frozen() -> None:
    kept = Node()
    garbage = weakref.ref(Node())
    assert garbage() is not None  # a cycle outlives its last reference until a collection
    frozen = freeze_startup_heap()
    assert garbage() is None
    assert all(o is not kept for o in gc.get_objects())  # frozen objects belong to no generation
    assert frozen == gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == YOUNG_GENERATION_THRESHOLD
