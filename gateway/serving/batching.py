"""Dynamic batching: a bounded queue per model version, and the loop that runs its batches.

Requests wait in a :class:`BatchQueue`. A dispatcher thread per model instance takes the oldest
request plus every queued request that can join it (same shape apart from the first axis, rows
within ``max_batch_size``), waiting up to ``max_queue_delay`` for more when the batch is not full,
and hands the parts to its host uncopied. Outputs are cut back into per-request views. Tensors stay
in raw form throughout (:mod:`runtimes.raw_tensors`).

Before it takes a batch, a dispatcher gathers: it yields the CPU, and goes on yielding until two
yields in a row let no request in (at most :data:`GATHER_YIELDS` times). A dispatcher woken by its
model's answer is the thread the kernel favours, so without this it took whatever a few request
threads had queued by then, while the threads holding the other requests waited for a CPU: at 64
in flight on one CPU, batches of 3 rows. Gathering is not a delay: with nothing else ready to run
a yield returns at once, so a lone request pays two system calls.

A request's deadline travels in its queue entry: one whose deadline passes while it waits is answered
DEADLINE_EXCEEDED and never reaches a worker, and a batch whose requests have all expired is not run.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import DeadlineExceeded, Internal, TurnoutError, Unavailable
from runtimes.raw_tensors import RawTensors, RowsMismatch, cut_rows

log = logging.getLogger(__name__)

# Yields a dispatcher makes at most while requests keep arriving, before it takes a batch. The cap
# only bounds a steady stream from other CPUs: gathering ends after GATHER_IDLE_YIELDS yields in a row
# that let nothing in. Two, not one: a yield can go to a thread that queues nothing (the shadow
# thread, the policy sync), and with one such yield ending it, 100% shadows cost the caller 17% more
# CPU per request at 64 in flight instead of 3% (docs/architecture.md).
GATHER_YIELDS = 32
GATHER_IDLE_YIELDS = 2
# The deadline of a request that has none (time.monotonic() seconds).
NO_DEADLINE = float("inf")


class Pending:
    """One request waiting for its batch: its inputs, and the slot its answer lands in.

    A caller either blocks in :meth:`wait` or passes ``on_done``, which the dispatcher calls.
    ``ticket`` is the caller's, handed back to it with the batch once answered (the request
    observers' seam, :mod:`gateway.serving.observers`); batching never reads it.
    """

    __slots__ = (
        "_done",
        "abandoned",
        "deadline",
        "dispatched_at",
        "enqueued_at",
        "error",
        "expires_at",
        "inputs",
        "merge_key",
        "on_done",
        "output_names",
        "outputs",
        "rows",
        "ticket",
    )

    def __init__(
        self,
        inputs: RawTensors,
        rows: int,
        output_names: Sequence[str],
        on_done: Callable[[Pending], None] | None = None,
        ticket: object = None,
        deadline: float = NO_DEADLINE,
    ) -> None:
        """``deadline``: the caller's, in time.monotonic() seconds; still queued then, the request is
        answered DEADLINE_EXCEEDED instead of run."""
        self.inputs = inputs
        self.rows = rows
        self.output_names = output_names
        self.merge_key = merge_key_of(inputs)
        self.on_done = on_done
        self.outputs: RawTensors | None = None
        self.error: TurnoutError | None = None
        self.enqueued_at = 0.0
        self.dispatched_at = 0.0
        self.deadline = deadline
        self.expires_at = deadline  # the earlier of the deadline and the queue's timeout, once queued
        self.abandoned = False
        self.ticket = ticket
        self._done = threading.Lock()
        self._done.acquire()

    def resolve(self, outputs: RawTensors | None, error: TurnoutError | None = None) -> None:
        self.outputs, self.error = outputs, error
        if self.on_done is not None:
            try:
                self.on_done(self)
            except Exception:  # a broken callback must not end the dispatcher thread that calls it
                log.exception("the completion callback of a request failed")
        else:
            self._done.release()

    def wait(self, timeout_s: float | None) -> RawTensors:
        """Block until answered; raises the request's error, or DeadlineExceeded after ``timeout_s``."""
        if not self._done.acquire(timeout=-1 if timeout_s is None else max(timeout_s, 0.0)):
            self.abandoned = True
            raise DeadlineExceeded(f"no answer within the deadline ({timeout_s:.3f}s)")
        if self.error is not None:
            raise self.error
        assert self.outputs is not None
        return self.outputs


def merge_key_of(inputs: RawTensors) -> tuple[Any, ...]:
    """Requests merge into one batch only when every input agrees on everything but the first axis."""
    return tuple([(name, tensor.shape[1:], tensor.datatype) for name, tensor in inputs.items()])


@dataclass(frozen=True, slots=True)
class BatchingSettings:
    max_batch_size: int  # 0: the model has no batch axis; requests run one by one
    max_queue_delay_s: float
    max_queue_size: int
    queue_timeout_s: float | None
    # Queued rows that reach one of these sizes end the wait for more (Triton's preferred_batch_size).
    preferred_batch_sizes: frozenset[int] = frozenset()


