"""The one seam for whatever watches a finished request: shadows now; capture, metrics and traces next.

An observer is told about each request it asked to see once that request is finished: what was
asked, the route it took (the version that answered, the arm, the policy generation, why), the
answer or the error, and the timings. Observers are registered once, in the composition root
(:mod:`gateway.app`), and are called on the thread that finished the request: the dispatcher thread
that ran its batch (one call per batch, for every request of it that an observer wants), or the
request's own thread for a request that failed before it reached a batch.

Observers hand the event over and return: they never block a caller, and an observer that raises is
logged and skipped, never seen by the caller. Nothing is built for a request that no observer wants:
the dataplane asks ``RequestObservers.wants`` once per request, and only a wanted request carries a
:class:`Ticket` through the batch queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from gateway.errors import TurnoutError
from gateway.routing.decide import Arm, Reason
from gateway.serving.batching import Pending
from gateway.serving.inference_types import InferRequest
from runtimes.raw_tensors import RawTensors

log = logging.getLogger(__name__)


class Route(NamedTuple):
    """Where routing sent one request. A named tuple, not a frozen dataclass: every request builds
    one, and a frozen dataclass's ``__init__`` costs four times as much (object.__setattr__ per field)."""

    model: str
    version: int  # the version that answers
    arm: Arm
    generation: int  # the policy generation that decided; 0 before any policy is set
    reason: Reason  # pin, sticky, random, or no-canary
    shadows: tuple[int, ...] = ()  # versions that get a copy once it is answered


@dataclass(frozen=True, slots=True)
class Ticket:
    """What the dataplane attaches to a queued request that an observer wants; batching never reads it."""

    request: InferRequest
    route: Route
    started_ns: int  # time.monotonic_ns() when the dataplane took the request
    received_unix_ns: int  # wall-clock time of the same moment, for records


@dataclass(frozen=True, slots=True)
class Timings:
    received_unix_ns: int
    latency_s: float  # from the dataplane taking the request to its answer or error
    queue_s: float  # waiting in the batch queue; 0 when it never got there
    compute_s: float  # its batch in the runtime; 0 when no batch ran


@dataclass(frozen=True, slots=True)
class Finished:
    """One finished request, as observers see it."""

    request: InferRequest
    route: Route | None  # None: it failed before a version was chosen (unknown model, say)
    inputs: RawTensors | None  # the checked inputs the version was given; None if they never passed
    rows: int  # rows along the batch axis (1 for a model without one)
    outputs: RawTensors | None  # every output the request asked for; None when it failed
    error: TurnoutError | None
    timings: Timings


class RequestObserver(Protocol):
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
        # Asked once per request, so with a single observer it is that observer's own method.
        self.wants: Callable[[Route | None], bool] = _wants_nothing

    def register(self, observer: RequestObserver) -> None:
        """Add an observer; done in the composition root, before the gateway serves."""
        self._observers = (*self._observers, observer)
        self.wants = observer.wants if len(self._observers) == 1 else self._any_wants

    def _any_wants(self, route: Route | None) -> bool:
        # A loop, not any(): no generator is built on the request path.
        for observer in self._observers:  # noqa: SIM110
            if observer.wants(route):
                return True
        return False

    @staticmethod
    def ticket(request: InferRequest, route: Route, started_ns: int) -> Ticket:
        """The ticket a request that :meth:`wants` approved carries through the batch queue."""
        return Ticket(request, route, started_ns, time.time_ns() - (time.monotonic_ns() - started_ns))

    def batch_finished(self, batch: Sequence[Pending], dispatched_at: float, compute_s: float) -> None:
        """Called by a dispatcher once every request of a batch has its answer or error."""
        finished = [_finished_in_batch(item, dispatched_at, compute_s) for item in batch if item.ticket is not None]
        if finished:
            self._notify(finished)

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
        self._notify([Finished(request, route, inputs, rows, None, error, timings)])

    def _notify(self, finished: list[Finished]) -> None:
        for observer in self._observers:
            try:
                observer.observe(finished)
            except Exception:  # an observer's failure is its own; the request has its answer already
                log.exception("request observer %s failed", type(observer).__name__)


def _wants_nothing(route: Route | None) -> bool:
    return False


def _finished_in_batch(item: Pending, dispatched_at: float, compute_s: float) -> Finished:
    ticket = item.ticket
    assert isinstance(ticket, Ticket)
    latency_s = (time.monotonic_ns() - ticket.started_ns) / 1e9
    timings = Timings(ticket.received_unix_ns, latency_s, dispatched_at - item.enqueued_at, compute_s)
    return Finished(ticket.request, ticket.route, item.inputs, item.rows, item.outputs, item.error, timings)
