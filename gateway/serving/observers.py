"""The one seam for whatever watches a finished request: shadows now; capture, metrics and traces next.

An observer is told about each request it asked to see once that request is finished: what was
asked, the route it took (the version that answered, the arm, the policy generation, why), the
answer or the error, and the timings. Observers are registered once, in the composition root
(:mod:`gateway.app`), and are called on the thread that finished the request: the dispatcher thread
that ran its batch (one call per batch, for every request of it that an observer wants), or the
request's own thread for a request that failed before it reached a batch.

Observers hand the event over and return: they never block a caller, and an observer that raises is
logged and skipped, never seen by the caller. Nothing is built for a request that no observer wants:
the dataplane asks ``RequestObservers.wants`` once per request (not at all while some observer wants
every request), and only a wanted request carries a :class:`Ticket` through the batch queue.

Metrics want every request, so what the seam does per request is kept to what some registered
observer reads. Two optional class attributes of an observer, read once when it is registered, say
what it needs: ``wants_every_request = True`` (its ``wants`` is always true, so the seam does not ask
it) and ``needs_request_id = False`` (it never reads ``Finished.request_id``, so no id is made up for
it). A request id is made up (:func:`request_id_of`) only when an observer that reads ids wants the
request; otherwise ``request_id`` is the client's, possibly empty. The wall-clock time a request was
taken is worked out once per batch, from the batch's end and each request's latency.

One observer may *hold answers* (synchronous capture): each request it wants then carries a
:class:`Commit`, which that observer settles once the request's record is durable, and the
dataplane hands the caller its answer only after that. The observer is still called after the batch
is answered, on the dispatcher thread; only the caller's thread (or a stream's completion) waits.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from gateway.errors import TurnoutError
from gateway.routing.decide import Arm, Reason
from gateway.serving.batching import Pending
from gateway.serving.inference_types import InferRequest
from runtimes.raw_tensors import RawTensors

log = logging.getLogger(__name__)

_HASH_SPAN = float(1 << 64)
_new_tuple = tuple.__new__  # builds a named tuple in C, where its own __new__ is a Python call


class Route(NamedTuple):
    """Where routing sent one request. A named tuple, not a frozen dataclass: every request builds
    one, and a frozen dataclass's ``__init__`` costs four times as much (object.__setattr__ per field)."""

    model: str
    version: int  # the version that answers
    arm: Arm
    generation: int  # the policy generation that decided; 0 before any policy is set
    reason: Reason  # pin, sticky, random, or no-canary
    shadows: tuple[int, ...] = ()  # versions that get a copy once it is answered


class Commit:
    """An answer-holding observer's promise for one request: settled once, with whether it was kept.

    A caller blocks in :meth:`wait`; a stream registers :meth:`then`, run on the settling thread.
    """

    __slots__ = ("_guard", "_settled", "_then", "kept")

    def __init__(self) -> None:
        self._settled = threading.Lock()
        self._settled.acquire()
        self._guard = threading.Lock()
        self._then: Callable[[bool], None] | None = None
        self.kept: bool | None = None  # None until settled

    def settle(self, kept: bool) -> None:
        with self._guard:
            if self.kept is not None:
                return
            self.kept = kept
            then = self._then
        self._settled.release()
        if then is not None:
            then(kept)

    def wait(self, timeout_s: float | None = None) -> bool:
        """True once settled as kept; False when settled as lost or not settled within ``timeout_s``."""
        if not self._settled.acquire(timeout=-1 if timeout_s is None else max(timeout_s, 0.0)):
            return False
        self._settled.release()  # later waiters pass straight through
        return bool(self.kept)

    def then(self, callback: Callable[[bool], None]) -> None:
        """Run ``callback(kept)`` once settled: now, when it is already."""
        with self._guard:
            if self.kept is None:
                self._then = callback
                return
        callback(self.kept)


class Ticket(NamedTuple):
    """What the dataplane attaches to a queued request that an observer wants; batching never reads it.
    A named tuple, for the reason :class:`Timings` is."""

    request: InferRequest
    route: Route
    started_ns: int  # time.monotonic_ns() when the dataplane took the request
    commit: Commit | None = None  # when an observer holds answers: settled once it kept this request
    request_id: str = ""  # the client's, or one assigned when an observer that reads ids wants it


