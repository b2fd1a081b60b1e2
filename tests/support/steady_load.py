"""A steady load on a gateway: client threads each sending one inference after another until the
block ends, every call's outcome kept, for tests that act on the gateway while it serves."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class Outcome:
    started: float
    finished: float
    status: str  # "OK", or the gRPC status name of the failure, like "UNAVAILABLE"
    version: str  # the model version that answered; "" for a failure
    message: str


class SteadyLoad:
    """``threads`` tritonclient callers through ``address``, each calling ``model`` with ``rows`` as its
    input ``input_name``, one call after another until the block ends."""

    def __init__(self, address: str, model: str, input_name: str, rows: npt.NDArray[np.float32], threads: int) -> None:
        self._address = address
        self._model = model
        self._input_name = input_name
        self._rows = rows
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        self._threads = [threading.Thread(target=self._call, name=f"load-{n}") for n in range(threads)]

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(TIMEOUT_S)

    def _call(self) -> None:
        request = triton.InferInput(self._input_name, list(self._rows.shape), "FP32")
        request.set_data_from_numpy(self._rows)
        with triton.InferenceServerClient(self._address) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    result = client.infer(self._model, [request], client_timeout=TIMEOUT_S)
                except InferenceServerException as error:
                    status = str(error.status()).removeprefix("StatusCode.")
                    outcome = Outcome(started, time.monotonic(), status, "", str(error.message()))
                else:
                    version = result.get_response().model_version
                    outcome = Outcome(started, time.monotonic(), "OK", version, "")
                with self._lock:
                    self._outcomes.append(outcome)

    def outcomes(self) -> list[Outcome]:
        with self._lock:
            return list(self._outcomes)

    def wait_for_successes(self, count: int, started_after: float = 0.0, timeout_s: float = TIMEOUT_S) -> None:
        """Returns once ``count`` calls started after ``started_after`` have succeeded."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sum(o.status == "OK" and o.started > started_after for o in self.outcomes()) >= count:
                return
            time.sleep(0.02)
        raise AssertionError(f"fewer than {count} successes within {timeout_s} s: {self.outcomes()[-5:]}")
