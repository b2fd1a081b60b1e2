"""DriftWindow: bounded memory, the batch report's numbers on the same rows, and what it counts."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gateway.capture import drift
from gateway.capture.drift_window import DriftWindow, FeatureRing, ReferenceProfile, repository_profiles
from gateway.errors import InvalidArgument
from gateway.registry.repository import ModelRepository
from gateway.routing.decide import Arm, Reason
from gateway.serving.inference_types import InferRequest
from gateway.serving.observers import Finished, Route, Timings
from runtimes.raw_tensors import raw_of
from tests.support.model_repository import EXAMPLES

REFERENCE = EXAMPLES / "digits" / "1" / "reference.parquet"
FEATURES = [f"px_{i}" for i in range(64)]


def digits_rows() -> np.ndarray:
    table = pq.read_table(REFERENCE, columns=FEATURES)
    return np.column_stack([table.column(name).to_numpy() for name in FEATURES])


def digits_profile(model: str, version: int) -> ReferenceProfile | None:
    return ReferenceProfile.from_parquet(REFERENCE, "input", FEATURES) if model == "digits" else None


def finished(rows: np.ndarray, model: str = "digits", version: int = 1, error: bool = False) -> Finished:
    route = Route(model, version, Arm.STABLE, 1, Reason.RANDOM)
    request = InferRequest(model, "", "", [])
    inputs = {"input": raw_of(np.ascontiguousarray(rows, dtype=np.float32))}
    failure = InvalidArgument("no") if error else None
    return Finished(request, route, inputs, len(rows), None if error else {}, failure, Timings(0, 0.0, 0.0, 0.0))


def test_the_ring_keeps_the_newest_rows_in_fixed_memory() -> None:
    ring = FeatureRing(size=5, features=2)
    before = ring.nbytes
    for start in range(0, 12, 3):  # 12 rows in blocks of three: wraps around twice
        ring.append(np.arange(start, start + 3, dtype=np.float64).repeat(2).reshape(3, 2))
    assert ring.filled == 5 and ring.nbytes == before
    assert sorted(ring.column(0)) == [7.0, 8.0, 9.0, 10.0, 11.0]
    ring.append(np.arange(100.0, 120.0).repeat(2).reshape(20, 2))  # more than the window at once
    assert sorted(ring.column(1)) == [115.0, 116.0, 117.0, 118.0, 119.0]


def test_the_window_is_bounded_and_its_statistics_are_the_batch_reports() -> None:
    window = DriftWindow(digits_profile, size=1_000, sample_every=1)  # every batch: the newest rows exactly
    rows = digits_rows()
    shifted = rows.copy()
    shifted[:, 20] += 0.5 * rows[:, 20].std()
    for start in range(0, len(rows), 64):  # batches as the dispatcher reports them
        window.observe([finished(shifted[start : start + 64])])
    assert window.rows("digits", 1) == 1_000
    statistics = window.statistics("digits", 1)
    assert statistics is not None and len(statistics) == 64
    # The same 1,000 newest rows through the batch path.
    newest = shifted[-1_000:]
    reference = digits_rows()
    for feature, index in zip(statistics, range(64), strict=True):
        batch = drift.compare(drift.profile(FEATURES[index], reference[:, index]), newest[:, index])
        assert (feature.psi, feature.js, feature.ks, feature.ks_pvalue, feature.wasserstein, feature.drifted) == (
            batch.psi, batch.js, batch.ks, batch.ks_pvalue, batch.wasserstein, batch.drifted,
        ), FEATURES[index]
    assert [feature.name for feature in statistics if feature.drifted] == ["px_20"]


def test_once_full_the_window_keeps_every_kth_batch_and_fills_with_every_batch_before() -> None:
    window = DriftWindow(digits_profile, size=100, sample_every=4)
    for index in range(50):  # batches of 10 rows, every value of batch i is i
        window.observe([finished(np.full((10, 64), float(index)))])
    watched = window._watched[("digits", 1)]
    assert watched is not None and window.rows("digits", 1) == 100
    # Batches 0-9 filled it; of the 40 after, batches 13, 17, ..., 49 (every 4th) replaced them.
    kept = sorted(set(watched.ring.column(0).tolist()))
    assert kept == [float(index) for index in range(13, 50, 4)]


def test_a_sampled_window_of_a_steady_stream_measures_what_the_full_one_does() -> None:
    rows = digits_rows()
    generator = np.random.default_rng(7)
    every, sampled = DriftWindow(digits_profile, size=1_000, sample_every=1), DriftWindow(digits_profile, size=1_000)
    for _ in range(400):  # batches of 16 rows drawn from the reference: no drift anywhere
        batch = [finished(rows[generator.integers(0, len(rows), 16)])]
        every.observe(batch)
        sampled.observe(batch)
    full, kept = every.statistics("digits", 1), sampled.statistics("digits", 1)
    assert full is not None and kept is not None
    assert [f.name for f in kept if f.drifted] == [f.name for f in full if f.drifted]
    assert abs(np.mean([f.psi for f in kept]) - np.mean([f.psi for f in full])) < 0.005


def test_a_batch_of_requests_is_written_at_once_in_order_each_to_its_version() -> None:
    window = DriftWindow(digits_profile, size=100)
    batch = [
        finished(np.full((3, 64), 1.0)),
        finished(np.full((2, 64), 2.0), error=True),  # failed: not kept
        finished(np.full((1, 64), 3.0), version=2),
        finished(np.full((2, 64), 4.0)),
    ]
    window.observe(batch)
    first, second = window._watched[("digits", 1)], window._watched[("digits", 2)]
    assert first is not None and second is not None
    assert first.ring.column(5).tolist() == [1.0, 1.0, 1.0, 4.0, 4.0] and second.ring.column(0).tolist() == [3.0]


def test_sampling_needs_a_positive_period() -> None:
    with pytest.raises(ValueError, match="sample_every"):
        DriftWindow(digits_profile, sample_every=0)


def test_memory_does_not_grow_with_traffic() -> None:
    window = DriftWindow(digits_profile, size=200)
    rows = digits_rows()
    window.observe([finished(rows[:10])])
    watched = window._watched[("digits", 1)]
    assert watched is not None
    held = watched.ring.nbytes
    for _ in range(20):
        window.observe([finished(rows)])
    assert watched.ring.nbytes == held == 200 * 64 * 8 and window.rows("digits", 1) == 200


def test_failed_requests_and_models_without_a_reference_are_not_kept() -> None:
    loads: list[tuple[str, int]] = []

    def counted(model: str, version: int) -> ReferenceProfile | None:
        loads.append((model, version))
        return digits_profile(model, version)

    window = DriftWindow(counted, size=100)
    rows = digits_rows()[:10]
    window.observe([finished(rows, error=True), finished(rows, model="other")])
    assert window.rows("digits", 1) == 0 and window.statistics("digits", 1) is None
    assert not window.wants(Route("other", 1, Arm.STABLE, 0, Reason.NO_CANARY)), "no reference: not wanted again"
    assert window.wants(Route("digits", 2, Arm.STABLE, 0, Reason.NO_CANARY)), "not seen yet: wanted"
    assert not window.wants(None)
    window.observe([finished(rows), finished(rows)])
    assert window.rows("digits", 1) == 20 and window.watched_versions() == [("digits", 1)]
    assert sorted(loads) == [("digits", 1), ("other", 1)], "each profile is loaded once"


def test_a_broken_reference_stops_watching_that_version_only(tmp_path: Path) -> None:
    def broken(model: str, version: int) -> ReferenceProfile | None:
        return ReferenceProfile.from_parquet(tmp_path / "missing.parquet", "input", FEATURES)

    window = DriftWindow(broken)
    window.observe([finished(digits_rows()[:5])])
    assert window.statistics("digits", 1) is None
    assert not window.wants(Route("digits", 1, Arm.STABLE, 0, Reason.NO_CANARY))


def test_a_window_needs_a_row() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        FeatureRing(0, 3)


def test_profiles_from_a_model_repository() -> None:
    profiles = repository_profiles(ModelRepository(EXAMPLES))
    digits = profiles("digits", 1)
    assert digits is not None and digits.input_name == "input"
    assert [feature.name for feature in digits.features] == FEATURES
    assert profiles("digits", 9) is None and profiles("nothing", 1) is None
    window = DriftWindow(profiles, size=500)
    rows = digits_rows()
    window.observe([finished(rows[np.random.default_rng(3).permutation(len(rows))[:500]])])
    statistics = window.statistics("digits", 1)
    assert window.rows("digits", 1) == 500 and statistics is not None
    assert [feature.name for feature in statistics if feature.drifted] == [], "500 random rows of the reference"


def test_a_reference_without_the_feature_columns_is_not_watched_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    version = tmp_path / "digits" / "1"
    version.mkdir(parents=True)
    (tmp_path / "digits" / "model.yaml").write_text(
        "max_batch_size: 8\ninputs:\n  - {name: input, datatype: FP32, dims: [2]}\n"
        "outputs:\n  - {name: y, datatype: FP32, dims: [2]}\n"
    )
    (version / "model.onnx").write_bytes(b"")
    pq.write_table(pa.table({"px_0": [1.0], "px_1": [2.0]}), version / "reference.parquet")
    with caplog.at_level(logging.WARNING):
        assert repository_profiles(ModelRepository(tmp_path))("digits", 1) is None
    assert "no column for 2 of the features of digits version 1 (first: input_0)" in caplog.text
