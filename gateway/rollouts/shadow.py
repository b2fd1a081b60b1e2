"""Shadow traffic: copies of requests sent to other versions, compared with the primary's answers.

A shadow never touches the caller: its copy is made once the primary has answered, it waits in a
bounded lane of its own (a full lane drops the copy and counts it), and its errors, timeouts and
slowness only ever change the figures. Sending and comparison run on a thread of their own.

Whoever wants each shadow answer as well (capture keeps it as a record of its own, tracing a span)
registers with :meth:`ShadowMirror.tell_answers_to`: each listener is told, on the shadow thread,
about each finished copy, with the primary's request and request id and a route naming the shadow
version.
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.errors import TurnoutError, Unavailable
from gateway.serving.batching import Pending, merge_key_of
from gateway.serving.model_version import ModelVersion
from gateway.serving.observers import Finished, Route, Timings
from runtimes.contract import Arrays
from runtimes.raw_tensors import RawTensor, RawTensors, RowsMismatch, array_of, cut_rows, joined

log = logging.getLogger(__name__)

Acquire = Callable[[str, int], ModelVersion]
ShadowAnswered = Callable[[Sequence[Finished]], None]


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
    paused: int = 0  # not copied: the shadow had failed batch after batch and was paused
    top1_agreed: int = 0
    top1_rows: int = 0
    disagreed: int = 0  # compared copies whose answer differs (:func:`rows_disagreeing`): a rollout's divergence
    latency_sum_s: float = 0.0
    outputs: dict[str, OutputDivergence] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Comparison:
    max_abs_diff: dict[str, float]
    equal_elements: dict[str, tuple[int, int]]  # output -> (equal, compared) elements
    top1_agreed: int
    top1_rows: int
    disagreed: bool = False


# A value differs when it is further than this from the primary's (as numpy's isclose): a rounding
# difference between two runtimes is not a disagreement.
DISAGREE_RTOL = 1e-5
DISAGREE_ATOL = 1e-6


def rows_disagreeing(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Per row (first axis) of two equally shaped outputs, whether the shadow's answer differs:
    for class scores (rows of several floats), its top class; otherwise, any value beyond the tolerance."""
    if ours.ndim == 2 and ours.shape[1] > 1 and ours.dtype.kind == "f":
        return np.asarray(ours.argmax(axis=1) != theirs.argmax(axis=1))
    wide, other = ours.astype(np.float64), theirs.astype(np.float64)
    far = np.abs(wide - other) > DISAGREE_ATOL + DISAGREE_RTOL * np.abs(wide)
    return np.asarray(far.reshape(len(far), -1).any(axis=1)) if far.ndim else np.asarray([bool(far)])


def compare_outputs(primary: Arrays, shadow: Arrays) -> Comparison:
    """Largest absolute difference per output both answers have; arg-max agreement for class scores.

    An output whose shapes differ counts as an infinite difference: the shadow disagrees outright.
    """
    max_abs_diff: dict[str, float] = {}
    equal: dict[str, tuple[int, int]] = {}
    agreed = rows = 0
    disagreed = False
    for name, ours in primary.items():
        theirs = shadow.get(name)
        if theirs is None or ours.dtype.kind not in "biuf" or theirs.dtype.kind not in "biuf":
            continue
        if ours.shape != theirs.shape:
            max_abs_diff[name] = float("inf")
            equal[name] = (0, ours.size)
            disagreed = True
            continue
        disagreed = disagreed or bool(rows_disagreeing(ours, theirs).any())
        equal[name] = (int(np.count_nonzero(ours == theirs)), ours.size)
        difference = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
        max_abs_diff[name] = float(difference.max()) if difference.size else 0.0
        if ours.ndim == 2 and ours.shape[1] > 1 and ours.dtype.kind == "f":
            agreed += int(np.count_nonzero(ours.argmax(axis=1) == theirs.argmax(axis=1)))
            rows += ours.shape[0]
    return Comparison(max_abs_diff, equal, agreed, rows, disagreed)