class BatchQueue:
    """A bounded FIFO of pending requests from which dispatchers take batches."""

    def __init__(
        self, label: str, settings: BatchingSettings, yield_cpu: Callable[[], None] = os.sched_yield
    ) -> None:
        self._label = label
        self._settings = settings
        self._yield_cpu = yield_cpu
        self._items: deque[Pending] = deque()
        self._rows = 0
        self._closed = False
        # Dispatchers asleep in _wait, each on a lock of its own (a bell) that put() or close()
        # releases: two C-level lock operations per wake-up, where a Condition's wait and notify
        # run Python code for every lone request. put() rings one bell, and only when one waits.
        self._sleeping: deque[threading.Lock] = deque()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Pending) -> None:
        """Queue a request; raises Unavailable when the queue is full or closed."""
        now = time.monotonic()
        item.enqueued_at = now
        if self._settings.queue_timeout_s is not None:
            item.expires_at = min(item.deadline, now + self._settings.queue_timeout_s)
        with self._lock:
            if self._closed:
                raise Unavailable(f"{self._label} is unloading and accepts no new requests")
            if len(self._items) >= self._settings.max_queue_size:
                raise Unavailable(
                    f"{self._label} has {len(self._items)} requests queued, its limit (max_queue_size); retry later"
                )
            self._items.append(item)
            self._rows += item.rows
            if self._sleeping:
                self._sleeping.popleft().release()

    def close(self) -> None:
        """Refuse new requests; dispatchers finish what is queued, then get None."""
        with self._lock:
            self._closed = True
            while self._sleeping:
                self._sleeping.popleft().release()

    def take(self) -> list[Pending] | None:
        """The next batch, blocking until there is one; None once closed and empty."""
        settings = self._settings
        with self._lock:
            while not self._items:
                if self._closed:
                    return None
                self._wait(None)
            if settings.max_batch_size > 1:
                self._gather()
            if settings.max_queue_delay_s > 0 and settings.max_batch_size > 1:
                deadline = self._items[0].enqueued_at + settings.max_queue_delay_s
                preferred = settings.preferred_batch_sizes
                while self._rows < settings.max_batch_size and self._rows not in preferred and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._items:
                        break
                    self._wait(remaining)
                if not self._items:
                    return []
            batch, expired = self._pop_batch()
        for item in expired:
            item.resolve(None, self._expiry(item))
        return batch

    def _expiry(self, item: Pending) -> TurnoutError:
        """Why a request left the queue unrun: its caller's deadline, or the queue's own timeout."""
        waited_us = (time.monotonic() - item.enqueued_at) * 1e6
        if item.deadline <= item.expires_at:
            return DeadlineExceeded(
                f"{self._label}: the request's deadline passed after {waited_us:.0f}us in the queue; it was not run"
            )
        return Unavailable(f"{self._label}: request timed out in the queue after {waited_us:.0f}us")

    def _wait(self, timeout_s: float | None) -> None:
        """Sleep, the lock released, until put() or close() rings this dispatcher's bell or ``timeout_s`` passes.

        Called, and returns, holding the lock.
        """
        bell = threading.Lock()
        bell.acquire()
        self._sleeping.append(bell)
        self._lock.release()
        try:
            rung = bell.acquire(timeout=-1 if timeout_s is None else timeout_s)
        finally:
            self._lock.acquire()
        if not rung and bell in self._sleeping:
            # Timed out, and nobody took the bell meanwhile. (One that put() rang too late only
            # woke a dispatcher that was waking anyway, and that looks at the queue next.)
            self._sleeping.remove(bell)

    def _gather(self) -> None:
        """Yield the CPU, with the lock released, while that lets more requests in (module docstring)."""
        idle_yields = 0
        for _ in range(GATHER_YIELDS):
            if self._rows >= self._settings.max_batch_size:
                return
            seen = len(self._items)
            self._lock.release()
            try:
                self._yield_cpu()
            finally:
                self._lock.acquire()
            idle_yields = idle_yields + 1 if len(self._items) == seen else 0
            if idle_yields == GATHER_IDLE_YIELDS:
                return

    def _pop_batch(self) -> tuple[list[Pending], list[Pending]]:
        now = time.monotonic()
        limit = max(self._settings.max_batch_size, 1)
        batch: list[Pending] = []
        expired: list[Pending] = []
        kept: deque[Pending] = deque()
        rows = 0
        key: tuple[Any, ...] | None = None
        while self._items:
            item = self._items.popleft()
            if item.abandoned or item.expires_at < now:
                self._rows -= item.rows
                if not item.abandoned:
                    expired.append(item)
                continue
            fits = rows + item.rows <= limit and (key is None or item.merge_key == key)
            if fits and (not batch or self._settings.max_batch_size > 0):
                batch.append(item)
                rows += item.rows
                self._rows -= item.rows
                key = item.merge_key
                if rows >= limit:
                    break
            else:
                kept.append(item)
                if len(kept) > 64:  # far enough ahead; keep the rest for the next batch
                    break
        kept.extend(self._items)
        self._items = kept
        return batch, expired


def wanted_outputs(batch: Sequence[Pending]) -> list[str]:
    """The outputs to compute for a batch: empty (all) if any request wants all."""
    names: dict[str, None] = {}
    for item in batch:
        if not item.output_names:
            return []
        names.update(dict.fromkeys(item.output_names))
    return list(names)


def split_outputs(batch: Sequence[Pending], outputs: RawTensors, batched: bool) -> list[RawTensors]:
    """Per-request views of a batch's outputs (no copies)."""
    if not batched:
        return [outputs]
    rows = [item.rows for item in batch]
    results: list[RawTensors] = [{} for _ in batch]
    for name, tensor in outputs.items():
        try:
            pieces = cut_rows(tensor, rows)
        except RowsMismatch as error:
            raise Internal(f"output {name!r} {error}") from None
        for result, piece in zip(results, pieces, strict=True):
            result[name] = piece
    return results
