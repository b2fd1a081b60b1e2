"""Dynamic batching: merge and split are exact, batches stay within bounds, the queue stays bounded."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import DeadlineExceeded, Unavailable
from gateway.serving.batching import (
    GATHER_IDLE_YIELDS,
    GATHER_YIELDS,
    BatchingSettings,
    BatchQueue,
    Pending,
    split_outputs,
    wanted_outputs,
)
from runtimes.raw_tensors import array_of, joined, raw_of


def queue_of(max_batch_size: int = 8, max_queue_size: int = 1024, timeout_s: float | None = None) -> BatchQueue:
    return BatchQueue("version 1 of model 'm'", BatchingSettings(max_batch_size, 0.0, max_queue_size, timeout_s))


def pending(rows: int, width: int = 3, start: int = 0, dtype: Any = np.float32) -> Pending:
    values = np.arange(start, start + rows * width, dtype=dtype).reshape(rows, width)
    return Pending({"x": raw_of(values)}, rows, [])


def drain(queue: BatchQueue) -> list[list[Pending]]:
    queue.close()
    batches = []
    while (batch := queue.take()) is not None:
        batches.append(batch)
    return batches


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.integers(min_value=1, max_value=8), min_size=1, max_size=30),
    max_batch_size=st.integers(min_value=8, max_value=64),
)
def test_batches_keep_order_stay_within_bounds_and_split_back_exactly(rows: list[int], max_batch_size: int) -> None:
    queue = queue_of(max_batch_size)
    requests = []
    start = 0
    for count in rows:
        requests.append(pending(count, start=start))
        start += count * 3
        queue.put(requests[-1])
    batches = drain(queue)
    taken = [item for batch in batches for item in batch]
    assert sorted(map(id, taken)) == sorted(map(id, requests)), "nothing lost or repeated"
    remaining = list(requests)
    for batch in batches:
        # The oldest waiting request always leads the next batch; smaller ones behind a request that
        # does not fit may join it early (fill the batch), but nobody waits behind them for ever.
        assert batch[0] is remaining[0]
        assert [requests.index(item) for item in batch] == sorted(requests.index(item) for item in batch)
        remaining = [item for item in remaining if item not in batch]
        assert sum(item.rows for item in batch) <= max_batch_size
        # The identity model: outputs are the concatenated inputs; each request must get its rows back.
        merged = joined([item.inputs["x"] for item in batch])
        for item, outputs in zip(batch, split_outputs(batch, {"y": merged}, batched=True), strict=True):
            np.testing.assert_array_equal(array_of(outputs["y"]), array_of(item.inputs["x"]))
            assert np.shares_memory(array_of(outputs["y"]), array_of(merged)), "split makes views, not copies"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([(3, np.float32), (4, np.float32), (3, np.int64)]), min_size=2, max_size=20))
def test_only_requests_of_one_shape_and_dtype_merge(kinds: list[tuple[int, Any]]) -> None:
    queue = queue_of(max_batch_size=64)
    for width, dtype in kinds:
        queue.put(pending(1, width=width, dtype=dtype))
    batches = drain(queue)
    assert sum(len(batch) for batch in batches) == len(kinds)
    for batch in batches:
        assert len({(item.inputs["x"].shape[1:], item.inputs["x"].datatype) for item in batch}) == 1


def test_a_model_without_a_batch_axis_runs_requests_one_by_one() -> None:
    queue = queue_of(max_batch_size=0)
    for _ in range(3):
        queue.put(pending(1))
    assert [len(batch) for batch in drain(queue)] == [1, 1, 1]


class ArrivingWhileYielding:
    """A yield during which ``arrivals[i]`` more requests reach the queue, as request threads would."""

    def __init__(self, arrivals: list[int]) -> None:
        self.arrivals = arrivals
        self.queue: BatchQueue | None = None
        self.yields = 0

    def __call__(self) -> None:
        assert self.queue is not None
        count = self.arrivals[self.yields] if self.yields < len(self.arrivals) else 0
        self.yields += 1
        for _ in range(count):
            self.queue.put(pending(1))


def gathering_queue(arrivals: list[int], max_batch_size: int = 64) -> tuple[BatchQueue, ArrivingWhileYielding]:
    yield_cpu = ArrivingWhileYielding(arrivals)
    queue = BatchQueue("version 1 of model 'm'", BatchingSettings(max_batch_size, 0.0, 1024, None), yield_cpu)
    yield_cpu.queue = queue
    return queue, yield_cpu


def test_a_dispatcher_takes_the_requests_that_arrive_while_it_yields() -> None:
    queue, yield_cpu = gathering_queue([3, 1, 2])
    queue.put(pending(1))
    batch = queue.take()
    assert batch is not None and len(batch) == 7
    assert yield_cpu.yields == 3 + GATHER_IDLE_YIELDS, "it yields until that lets nothing in, twice in a row"


def test_one_idle_yield_does_not_end_the_gathering() -> None:
    # The second yield went to a thread that queued nothing (the shadow thread, say); the third let more in.
    queue, _ = gathering_queue([2, 0, 3])
    queue.put(pending(1))
    assert len(queue.take() or []) == 6


def test_a_lone_request_costs_two_yields() -> None:
    queue, yield_cpu = gathering_queue([])
    queue.put(pending(1))
    assert len(queue.take() or []) == 1
    assert yield_cpu.yields == GATHER_IDLE_YIELDS


def test_gathering_stops_at_a_full_batch_and_at_the_cap() -> None:
    full, yield_cpu = gathering_queue([1] * 100, max_batch_size=4)
    full.put(pending(1))
    assert sum(item.rows for item in full.take() or []) == 4
    assert yield_cpu.yields == 3

    endless, yield_cpu = gathering_queue([1] * 100, max_batch_size=1000)
    endless.put(pending(1))
    assert len(endless.take() or []) == 1 + GATHER_YIELDS
    assert yield_cpu.yields == GATHER_YIELDS


def test_a_model_without_batching_never_yields() -> None:
    for max_batch_size in (0, 1):
        queue, yield_cpu = gathering_queue([1], max_batch_size=max_batch_size)
        queue.put(pending(1))
        assert len(queue.take() or []) == 1
        assert yield_cpu.yields == 0


def test_a_batch_that_fills_during_the_queue_delay_leaves_at_once() -> None:
    queue = BatchQueue("version 1 of model 'm'", BatchingSettings(4, 30.0, 1024, None), yield_cpu=lambda: None)
    queue.put(pending(1))

    def three_more() -> None:
        time.sleep(0.05)
        for _ in range(3):
            queue.put(pending(1))

    threading.Thread(target=three_more).start()
    started = time.monotonic()
    batch = queue.take()
    assert batch is not None and len(batch) == 4
    assert time.monotonic() - started < 10, "it waited out the 30 s delay instead of leaving when full"


def test_a_batch_that_reaches_a_preferred_size_leaves_without_waiting_out_the_delay() -> None:
    settings = BatchingSettings(8, 30.0, 1024, None, frozenset({2, 6}))
    queue = BatchQueue("version 1 of model 'm'", settings, yield_cpu=lambda: None)
    queue.put(pending(1))

    def one_more() -> None:
        time.sleep(0.05)
        queue.put(pending(1))

    threading.Thread(target=one_more).start()
    started = time.monotonic()
    batch = queue.take()
    assert batch is not None and sum(item.rows for item in batch) == 2
    assert time.monotonic() - started < 10, "it waited out the 30 s delay at a preferred size"


def test_rows_between_preferred_sizes_still_wait_for_the_delay() -> None:
    settings = BatchingSettings(8, 0.2, 1024, None, frozenset({4}))
    queue = BatchQueue("version 1 of model 'm'", settings, yield_cpu=lambda: None)
    queue.put(pending(3))
    started = time.monotonic()
    batch = queue.take()
    assert batch is not None and sum(item.rows for item in batch) == 3
    assert time.monotonic() - started >= 0.15


def test_split_refuses_outputs_whose_first_axis_is_not_the_batch() -> None:
    batch = [pending(2), pending(1)]
    with pytest.raises(Exception, match="first axis of 3"):
        split_outputs(batch, {"y": raw_of(np.zeros((4, 3)))}, batched=True)


def test_wanted_outputs_is_the_union_or_everything() -> None:
    a, b, c = (Pending({"x": raw_of(np.zeros((1, 1)))}, 1, names) for names in (["p"], ["q", "p"], []))
    assert wanted_outputs([a, b]) == ["p", "q"]
    assert wanted_outputs([a, c]) == [], "one request wanting every output means every output"


def test_a_full_queue_refuses_with_a_message_and_does_not_grow() -> None:
    queue = queue_of(max_queue_size=2)
    queue.put(pending(1))
    queue.put(pending(1))
    with pytest.raises(Unavailable, match="max_queue_size"):
        queue.put(pending(1))
    assert len(queue) == 2


def test_a_closed_queue_refuses_new_requests_and_hands_out_what_it_holds() -> None:
    queue = queue_of()
    queue.put(pending(1))
    queue.close()
    with pytest.raises(Unavailable, match="unloading"):
        queue.put(pending(1))
    assert len(queue.take() or []) == 1
    assert queue.take() is None


def test_requests_past_the_queue_timeout_fail_with_unavailable() -> None:
    queue = queue_of(timeout_s=0.01)
    late = pending(1)
    queue.put(late)
    time.sleep(0.03)
    queue.put(fresh := pending(1))
    assert queue.take() == [fresh]
    with pytest.raises(Unavailable, match="timed out in the queue"):
        late.wait(0)


def with_deadline(deadline: float) -> Pending:
    return Pending({"x": raw_of(np.zeros((1, 3), np.float32))}, 1, [], deadline=deadline)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=40), st.sampled_from([None, 60.0]))
def test_requests_whose_deadline_passed_in_the_queue_are_answered_deadline_exceeded_and_never_batched(
    expired: list[bool], queue_timeout_s: float | None
) -> None:
    queue = queue_of(max_batch_size=64, timeout_s=queue_timeout_s)
    now = time.monotonic()
    # Past deadlines are in the past already; the others are far off, as is the queue's own timeout.
    items = [with_deadline(now - 1.0 if gone else now + 3600.0) for gone in expired]
    for item in items:
        queue.put(item)
    batch = queue.take()
    assert batch == [item for item, gone in zip(items, expired, strict=True) if not gone]
    for item, gone in zip(items, expired, strict=True):
        if gone:
            with pytest.raises(DeadlineExceeded, match=r"deadline passed .* in the queue; it was not run"):
                item.wait(0)


def test_a_batch_whose_requests_have_all_expired_is_not_run() -> None:
    queue = queue_of()
    late = [with_deadline(time.monotonic() + 0.01) for _ in range(3)]
    for item in late:
        queue.put(item)
    time.sleep(0.03)  # they expire while queued, as behind a busy worker
    assert queue.take() == [], "an empty batch: the dispatcher runs nothing"
    assert len(queue) == 0
    for item in late:
        with pytest.raises(DeadlineExceeded):
            item.wait(0)


def test_a_queue_timeout_shorter_than_the_deadline_is_still_unavailable() -> None:
    queue = queue_of(timeout_s=0.01)
    item = with_deadline(time.monotonic() + 60.0)
    queue.put(item)
    time.sleep(0.03)
    queue.put(fresh := pending(1))
    assert queue.take() == [fresh]
    with pytest.raises(Unavailable, match="timed out in the queue"):
        item.wait(0)


def test_abandoned_requests_are_skipped() -> None:
    queue = queue_of()
    gone, kept = pending(1), pending(1)
    queue.put(gone)
    queue.put(kept)
    with pytest.raises(DeadlineExceeded):
        gone.wait(0.001)
    assert gone.abandoned
    assert queue.take() == [kept]


def test_a_failing_callback_does_not_escape_resolve() -> None:
    def broken(_: Pending) -> None:
        raise RuntimeError("bug in a callback")

    item = Pending({"x": raw_of(np.zeros((1, 1)))}, 1, [], broken)
    item.resolve({"y": raw_of(np.zeros((1, 1)))})  # logged, not raised: the dispatcher thread must live on


def test_every_sleeping_dispatcher_is_woken_by_a_request_of_its_own() -> None:
    queue = BatchQueue("m", BatchingSettings(0, 0.0, 1024, None))  # no batching: one request per take
    taken: list[Pending] = []
    dispatchers = [threading.Thread(target=lambda: taken.extend(queue.take() or [])) for _ in range(3)]
    for thread in dispatchers:
        thread.start()
    deadline = time.monotonic() + 10
    while len(queue._sleeping) < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert len(queue._sleeping) == 3, "all three dispatchers went to sleep"
    for _ in range(3):
        queue.put(pending(1))
    for thread in dispatchers:
        thread.join(timeout=10)
    assert len(taken) == 3 and not any(thread.is_alive() for thread in dispatchers), "no wake-up was lost"


def test_a_wait_that_times_out_leaves_no_bell_behind() -> None:
    queue = BatchQueue("m", BatchingSettings(8, 0.01, 1024, None))
    queue.put(pending(1))
    assert queue.take() is not None  # waited out the 10 ms delay for a fuller batch
    assert not queue._sleeping, "a later put() must not ring a bell nobody waits on"
