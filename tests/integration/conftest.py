"""Fixtures shared by the integration tests: real example data, and the worker modes to run under."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2_grpc

from tests.support.gateway_process import GatewayProcess
from tests.support.model_repository import EXAMPLES
from tests.support.postgres import PrivateCluster, shared_server_url

# Every integration test that starts a gateway may run it either way; see `turnout serve --help`.
WORKER_MODES = ("process", "inprocess")


@pytest.fixture(scope="session")
def digits_pixels() -> npt.NDArray[np.float32]:
    """Real digits inputs, shape [N, 64] FP32: version 1's training sample, in feature order."""
    table = pq.read_table(EXAMPLES / "digits" / "1" / "reference.parquet")
    columns = [f"px_{index}" for index in range(64)]
    return np.column_stack([table.column(name).to_numpy() for name in columns]).astype(np.float32)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL of a real PostgreSQL server's maintenance database: the machine's, or a private cluster.
    Tests make databases of their own on it (tests.support.postgres.own_database)."""
    clusters: list[PrivateCluster] = []
    try:
        yield shared_server_url(clusters)
    finally:
        for cluster in clusters:
            cluster.close()


# `client` and `stub` talk to whichever module-scoped `gateway` fixture the test module defines.


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(gateway.address) as connected:
        yield connected


@pytest.fixture(scope="module")
def stub(gateway: GatewayProcess) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """The raw protocol, for requests tritonclient refuses to build."""
    with grpc.insecure_channel(gateway.address) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
