"""The capture observer: turns each finished request into a record and hands it to the capture log.

It runs on dispatcher threads, so it only copies what it keeps (the tensors' bytes live in buffers
the request owns and reuses) and returns; encoding and writing happen on the writer thread.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from gateway.capture.record import CaptureRecord
from gateway.capture.writer import CaptureLog
from gateway.errors import status_name
from gateway.serving.observers import Finished, Route, sample_point
from runtimes.raw_tensors import RawTensor


def _owned(tensors: dict[str, RawTensor]) -> dict[str, RawTensor]:
    return {name: RawTensor(tensor.datatype, tensor.shape, bytes(tensor.data)) for name, tensor in tensors.items()}


class CaptureObserver:
    """A request observer that wants every request; ``--capture-sample`` is decided by request id."""

    def __init__(self, capture: CaptureLog, sample: float = 1.0, outputs: bool = True) -> None:
        self._capture = capture
        self._sample = sample
        self._outputs = outputs

    def wants(self, route: Route | None) -> bool:
        return True  # the sample is decided by request id, which routing does not see

    def observe(self, finished: Sequence[Finished]) -> None:
        for item in finished:
            request_id = item.request_id or item.request.id or uuid.uuid4().hex
            if item.error is None and self._sample < 1.0 and sample_point(request_id) >= self._sample:
                self._capture.stats.add("sampled_out")
                if item.commit is not None:
                    item.commit.settle(True)  # nothing to keep, so nothing to wait for
                continue
            self._capture.put(self.record_of(item, request_id), item.commit)

    def observe_shadows(self, finished: Sequence[Finished]) -> None:
        """The shadow mirror's answers: each a record of its own, arm ``shadow``, under its primary's id."""
        for item in finished:
            if item.error is None and self._sample < 1.0 and sample_point(item.request_id) >= self._sample:
                continue  # its primary was left out too
            self._capture.put(self.record_of(item, item.request_id, arm="shadow"), None)

    def record_of(self, item: Finished, request_id: str, arm: str | None = None) -> CaptureRecord:
        request, route = item.request, item.route
        if item.inputs is not None:
            inputs = _owned(item.inputs)
        else:  # it failed before its inputs were checked: keep them as they were sent
            inputs = _owned({tensor.name: tensor.raw for tensor in request.inputs})
        outputs = _owned(item.outputs) if self._outputs and item.outputs is not None else {}
        return CaptureRecord(
            request_id=request_id,
            time_unix_ns=item.timings.received_unix_ns,
            model=request.model_name,
            version=str(route.version) if route is not None else request.model_version,
            arm=arm or (route.arm.value if route is not None else ""),
            generation=route.generation if route is not None else 0,
            reason=route.reason.value if route is not None else "",
            status=status_name(item.error),
            latency_ms=item.timings.latency_s * 1e3,
            rows=item.rows or _rows_sent(inputs),
            inputs=inputs,
            outputs=outputs,
            inputs_checked=item.inputs is not None,
        )


def _rows_sent(inputs: dict[str, RawTensor]) -> int:
    for tensor in inputs.values():
        return tensor.shape[0] if tensor.shape else 1
    return 1