class Timings(NamedTuple):
    """A named tuple, as :class:`Route`: one is built for every observed request (metrics observe
    them all), and a frozen dataclass's ``__init__`` costs four times as much."""

    received_unix_ns: int
    latency_s: float  # from the dataplane taking the request to its answer or error
    queue_s: float  # waiting in the batch queue; 0 when it never got there
    compute_s: float  # its batch in the runtime; 0 when no batch ran


class Finished(NamedTuple):
    """One finished request, as observers see it (a named tuple, for the reason :class:`Timings` is)."""

    request: InferRequest
    route: Route | None  # None: it failed before a version was chosen (unknown model, say)
    inputs: RawTensors | None  # the checked inputs the version was given; None if they never passed
    rows: int  # rows along the batch axis (1 for a model without one)
    outputs: RawTensors | None  # every output the request asked for; None when it failed
    error: TurnoutError | None
    timings: Timings
    commit: Commit | None = None  # the answer-holding observer settles it (and only that one)
    # What every observer knows the request by: the client's id, or a uuid4 hex assigned once for all
    # of them (a shadow's answer and its primary's record share it). The caller's answer keeps its own.
    request_id: str = ""


class RequestObserver(Protocol):
    """What the seam calls. An observer may also set ``wants_every_request`` and ``needs_request_id``
    (class attributes, see the module's docstring); without them it is asked, and given ids."""

    def wants(self, route: Route | None) -> bool:
        """Whether to see this request once it is finished; asked on the request path, so cheap."""
        ...

    def observe(self, finished: Sequence[Finished]) -> None:
        """Take finished requests (one batch's, or one failed request); hand them on, never block."""
        ...