@dataclass(slots=True)
class BatchComparison:
    """What :func:`compare_batch` found over many copies, summed as the figures keep it."""

    copies: int
    max_abs_diff: dict[str, float]  # the largest difference of any copy
    sum_max_abs_diff: dict[str, float]  # each copy's largest difference, summed
    equal_elements: dict[str, tuple[int, int]]
    top1_agreed: int
    top1_rows: int
    disagreed: int = 0  # copies whose answer differs

    @classmethod
    def of_one(cls, comparison: Comparison) -> BatchComparison:
        """One copy's comparison, in the summed form the figures take."""
        return cls(
            1,
            dict(comparison.max_abs_diff),
            dict(comparison.max_abs_diff),
            dict(comparison.equal_elements),
            comparison.top1_agreed,
            comparison.top1_rows,
            int(comparison.disagreed),
        )


def _comparable_outputs(primary: Arrays, shadow: Arrays) -> list[str]:
    """The numeric outputs both answers have."""
    return [
        name
        for name, ours in primary.items()
        if name in shadow and ours.dtype.kind in "biuf" and shadow[name].dtype.kind in "biuf"
    ]


def compare_batch(primaries: list[Arrays], shadows: list[Arrays]) -> BatchComparison | None:
    """The comparison of many copies in one numpy pass per output, instead of one pass per copy.

    Gives the same figures as :func:`compare_outputs` applied to each pair and summed. Returns None
    when the copies do not line up (an output missing or shaped differently in some copy, a scalar
    output, some copies with outputs in common and others without): compare those one by one.
    """
    names = _comparable_outputs(primaries[0], shadows[0])
    result = BatchComparison(len(primaries), {}, {}, {}, 0, 0)
    if not names:
        # Nothing to compare (a shadow that answers with other outputs): the copies still count as
        # compared, exactly as they would one by one, provided no copy has anything in common.
        return None if any(_comparable_outputs(p, s) for p, s in zip(primaries, shadows, strict=True)) else result
    copy_rows: list[int] | None = None
    copy_differs = np.zeros(len(primaries), dtype=bool)
    for name in names:
        # List comprehensions and numpy do the checking: a missing output, a scalar or a tail shape
        # that differs between copies raises here, and sends the batch back to one by one.
        try:
            ours_parts = [primary[name] for primary in primaries]
            theirs_parts = [shadow[name] for shadow in shadows]
            rows = [part.shape[0] for part in ours_parts]
            if rows != [part.shape[0] for part in theirs_parts] or (copy_rows is not None and rows != copy_rows):
                return None
            ours, theirs = np.concatenate(ours_parts), np.concatenate(theirs_parts)
        except (KeyError, IndexError, ValueError):
            return None
        if ours.shape != theirs.shape or 0 in rows:
            return None
        copy_rows = rows
        starts = np.cumsum([0, *rows[:-1]])
        copy_differs |= np.maximum.reduceat(rows_disagreeing(ours, theirs).astype(np.int8), starts) > 0
        result.equal_elements[name] = (int(np.count_nonzero(ours == theirs)), ours.size)
        difference = np.abs(ours.astype(np.float64) - theirs.astype(np.float64)).reshape(len(ours), -1)
        if difference.shape[1] == 0:
            result.max_abs_diff[name] = result.sum_max_abs_diff[name] = 0.0
            continue
        per_copy = np.maximum.reduceat(difference.max(axis=1), starts)
        result.max_abs_diff[name] = float(per_copy.max())
        result.sum_max_abs_diff[name] = float(per_copy.sum())
        if ours.ndim == 2 and ours.shape[1] > 1 and ours.dtype.kind == "f":
            result.top1_agreed += int(np.count_nonzero(ours.argmax(axis=1) == theirs.argmax(axis=1)))
            result.top1_rows += ours.shape[0]
    result.disagreed = int(np.count_nonzero(copy_differs))
    return result


@dataclass(slots=True)
class _Copy:
    """One mirrored request: its inputs, and the primary's answer it will be compared with."""

    figures: ShadowFigures
    inputs: RawTensors
    rows: int
    merge_key: tuple[Any, ...]  # the request's own: copies merge when their keys are equal
    primary: RawTensors
    queued_at: float
    source: Finished  # the primary's finished request, for whoever wants the shadow's answer too


