"""The shadow mirror's bookkeeping: copies are made per answered batch, bounded, and accounted for.

No model runs here: the version a lane would send to is never READY, so every copy that reaches
the shadow thread fails, which is the path these tests need to see the counts settle.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from gateway.errors import Unavailable
from gateway.rollouts.shadow import ShadowFigures, ShadowMirror, pause_after
from gateway.routing.decide import Arm, Reason
from gateway.serving.inference_types import InferRequest
from gateway.serving.model_version import ModelVersion
from gateway.serving.observers import Finished, Route, Timings
from runtimes.raw_tensors import raw_of


def answered(rows: int, shadows: tuple[int, ...], failed: bool = False) -> Finished:
    """A request of model "m" that version 1 answered (or failed), with the shadows routing chose."""
    outputs = None if failed else {"y": raw_of(np.zeros((rows, 2), np.float32))}
    error = Unavailable("the primary failed") if failed else None
    route = Route("m", 1, Arm.STABLE, 1, Reason.NO_CANARY, shadows)
    request = InferRequest("m", "", "", [])
    inputs = {"x": raw_of(np.zeros((rows, 4), np.float32))}
    return Finished(request, route, inputs, rows, outputs, error, Timings(0, 0.001, 0.0, 0.001))


class GatedVersions:
    """An ``acquire`` that holds the shadow thread until the test opens the gate, then refuses."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.asked: list[tuple[str, int]] = []

    def __call__(self, model: str, version: int) -> ModelVersion:
        self.asked.append((model, version))
        self.gate.wait(10)
        raise Unavailable(f"version {version} of model {model!r} is not READY")


@pytest.fixture
def versions() -> GatedVersions:
    return GatedVersions()


@pytest.fixture
def mirror(versions: GatedVersions) -> Iterator[ShadowMirror]:
    shadows = ShadowMirror(versions, max_queued=4, timeout_s=5.0)
    yield shadows
    versions.gate.set()
    shadows.close()


def figures_by_shadow(mirror: ShadowMirror) -> dict[int, ShadowFigures]:
    return {figures.shadow_version: figures for figures in mirror.figures_of("m")}


def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def test_a_batch_is_copied_to_each_shadow_its_requests_name(mirror: ShadowMirror, versions: GatedVersions) -> None:
    batch = [answered(1, (7,)), answered(2, (7, 8)), answered(1, (8,))]
    mirror.observe(batch)
    figures = figures_by_shadow(mirror)
    assert (figures[7].primary_version, figures[7].mirrored, figures[8].mirrored) == (1, 2, 2)
    versions.gate.set()
    eventually(lambda: all(f.failed == 2 for f in figures_by_shadow(mirror).values()))
    assert all(f.compared == 0 and f.dropped == 0 for f in figures_by_shadow(mirror).values())


def test_a_full_lane_drops_and_counts_what_does_not_fit(mirror: ShadowMirror, versions: GatedVersions) -> None:
    mirror.observe([answered(1, (7,)) for _ in range(3)])
    eventually(lambda: versions.asked == [("m", 7)])  # the lane (4 copies at most) is busy and holds 3
    mirror.observe([answered(1, (7,)) for _ in range(6)])
    figures = figures_by_shadow(mirror)[7]
    assert (figures.mirrored, figures.dropped) == (4, 5)
    versions.gate.set()
    eventually(lambda: figures_by_shadow(mirror)[7].failed == 4)


def test_it_wants_only_requests_routed_to_shadows(mirror: ShadowMirror) -> None:
    assert mirror.wants(Route("m", 1, Arm.STABLE, 1, Reason.RANDOM, (2,)))
    assert not mirror.wants(Route("m", 1, Arm.STABLE, 1, Reason.RANDOM))
    assert not mirror.wants(None)


def test_requests_whose_primary_failed_are_not_mirrored(mirror: ShadowMirror) -> None:
    mirror.observe([answered(1, (7,), failed=True)])
    assert mirror.figures_of("m") == []


def test_a_shadow_is_paused_after_three_failed_batches_for_a_doubling_time() -> None:
    assert [pause_after(n) for n in range(8)] == [0, 0, 0, 1, 2, 4, 8, 16]
    assert pause_after(9) == pause_after(10_000) == 30, "at most half a minute"
