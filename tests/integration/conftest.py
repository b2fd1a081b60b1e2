"""Fixtures shared by the integration tests: real example data, and the worker modes to run under."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq
import pytest

from tests.support.model_repository import EXAMPLES

# Every integration test that starts a gateway may run it either way; see `turnout serve --help`.
WORKER_MODES = ("process", "inprocess")


@pytest.fixture(scope="session")
def digits_pixels() -> npt.NDArray[np.float32]:
    """Real digits inputs, shape [N, 64] FP32: version 1's training sample, in feature order."""
    table = pq.read_table(EXAMPLES / "digits" / "1" / "reference.parquet")
    columns = [f"px_{index}" for index in range(64)]
    return np.column_stack([table.column(name).to_numpy() for name in columns]).astype(np.float32)