@dataclass(slots=True)
class _Lane:
    """The copies waiting for one shadow version, and whether a batch of them is running."""

    model: str
    version: int
    copies: deque[_Copy] = field(default_factory=deque)
    busy: bool = False
    next_batch_at: float = 0.0
    failed_batches: int = 0  # in a row; one answered batch starts the count again
    paused_until: float = 0.0


# A shadow whose batches keep failing (errors or timeouts) is paused: its copies are not made, only
# counted, so a broken candidate costs the callers' CPU nothing. The pause starts after this many
# failed batches in a row, lasts a second, and doubles with each failed batch after it, up to half a
# minute; the first batch after a pause is the probe, and one answered batch ends the pausing.
_PAUSE_AFTER_FAILED_BATCHES = 3
_FIRST_PAUSE_S = 1.0
_LONGEST_PAUSE_S = 30.0


def pause_after(failed_batches: int) -> float:
    """Seconds to pause a shadow after ``failed_batches`` failed batches in a row; 0 for none yet."""
    beyond = failed_batches - _PAUSE_AFTER_FAILED_BATCHES
    if beyond < 0:
        return 0.0
    return min(_FIRST_PAUSE_S * 2.0 ** min(beyond, 16), _LONGEST_PAUSE_S)


_Task = tuple[str, Any]


