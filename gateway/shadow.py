"""Shadow traffic: copies of requests sent to other versions, compared with the primary's answers.

A shadow never touches the caller: its copy is queued after the primary is, on the shadow version's
own queue, under its own concurrency cap (a full cap drops the copy and counts it), and its errors,
timeouts and slowness only ever change the figures. Comparison runs on a thread of its own.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gateway.batching import Arrays, Pending
from gateway.errors import TurnoutError
from gateway.model_version import ModelVersion

log = logging.getLogger(__name__)

Acquire = Callable[[str, int], ModelVersion]


@dataclass(slots=True)
class OutputDivergence:
    max_abs_diff: float = 0.0
    sum_max_abs_diff: float = 0.0
    compared: int = 0
    equal_elements: int = 0  # exact agreement, the useful figure for labels and other integer outputs
    elements: int = 0


@dataclass(slots=True)
class ShadowFigures:
    """Running figures for one (model, primary version, shadow version)."""

    model: str
    primary_version: int
    shadow_version: int
    mirrored: int = 0
    compared: int = 0
    failed: int = 0
    dropped: int = 0
    top1_agreed: int = 0
    top1_rows: int = 0
    latency_sum_s: float = 0.0
    outputs: dict[str, OutputDivergence] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, counter: str) -> None:
        """Add one to ``mirrored``, ``failed`` or ``dropped``; callers race, so under the lock."""
        with self.lock:
            setattr(self, counter, getattr(self, counter) + 1)


@dataclass(frozen=True, slots=True)
class Comparison:
    max_abs_diff: dict[str, float]
    equal_elements: dict[str, tuple[int, int]]  # output -> (equal, compared) elements
    top1_agreed: int
    top1_rows: int


def compare_outputs(primary: Arrays, shadow: Arrays) -> Comparison:
    """Largest absolute difference per output both answers have; arg-max agreement for class scores.

    An output whose shapes differ counts as an infinite difference: the shadow disagrees outright.
    """
    max_abs_diff: dict[str, float] = {}
    equal: dict[str, tuple[int, int]] = {}
    agreed = rows = 0
    for name, ours in primary.items():
        theirs = shadow.get(name)
        if theirs is None or ours.dtype.kind not in "biuf" or theirs.dtype.kind not in "biuf":
            continue
        if ours.shape != theirs.shape:
            max_abs_diff[name] = float("inf")
            equal[name] = (0, ours.size)
            continue
        equal[name] = (int(np.count_nonzero(ours == theirs)), ours.size)
        difference = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
        max_abs_diff[name] = float(difference.max()) if difference.size else 0.0
        if ours.ndim == 2 and ours.shape[1] > 1 and ours.dtype.kind == "f":
            agreed += int(np.count_nonzero(ours.argmax(axis=1) == theirs.argmax(axis=1)))
            rows += ours.shape[0]
    return Comparison(max_abs_diff, equal, agreed, rows)


class ShadowPair:
    """The primary and shadow answers of one request; compared once both are in."""

    __slots__ = ("_lock", "figures", "primary", "shadow", "shadow_latency_s", "sides")

    def __init__(self, figures: ShadowFigures) -> None:
        self.figures = figures
        self.primary: Arrays | None = None
        self.shadow: Arrays | None = None
        self.shadow_latency_s = 0.0
        self.sides = 0
        self._lock = threading.Lock()

    def arrive(self) -> bool:
        """Count one side in; True for the side that completes the pair."""
        with self._lock:
            self.sides += 1
            return self.sides == 2


class ShadowMirror:
    """Sends shadow copies, enforces the cap, and keeps the figures."""

    def __init__(self, acquire: Acquire, max_in_flight: int, timeout_s: float) -> None:
        self._acquire = acquire
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._timeout_s = timeout_s
        self._figures: dict[tuple[str, int, int], ShadowFigures] = {}
        self._figures_lock = threading.Lock()
        self._completed: queue.SimpleQueue[ShadowPair | None] = queue.SimpleQueue()
        self._comparer = threading.Thread(target=self._compare_forever, name="shadow-compare", daemon=True)
        self._comparer.start()

    def figures_of(self, model: str) -> list[ShadowFigures]:
        with self._figures_lock:
            return [figures for key, figures in sorted(self._figures.items()) if key[0] == model]

    def _figures_for(self, model: str, primary: int, shadow: int) -> ShadowFigures:
        key = (model, primary, shadow)
        with self._figures_lock:
            found = self._figures.get(key)
            if found is None:
                found = self._figures[key] = ShadowFigures(model, primary, shadow)
            return found

    def mirror(self, model: str, primary: int, shadow: int, inputs: Arrays, rows: int) -> ShadowPair | None:
        """Queue a copy for ``shadow``; returns the pair the primary's answer must be given to, or None."""
        figures = self._figures_for(model, primary, shadow)
        if not self._slots.acquire(blocking=False):
            figures.count("dropped")
            return None
        try:
            version = self._acquire(model, shadow)
        except TurnoutError:
            self._slots.release()
            figures.count("failed")
            return None
        pair = ShadowPair(figures)
        started = time.monotonic()

        def shadow_done(pending: Pending) -> None:
            version.release()
            self._slots.release()
            pair.shadow_latency_s = time.monotonic() - started
            pair.shadow = pending.outputs if pending.error is None else None
            if pending.error is not None:
                log.debug("shadow %s failed: %s", version.label, pending.error)
            if pair.arrive():
                self._completed.put(pair)

        # Every output: the comparison wants all of them, whatever the caller asked for.
        copy = Pending(inputs, rows, [], shadow_done)
        try:
            version.submit(copy)
        except TurnoutError:  # its queue is full or it is unloading: the copy is dropped
            version.release()
            self._slots.release()
            figures.count("dropped")
            return None
        copy.expires_at = min(copy.expires_at, started + self._timeout_s)
        figures.count("mirrored")
        return pair

    def primary_answered(self, pair: ShadowPair, outputs: Arrays | None) -> None:
        """Hand over the primary's answer (None if it failed); never blocks the caller."""
        pair.primary = outputs
        if pair.arrive():
            self._completed.put(pair)

    def close(self) -> None:
        self._completed.put(None)
        self._comparer.join(timeout=5)

    def _compare_forever(self) -> None:
        while (pair := self._completed.get()) is not None:
            try:
                self._record(pair)
            except Exception:  # a comparison bug must not stop the figures
                log.exception("shadow comparison failed")

    def _record(self, pair: ShadowPair) -> None:
        figures = pair.figures
        if pair.shadow is None or pair.shadow_latency_s > self._timeout_s:
            figures.count("failed")
            return
        if pair.primary is None:
            return  # nothing to compare against; the primary's failure is the caller's business
        comparison = compare_outputs(pair.primary, pair.shadow)
        with figures.lock:
            self._add(figures, pair, comparison)

    @staticmethod
    def _add(figures: ShadowFigures, pair: ShadowPair, comparison: Comparison) -> None:
        figures.compared += 1
        figures.latency_sum_s += pair.shadow_latency_s
        figures.top1_agreed += comparison.top1_agreed
        figures.top1_rows += comparison.top1_rows
        for name, difference in comparison.max_abs_diff.items():
            output = figures.outputs.setdefault(name, OutputDivergence())
            output.max_abs_diff = max(output.max_abs_diff, difference)
            output.sum_max_abs_diff += difference
            output.compared += 1
            equal_elements, elements = comparison.equal_elements[name]
            output.equal_elements += equal_elements
            output.elements += elements
