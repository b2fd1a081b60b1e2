"""Digits requests on the raw V2 inference stub: one call that says which version answered, and
clients on connections of their own sending from threads, every call's outcome kept."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np
import numpy.typing as npt
from tritonclient.grpc import service_pb2, service_pb2_grpc

MODEL = "digits"


@dataclass(frozen=True, slots=True)
class Served:
    started: float
    version: str  # the model version that answered; "" for a failure
    error: str = ""  # "CODE: details" for a failure


def digits_request(pixels: npt.NDArray[np.floating]) -> service_pb2.ModelInferRequest:
    """A request for the digits model with ``pixels`` (rows of 64) as its input."""
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=list(pixels.shape))
    return service_pb2.ModelInferRequest(
        model_name=MODEL, inputs=[tensor], raw_input_contents=[pixels.astype(np.float32).tobytes()]
    )


def infer_version(address: str, pixels: npt.NDArray[np.float32], timeout_s: float = 20.0) -> str:
    """The version of the digits model that answers ``pixels`` at ``address``, on a channel of its own."""
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelInfer(digits_request(pixels), timeout=timeout_s)
    return str(answer.model_version)


def own_channel(address: str) -> grpc.Channel:
    # A private subchannel pool gives each client its own TCP connection: behind one port served by
    # several processes (or by nginx), the clients spread over them.
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


def run_clients(
    address: str,
    clients: int,
    requests_each: int | None,
    stop: threading.Event | None = None,
    timeout_s: float = 30.0,
) -> list[Served]:
    """``clients`` threads, each on its own connection, sending one digits request after another until
    it has sent ``requests_each`` (``None``: no limit) or ``stop`` is set; every request's outcome."""
    results: list[list[Served]] = [[] for _ in range(clients)]
    request = digits_request(np.random.default_rng(0).random((1, 64)) * 16)

    def client(index: int) -> None:
        with own_channel(address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            sent = 0
            while (requests_each is None or sent < requests_each) and not (stop is not None and stop.is_set()):
                started = time.monotonic()
                try:
                    response = stub.ModelInfer(request, timeout=timeout_s)
                    results[index].append(Served(started, response.model_version))
                except grpc.RpcError as error:
                    results[index].append(Served(started, "", f"{error.code().name}: {error.details()}"))
                sent += 1

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [served for per_client in results for served in per_client]