class ShadowMirror:
    """Sends shadow copies, bounds them, and keeps the figures.

    A request observer (:mod:`gateway.serving.observers`): copies are made a primary batch at a time, on
    the dispatcher thread that ran the batch, once its requests are answered (:meth:`observe`): by then
    the primary's answers are known, so nothing has to wait for the two sides to meet, and the callers'
    threads do no shadow work at all. Each shadow version has a lane: a bounded queue of copies (a copy
    that finds it full is dropped and counted) and at most one batch in flight. One shadow thread turns
    everything waiting in a lane into a single batch (one queue entry and one worker round trip however
    many copies it holds), splits the answers and compares them. A lane starts at most one batch per
    ``batch_window_s``: an idle lane sends at once, a busy one gathers copies, so under load a shadow
    costs a round trip per window, not per request, and sheds what it cannot keep up with.
    """

    def __init__(
        self,
        acquire: Acquire,
        max_queued: int,
        timeout_s: float,
        batch_window_s: float = 0.02,
    ) -> None:
        self._acquire = acquire
        self._listeners: tuple[ShadowAnswered, ...] = ()
        self._batch_window_s = batch_window_s
        # Lanes waiting for their batching window, by due time; touched by the shadow thread only.
        self._delayed: list[tuple[float, int, _Lane]] = []
        self._sequence = 0
        self._max_queued = max_queued
        self._timeout_s = timeout_s
        self._figures: dict[tuple[str, int, int], ShadowFigures] = {}
        self._figures_lock = threading.Lock()
        self._lanes: dict[tuple[str, int], _Lane] = {}
        self._lanes_lock = threading.Lock()
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work_forever, name="shadow", daemon=True)
        self._thread.start()

    def tell_answers_to(self, listener: ShadowAnswered) -> None:
        """Tell ``listener`` about every finished shadow copy; registered in the composition root, before
        the gateway serves."""
        self._listeners = (*self._listeners, listener)

    def figures_of(self, model: str) -> list[ShadowFigures]:
        with self._figures_lock:
            return [figures for key, figures in sorted(self._figures.items()) if key[0] == model]

    def every_figures(self) -> list[ShadowFigures]:
        """Every (model, primary, shadow)'s figures since this process began (a rollout's divergence)."""
        with self._figures_lock:
            return [figures for _, figures in sorted(self._figures.items())]

    def _figures_for(self, model: str, primary: int, shadow: int) -> ShadowFigures:
        key = (model, primary, shadow)
        with self._figures_lock:
            found = self._figures.get(key)
            if found is None:
                found = self._figures[key] = ShadowFigures(model, primary, shadow)
            return found

    needs_request_id = False  # it hands the primary's id on to its listeners, which read ids themselves

    def wants(self, route: Route | None) -> bool:
        """Only requests that routing gave shadows are copied."""
        return route is not None and bool(route.shadows)

    def observe(self, finished: Sequence[Finished]) -> None:
        """Queue a copy of each answered request for each shadow version routing chose for it.

        Runs on the dispatcher thread of the primary version, after the callers have their answers
        (the request observers' seam); it only appends to lanes and never blocks.
        """
        now = time.monotonic()
        by_shadow: dict[tuple[str, int, int], list[_Copy]] = {}
        paused: dict[tuple[str, int, int], int] = {}
        for item in finished:
            route = item.route
            if item.outputs is None or item.inputs is None or route is None:
                continue  # the primary failed: nothing to compare a shadow with
            merge_key = None
            for shadow in route.shadows:
                key = (route.model, route.version, shadow)
                copies = by_shadow.get(key)
                if copies is None:
                    if key in paused or self._is_paused(route.model, shadow, now):
                        paused[key] = paused.get(key, 0) + 1
                        continue
                    copies = by_shadow[key] = []
                figures = copies[0].figures if copies else self._figures_for(*key)
                merge_key = merge_key or merge_key_of(item.inputs)
                copies.append(_Copy(figures, item.inputs, item.rows, merge_key, item.outputs, now, item))
        for (model, _, shadow), copies in by_shadow.items():
            self._enqueue(model, shadow, copies)
        for key, count in paused.items():
            figures = self._figures_for(*key)
            with figures.lock:
                figures.paused += count

    def _is_paused(self, model: str, shadow: int, now: float) -> bool:
        lane = self._lanes.get((model, shadow))  # a lane is never removed, and a float is read whole
        return lane is not None and lane.paused_until > now

    def _enqueue(self, model: str, shadow: int, copies: list[_Copy]) -> None:
        figures = copies[0].figures
        with self._lanes_lock:
            lane = self._lanes.get((model, shadow))
            if lane is None:
                lane = self._lanes[(model, shadow)] = _Lane(model, shadow)
            room = max(self._max_queued - len(lane.copies), 0)
            lane.copies.extend(copies[:room])
            wake = not lane.busy and room > 0
            lane.busy = lane.busy or room > 0
        with figures.lock:
            figures.mirrored += min(room, len(copies))
            figures.dropped += max(len(copies) - room, 0)
        if wake:  # one wake-up per batch: a busy lane is picked up again when its batch returns
            self._tasks.put(("lane", lane))

    def close(self) -> None:
        self._tasks.put(None)
        self._thread.join(timeout=5)

    def _next_task(self) -> _Task | None:
        """The next task; a lane whose batching window has passed comes first."""
        while True:
            if self._delayed:
                wait = self._delayed[0][0] - time.monotonic()
                if wait <= 0:
                    return ("lane", heapq.heappop(self._delayed)[2])
            else:
                wait = None
            try:
                return self._tasks.get(timeout=wait)
            except queue.Empty:
                continue

    def _work_forever(self) -> None:
        while (task := self._next_task()) is not None:
            kind, item = task
            try:
                if kind == "lane":
                    self._run_lane(item)
                else:
                    self._finish_batch(*item)
            except Exception:  # a shadow bug must not stop the shadows, and never reaches a caller
                log.exception("shadow work failed")

    def _take_batch(self, lane: _Lane, max_rows: int) -> list[_Copy]:
        """The oldest waiting copies that fit one batch; copies past the timeout fail here."""
        batch: list[_Copy] = []
        expired: list[_Copy] = []
        now = time.monotonic()
        rows = 0
        with self._lanes_lock:
            while lane.copies:
                head = lane.copies[0]
                if now - head.queued_at > self._timeout_s:
                    expired.append(lane.copies.popleft())
                    continue
                if batch and (rows + head.rows > max_rows or head.merge_key != batch[0].merge_key):
                    break
                batch.append(lane.copies.popleft())
                rows += head.rows
            if not batch:
                lane.busy = False
        self._fail(expired)
        return batch

    def _run_lane(self, lane: _Lane) -> None:
        if time.monotonic() < lane.paused_until:  # copies queued before the pause are not sent either
            while batch := self._take_batch(lane, max_rows=1 << 30):  # the last, empty take frees the lane
                self._set_aside(batch)
            return
        if time.monotonic() < lane.next_batch_at:  # let copies gather: one round trip per window
            self._sequence += 1
            heapq.heappush(self._delayed, (lane.next_batch_at, self._sequence, lane))
            return
        try:
            version = self._acquire(lane.model, lane.version)
        except TurnoutError:  # not READY (any more): these copies fail; the lane goes on with the rest
            batch = self._take_batch(lane, max_rows=1 << 30)
            self._fail(batch)
            if batch:
                self._tasks.put(("lane", lane))
            return
        plan = version.plan
        batch = self._take_batch(lane, max(plan.max_batch_size if plan is not None else 1, 1))
        if not batch:
            version.release()
            return
        started = time.monotonic()
        lane.next_batch_at = started + self._batch_window_s
        merged = {name: _rows_of(batch, name) for name in batch[0].inputs}
        # Every output: the comparison wants all of them, whatever the callers asked for.
        copy = Pending(
            merged,
            sum(c.rows for c in batch),
            [],
            lambda done: self._tasks.put(("done", (lane, version, batch, done, started))),
        )
        try:
            version.submit(copy)
        except TurnoutError:  # its queue is full or it is unloading
            version.release()
            self._fail(batch)
            self._tasks.put(("lane", lane))

    def _finish_batch(
        self, lane: _Lane, version: ModelVersion, batch: list[_Copy], done: Pending, started: float
    ) -> None:
        version.release()
        latency = time.monotonic() - started
        if done.error is not None or done.outputs is None or latency > self._timeout_s:
            log.debug("shadow %s failed: %s", version.label, done.error or f"no answer within {self._timeout_s}s",
                      extra={"model": lane.model, "version": lane.version})  # fmt: skip
            self._fail(batch)
            self._count_failed_batch(lane, version.label)
            error = done.error or Unavailable(f"{version.label}: no shadow answer within {self._timeout_s}s")
            self._report(lane, batch, None, error, latency)
        else:
            lane.failed_batches = 0
            assert done.outputs is not None
            self._compare(batch, done.outputs, latency)
            self._report(lane, batch, done.outputs, None, latency)
        self._run_lane(lane)

    def _report(
        self, lane: _Lane, batch: list[_Copy], outputs: RawTensors | None, error: TurnoutError | None, latency_s: float
    ) -> None:
        """Tell the listeners about each copy of a finished shadow batch; a listener's failure is only logged."""
        if not self._listeners:
            return
        timings = Timings(time.time_ns() - int(latency_s * 1e9), latency_s, 0.0, latency_s)
        answers = _outputs_per_copy(batch, outputs) if outputs is not None else [None] * len(batch)
        finished = []
        for item, answer in zip(batch, answers, strict=True):
            source = item.source
            assert source.route is not None
            route = source.route._replace(version=lane.version, shadows=())
            finished.append(Finished(
                source.request, route, item.inputs, item.rows, answer, error, timings, None, source.request_id
            ))  # fmt: skip
        for listener in self._listeners:
            try:
                listener(finished)
            except Exception:  # whoever listens must not stop the shadows, nor the next listener
                log.exception("a shadow answers' listener failed")

    @staticmethod
    def _count_failed_batch(lane: _Lane, label: str) -> None:
        lane.failed_batches += 1
        pause_s = pause_after(lane.failed_batches)
        if pause_s:
            lane.paused_until = time.monotonic() + pause_s
            log.warning(
                "shadow %s failed %d batches in a row; its copies are paused for %.0f s",
                label, lane.failed_batches, pause_s,
                extra={"model": lane.model, "version": lane.version},
            )

    def _compare(self, batch: list[_Copy], outputs: RawTensors, latency_s: float) -> None:
        """Split a shadow batch's answers per copy and add them to the figures, a primary at a time."""
        groups: dict[int, tuple[ShadowFigures, list[Arrays], list[Arrays]]] = {}
        answers = _arrays_per_copy(batch, outputs)
        for item, answer in zip(batch, answers, strict=True):
            figures, primaries, shadows = groups.setdefault(id(item.figures), (item.figures, [], []))
            primaries.append({name: array_of(tensor) for name, tensor in item.primary.items()})
            shadows.append(answer)
        for figures, primaries, shadows in groups.values():
            together = compare_batch(primaries, shadows) if len(primaries) > 1 else None
            parts = (
                [together]
                if together is not None
                else [BatchComparison.of_one(compare_outputs(p, s)) for p, s in zip(primaries, shadows, strict=True)]
            )
            with figures.lock:
                for part in parts:
                    self._add(figures, latency_s, part)

    @staticmethod
    def _set_aside(batch: list[_Copy]) -> None:
        """Count copies that were queued when their shadow was paused; they are not sent."""
        for figures, paused in _per_figures(batch):
            with figures.lock:
                figures.mirrored -= paused
                figures.paused += paused

    @staticmethod
    def _fail(batch: list[_Copy]) -> None:
        for figures, failed in _per_figures(batch):
            with figures.lock:
                figures.failed += failed

    @staticmethod
    def _add(figures: ShadowFigures, latency_s: float, comparison: BatchComparison) -> None:
        figures.compared += comparison.copies
        figures.latency_sum_s += latency_s * comparison.copies
        figures.top1_agreed += comparison.top1_agreed
        figures.top1_rows += comparison.top1_rows
        figures.disagreed += comparison.disagreed
        for name, difference in comparison.max_abs_diff.items():
            output = figures.outputs.setdefault(name, OutputDivergence())
            output.max_abs_diff = max(output.max_abs_diff, difference)
            output.sum_max_abs_diff += comparison.sum_max_abs_diff[name]
            output.compared += comparison.copies
            equal_elements, elements = comparison.equal_elements[name]
            output.equal_elements += equal_elements
            output.elements += elements


