"""The request observers' seam, on the real dataplane: real ONNX models run in-process, no sockets.

Every request an observer wants reaches it once, finished: answered ones from the dispatcher with
their route, inputs, outputs and timings; failed ones (bad input, a deadline) from the caller's
thread with the error. A request no observer wants carries nothing through the queue, and an
observer that raises never reaches the caller.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from gateway.errors import InvalidArgument, NotFound, Unavailable
from gateway.registry.repository import ModelRepository
from gateway.routing.decide import Arm, Reason
from gateway.routing.table import RoutingTableHolder
from gateway.serving.batching import Pending
from gateway.serving.dataplane import Dataplane
from gateway.serving.inference_types import InferRequest
from gateway.serving.model_manager import ModelManager
from gateway.serving.observers import Finished, RequestObservers, Route
from gateway.serving.tensors import Tensor
from runtimes.contract import ModelHost, RuntimeOptions
from runtimes.inprocess_host import InProcessHost
from runtimes.raw_tensors import array_of, raw_of
from tests.support.model_repository import identity_model, save_version


def in_process(kind: str, artifact: Path, options: RuntimeOptions, label: str) -> ModelHost:
    return InProcessHost(kind, artifact, options)


class Recorder:
    """Wants every request (or none), and keeps what it is told."""

    def __init__(self, wanted: bool = True) -> None:
        self.wanted = wanted
        self.finished: list[Finished] = []
        self.calls = 0
        self.seen = threading.Event()

    def wants(self, route: Route | None) -> bool:
        return self.wanted

    def observe(self, finished: Sequence[Finished]) -> None:
        self.calls += 1
        self.finished.extend(finished)
        self.seen.set()


class Counting(Recorder):
    """Like the metrics: wants every request, reads no request id; counts how often it is asked."""

    wants_every_request = True
    needs_request_id = False

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def wants(self, route: Route | None) -> bool:
        self.asked += 1
        return True


class Failing:
    def wants(self, route: Route | None) -> bool:
        return True

    def observe(self, finished: Sequence[Finished]) -> None:
        raise RuntimeError("a broken observer")


@pytest.fixture
def observers() -> RequestObservers:
    return RequestObservers()


@pytest.fixture
def dataplane(tmp_path: Path, observers: RequestObservers) -> Iterator[Dataplane]:
    save_version(tmp_path, "echo", 1, identity_model("FP32"))
    manager = ModelManager(
        ModelRepository(tmp_path),
        in_process,
        RuntimeOptions(1, 1),
        poll_interval_s=0,
        drain_timeout_s=5,
        on_batch_finished=observers.batch_finished,
    )
    manager.start()
    yield Dataplane(manager, RoutingTableHolder(), observers)
    manager.close()


def request(rows: int = 2, model: str = "echo", width: int = 4, request_id: str | None = None) -> InferRequest:
    values = np.arange(rows * width, dtype=np.float32).reshape(rows, width)
    return InferRequest(model, "", f"id-{rows}" if request_id is None else request_id, [Tensor("x", raw_of(values))])


def test_an_observer_of_every_request_is_never_asked_and_gets_no_made_up_id(
    dataplane: Dataplane, observers: RequestObservers
) -> None:
    counting = Counting()
    observers.register(counting)
    taken = time.time_ns()
    dataplane.infer(request(request_id=""))
    assert counting.seen.wait(5)
    (finished,) = counting.finished
    assert counting.asked == 0 and finished.request_id == ""
    assert taken - 1_000_000 <= finished.timings.received_unix_ns <= time.time_ns()  # 1 ms: two clocks


def test_an_id_is_made_up_once_an_observer_that_reads_ids_wants_the_request(
    dataplane: Dataplane, observers: RequestObservers
) -> None:
    counting, recorder = Counting(), Recorder()
    observers.register(counting)
    observers.register(recorder)
    dataplane.infer(request(request_id=""))
    dataplane.infer(request(request_id="mine"))
    assert recorder.seen.wait(5)
    deadline = time.monotonic() + 5
    while len(recorder.finished) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    made_up, own = recorder.finished
    assert len(made_up.request_id) == 32 and int(made_up.request_id, 16) >= 0 and own.request_id == "mine"
    assert [item.request_id for item in counting.finished] == [made_up.request_id, "mine"], "the same id for all"


def test_an_answered_request_reaches_the_observer_with_its_route_answer_and_timings(
    dataplane: Dataplane, observers: RequestObservers
) -> None:
    recorder = Recorder()
    observers.register(recorder)
    response = dataplane.infer(request(rows=3))
    assert recorder.seen.wait(5)
    (finished,) = recorder.finished
    assert finished.request.id == "id-3" and finished.error is None
    assert finished.route == Route("echo", 1, Arm.STABLE, 0, Reason.NO_CANARY)
    assert finished.rows == 3 and finished.inputs is not None and finished.outputs is not None
    np.testing.assert_array_equal(array_of(finished.outputs["y"]), array_of(response.outputs[0].raw))
    timings = finished.timings
    assert 0 < timings.compute_s <= timings.latency_s and 0 <= timings.queue_s <= timings.latency_s
    assert timings.received_unix_ns > 0


def test_a_request_with_bad_input_is_observed_with_its_error_on_the_callers_thread(
    dataplane: Dataplane, observers: RequestObservers
) -> None:
    recorder = Recorder()
    observers.register(recorder)
    with pytest.raises(InvalidArgument):
        dataplane.infer(request(width=5))
    (finished,) = recorder.finished
    assert isinstance(finished.error, InvalidArgument) and finished.outputs is None
    assert finished.route is not None and finished.route.version == 1


def test_an_unknown_model_is_observed_without_a_route(dataplane: Dataplane, observers: RequestObservers) -> None:
    recorder = Recorder()
    observers.register(recorder)
    with pytest.raises(NotFound):
        dataplane.infer(request(model="nowhere"))
    (finished,) = recorder.finished
    assert finished.route is None and isinstance(finished.error, NotFound)


def test_a_stream_request_is_observed_once_like_a_unary_one(dataplane: Dataplane, observers: RequestObservers) -> None:
    recorder = Recorder()
    observers.register(recorder)
    answered = threading.Event()
    dataplane.submit(request(rows=1), lambda response, error: answered.set())
    assert answered.wait(5) and recorder.seen.wait(5)
    assert [f.request.id for f in recorder.finished] == ["id-1"]


def test_nothing_rides_through_the_queue_when_no_observer_wants_the_request(
    dataplane: Dataplane, observers: RequestObservers, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(wanted=False)
    observers.register(recorder)
    tickets: list[object] = []
    real_init = Pending.__init__

    def spy(self: Pending, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]
        tickets.append(self.ticket)

    monkeypatch.setattr(Pending, "__init__", spy)
    dataplane.infer(request())
    assert tickets == [None] and recorder.calls == 0


def test_a_failing_observer_never_reaches_the_caller_nor_the_next_observer(
    dataplane: Dataplane, observers: RequestObservers
) -> None:
    observers.register(Failing())
    recorder = Recorder()
    observers.register(recorder)
    response = dataplane.infer(request())
    assert response.outputs[0].name == "y"
    assert recorder.seen.wait(5)
    with pytest.raises(InvalidArgument):
        dataplane.infer(request(width=3))
    assert len(recorder.finished) == 2


class Holding:
    """Holds answers: settles each request's commit from a thread of its own after ``delay_s``."""

    def __init__(self, kept: bool = True, delay_s: float = 0.2) -> None:
        self.kept = kept
        self.delay_s = delay_s
        self.settled_at: list[float] = []

    def wants(self, route: Route | None) -> bool:
        return True

    def observe(self, finished: Sequence[Finished]) -> None:
        commits = [item.commit for item in finished]
        assert all(commit is not None for commit in commits)

        def settle() -> None:
            time.sleep(self.delay_s)
            self.settled_at.append(time.monotonic())
            for commit in commits:
                assert commit is not None
                commit.settle(self.kept)

        threading.Thread(target=settle).start()