class RequestObservers:
    """Every registered observer, as one."""

    def __init__(self) -> None:
        self._observers: tuple[RequestObserver, ...] = ()
        self._holder: RequestObserver | None = None  # the observer whose commits hold answers
        self._reading_ids: tuple[RequestObserver, ...] = ()  # the observers that read request ids
        # Asked once per request, so with a single observer it is that observer's own method.
        self.wants: Callable[[Route | None], bool] = _wants_nothing
        # True once some observer wants every request: the dataplane then builds a ticket unasked.
        self.every = False

    def register(self, observer: RequestObserver, *, holds_answers: bool = False) -> None:
        """Add an observer; done in the composition root, before the gateway serves.

        ``holds_answers``: the callers of the requests it wants get their answers only once it has
        settled their :class:`Commit` (at most one observer may).
        """
        if holds_answers:
            if self._holder is not None:
                raise ValueError("only one request observer may hold answers")
            self._holder = observer
        self._observers = (*self._observers, observer)
        self.wants = observer.wants if len(self._observers) == 1 else self._any_wants
        self.every = self.every or bool(getattr(observer, "wants_every_request", False))
        if getattr(observer, "needs_request_id", True):
            self._reading_ids = (*self._reading_ids, observer)

    def _any_wants(self, route: Route | None) -> bool:
        # A loop, not any(): no generator is built on the request path.
        for observer in self._observers:  # noqa: SIM110
            if observer.wants(route):
                return True
        return False

    def ticket(self, request: InferRequest, route: Route, started_ns: int) -> Ticket:
        """The ticket a request that :meth:`wants` approved carries through the batch queue.

        Built for every request while metrics are on, so written out without helper calls, and the
        tuple is made by ``tuple.__new__``: a named tuple's own ``__new__`` is a Python function."""
        holder = self._holder
        commit = Commit() if holder is not None and holder.wants(route) else None
        request_id = request.id
        if not request_id:
            for observer in self._reading_ids:  # a loop, not any(): no generator on the request path
                if observer.wants(route):
                    request_id = uuid4_hex()
                    break
        return _new_tuple(Ticket, (request, route, started_ns, commit, request_id))

    def _commit_for(self, route: Route | None) -> Commit | None:
        holder = self._holder
        return Commit() if holder is not None and holder.wants(route) else None

    def batch_finished(self, batch: Sequence[Pending], dispatched_at: float, compute_s: float) -> None:
        """Called by a dispatcher once every request of a batch has its answer or error.

        Once per batch while metrics are on: one clock read of each kind for the whole batch, and the
        per-request tuples made without a Python call each (see :meth:`ticket`)."""
        finished: list[Finished] = []
        now_ns = wall_ns = 0
        for item in batch:
            # Only the dataplane sets a ticket, and only a Ticket: typed here rather than checked
            # by isinstance, a C call per request.
            ticket: Ticket | None = item.ticket  # type: ignore[assignment]
            if ticket is None:
                continue
            if not now_ns:
                now_ns, wall_ns = time.monotonic_ns(), time.time_ns()
            request, route, started_ns, commit, request_id = ticket
            latency_ns = now_ns - started_ns
            timings = _new_tuple(Timings, (wall_ns - latency_ns, latency_ns / 1e9, dispatched_at - item.enqueued_at,
                                            compute_s))  # fmt: skip
            finished.append(_new_tuple(Finished, (request, route, item.inputs, item.rows, item.outputs, item.error,
                                                  timings, commit, request_id)))  # fmt: skip
        if not finished:
            return
        for observer in self._observers:  # _notify's loop, written out: once per batch
            try:
                observer.observe(finished)
            except Exception:
                self._observer_failed(observer, finished)

    def failed_early(
        self, request: InferRequest, route: Route | None, error: TurnoutError, started_ns: int, pending: Pending | None
    ) -> None:
        """A request that failed on its own thread: before its batch (bad input, full queue) or past its
        deadline. ``pending`` is the queue entry when it got that far (its inputs were checked)."""
        if not self.wants(route):
            return
        latency_ns = time.monotonic_ns() - started_ns
        timings = Timings(time.time_ns() - latency_ns, latency_ns / 1e9, 0.0, 0.0)
        inputs, rows = (pending.inputs, pending.rows) if pending is not None else (None, 0)
        commit = self._commit_for(route)
        request_id = request_id_of(request) if self._reads_ids(route) else request.id
        self._notify([Finished(request, route, inputs, rows, None, error, timings, commit, request_id)])
        if commit is not None:  # on the caller's own thread: its error waits for its record
            commit.wait()

    def _reads_ids(self, route: Route | None) -> bool:
        for observer in self._reading_ids:  # noqa: SIM110
            if observer.wants(route):
                return True
        return False

    def _notify(self, finished: list[Finished]) -> None:
        for observer in self._observers:
            try:
                observer.observe(finished)
            except Exception:
                self._observer_failed(observer, finished)

    def _observer_failed(self, observer: RequestObserver, finished: list[Finished]) -> None:
        """An observer's failure is its own: logged; the requests have their answers already."""
        log.exception("request observer %s failed", type(observer).__name__)
        if observer is self._holder:  # its callers must not wait for commits it will never settle
            for item in finished:
                if item.commit is not None:
                    item.commit.settle(False)


def request_id_of(request: InferRequest) -> str:
    """The client's request id, or a fresh uuid4 hex when it sent none."""
    return request.id or uuid4_hex()


def uuid4_hex() -> str:
    """``uuid.uuid4().hex`` in C calls only: built for every wanted request without an id (metrics
    want them all), where ``uuid.UUID``'s Python constructor cost several times as much."""
    data = bytearray(os.urandom(16))
    data[6] = (data[6] & 0x0F) | 0x40  # version 4
    data[8] = (data[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return data.hex()


def sample_point(request_id: str) -> float:
    """Where a request id falls in [0, 1): the same id always falls in the same place, in every process.

    Observers that keep a fraction of requests (capture, the access log) keep those below it, so a
    sampled request is the same one in each of them."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / _HASH_SPAN


def commit_of(pending: Pending) -> Commit | None:
    """The commit a queued request's caller waits for, if an observer holds its answer."""
    ticket = pending.ticket
    return ticket.commit if isinstance(ticket, Ticket) else None


def _wants_nothing(route: Route | None) -> bool:
    return False