def _per_figures(batch: list[_Copy]) -> list[tuple[ShadowFigures, int]]:
    """The copies of a batch counted by the figures they belong to (a batch may mix primaries)."""
    counts: dict[int, tuple[ShadowFigures, int]] = {}
    for item in batch:
        figures, count = counts.get(id(item.figures), (item.figures, 0))
        counts[id(item.figures)] = (figures, count + 1)
    return list(counts.values())


def _rows_of(batch: list[_Copy], name: str) -> RawTensor:
    return joined([item.inputs[name] for item in batch])


def _outputs_per_copy(batch: list[_Copy], outputs: RawTensors) -> list[RawTensors | None]:
    """A shadow batch's raw outputs cut into each copy's rows; None for a copy when they cannot be cut."""
    rows = [item.rows for item in batch]
    per_copy: list[RawTensors | None] = [{} for _ in batch]
    for name, tensor in outputs.items():
        try:
            pieces = cut_rows(tensor, rows)
        except RowsMismatch:
            return [None] * len(batch)
        for answer, piece in zip(per_copy, pieces, strict=True):
            assert answer is not None
            answer[name] = piece
    return per_copy


def _arrays_per_copy(batch: list[_Copy], outputs: RawTensors) -> list[Arrays]:
    """A shadow batch's outputs as arrays, cut into each copy's rows (views, not copies)."""
    rows = [item.rows for item in batch]
    per_copy: list[Arrays] = [{} for _ in batch]
    for name, tensor in outputs.items():
        try:
            pieces = [array_of(piece) for piece in cut_rows(tensor, rows)]
        except RowsMismatch:
            # A shape the comparison cannot cut per copy: each copy sees it whole, and the
            # comparison reports the outputs that do not match.
            pieces = [array_of(tensor)] * len(batch)
        for answer, piece in zip(per_copy, pieces, strict=True):
            answer[name] = piece
    return per_copy