def test_an_observer_holding_answers_answers_the_caller_only_once_it_settles(
    dataplane: Dataplane, observers: RequestObservers
) -> None:
    holding = Holding()
    observers.register(holding, holds_answers=True)
    dataplane.infer(request())
    answered_at = time.monotonic()
    assert holding.settled_at and holding.settled_at[0] <= answered_at
    with pytest.raises(InvalidArgument):  # a failure waits for its record too, on its own thread
        dataplane.infer(request(width=5))
    assert len(holding.settled_at) == 2


def test_a_stream_answer_waits_for_the_commit_and_a_lost_record_is_unavailable(
    dataplane: Dataplane, observers: RequestObservers
) -> None:
    holding = Holding(kept=False, delay_s=0.1)
    observers.register(holding, holds_answers=True)
    told: list[tuple[object, object]] = []
    answered = threading.Event()

    def done(response: object, error: object) -> None:
        told.append((response, error))
        answered.set()

    dataplane.submit(request(rows=1), done)
    assert answered.wait(5) and holding.settled_at
    ((response, error),) = told
    assert response is None and isinstance(error, Unavailable)
    with pytest.raises(Unavailable, match="capture record"):
        dataplane.infer(request())


def test_only_one_observer_may_hold_answers(observers: RequestObservers) -> None:
    observers.register(Holding(), holds_answers=True)
    with pytest.raises(ValueError, match="only one"):
        observers.register(Holding(), holds_answers=True)
