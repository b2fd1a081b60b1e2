"""Read a model's captured inputs and its reference sample, and report their drift as a table or JSON.

The capture is a Hive-partitioned Parquet dataset, ``<capture dir>/model=<name>/version=<v>/date=<day>/``,
one column per input feature. Only served inputs count: rows whose ``status`` is ``OK`` on any arm but
``shadow`` (a shadow's copy is the same input as its primary's, counted once already). The reference
is the version's ``reference.parquet`` beside its model file, or a file named on the command line;
columns are matched by name, and features only one side has are listed as skipped.

Reading opens the version's own directory (model and version are directories, not filters) and asks
pyarrow for the feature columns alone, the day pushed down to the ``date=`` partitions and the rest
of the filter to the row groups. The statistics are computed one feature
per task on a small thread pool: numpy's sort and searches release the GIL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from gateway.capture import drift
from gateway.capture.drift_thresholds import DEFAULT_BINS, DEFAULT_DRIFT_SHARE, REFERENCE_FILE

# Columns of a capture record that are not model inputs (``host``: since several hosts share a capture).
RECORD_COLUMNS = frozenset({"request_id", "row", "time", "arm", "generation", "reason", "status", "latency_ms", "host"})
PARTITION_COLUMNS = ("model", "version", "date")  # only the day is read; the others are directories
OUTPUT_PREFIX = "output."
SHADOW_ARM = "shadow"
SERVED_STATUS = "OK"


class DriftUsageError(Exception):
    """Nothing to compare: no capture for the model, no reference, no feature in common."""


@dataclass(frozen=True)
class Window:
    """Which captured rows to read."""

    model: str
    version: int | None = None  # None: the newest version with captured rows
    since: datetime | None = None  # inclusive, UTC
    until: datetime | None = None  # exclusive, UTC
    arm: str | None = None  # None: every arm but shadow


@dataclass(frozen=True)
class DriftReport:
    model: str
    version: int
    version_chosen: bool  # True when no version was asked for and the newest captured one was taken
    rows: int
    reference_rows: int
    reference: str
    drift_share: float
    features: list[drift.FeatureDrift]  # the most drifted first
    skipped: dict[str, str] = field(default_factory=dict)  # feature -> why it was not compared
    window: Window | None = None

    @property
    def drifted_features(self) -> list[str]:
        return [feature.name for feature in self.features if feature.drifted]

    @property
    def drifted(self) -> bool:
        return drift.dataset_drifted(self.features, self.drift_share)


def captured_versions(capture_dir: Path, model: str) -> list[int]:
    """The versions with a capture directory for ``model``, newest first (a listing, no file read)."""
    versions = []
    for path in (capture_dir / f"model={model}").glob("version=*"):
        number = path.name.removeprefix("version=")
        if path.is_dir() and number.isdigit():
            versions.append(int(number))
    return sorted(versions, reverse=True)


def version_dir(capture_dir: Path, model: str, version: int) -> Path:
    return capture_dir / f"model={model}" / f"version={version}"


def open_capture(capture_dir: Path, model: str, version: int) -> ds.Dataset:
    """One version's capture. Opened at its own directory, so the model and version need no filter and
    the schema is that version's (another model, or another version, may have other inputs)."""
    # The day is read as text: an ISO date string sorts as the calendar does.
    partitioning = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")
    return ds.dataset(version_dir(capture_dir, model, version), format="parquet", partitioning=partitioning)


def served_rows(window: Window) -> ds.Expression:
    """The filter for served inputs in the window; the day first, so pyarrow prunes whole partitions."""
    expression = ds.field("status") == SERVED_STATUS
    if window.since is not None:
        expression &= ds.field("date") >= window.since.date().isoformat()
        expression &= ds.field("time") >= pa.scalar(window.since, pa.timestamp("us", "UTC"))
    if window.until is not None:
        expression &= ds.field("date") <= window.until.date().isoformat()
        expression &= ds.field("time") < pa.scalar(window.until, pa.timestamp("us", "UTC"))
    if window.arm is not None:
        return expression & (ds.field("arm") == window.arm)
    return expression & (ds.field("arm") != SHADOW_ARM)


def feature_columns(schema: pa.Schema) -> list[str]:
    """The captured input columns: everything but the record's own fields, outputs and partition keys."""
    return [
        column.name
        for column in schema
        if column.name not in RECORD_COLUMNS
        and column.name not in PARTITION_COLUMNS
        and not column.name.startswith(OUTPUT_PREFIX)
    ]


def numeric(data_type: pa.DataType) -> bool:
    return bool(pa.types.is_integer(data_type) or pa.types.is_floating(data_type))


def reference_file(repository: Path, model: str, version: int) -> Path:
    return repository / model / str(version) / REFERENCE_FILE


def choose_version(capture_dir: Path, window: Window, versions: Sequence[int]) -> tuple[int, ds.Dataset, int]:
    """The version asked for, or the newest with served rows in the window; its dataset and row count."""
    for version in [window.version] if window.version is not None else versions:
        dataset = open_capture(capture_dir, window.model, version)
        rows = dataset.count_rows(filter=served_rows(window))
        if rows:
            return version, dataset, rows
    asked = f" version {window.version}" if window.version is not None else ""
    raise DriftUsageError(f"no served rows for model {window.model!r}{asked} in the capture in that time window")


def matched_features(capture: pa.Schema, reference: pa.Schema) -> tuple[list[str], dict[str, str]]:
    """Features both sides have as numbers, in the capture's order; and why each other one was left out."""
    captured = feature_columns(capture)
    skipped: dict[str, str] = {}
    compared = []
    for name in captured:
        if name not in reference.names:
            skipped[name] = "not in the reference"
        elif not numeric(capture.field(name).type) or not numeric(reference.field(name).type):
            skipped[name] = "not numeric"
        else:
            compared.append(name)
    for name in reference.names:
        if name not in captured:
            skipped[name] = "not captured"
    return compared, skipped


def column_array(table: pa.Table, name: str) -> npt.NDArray[Any]:
    """A column as numpy; nulls become NaN, which the statistics leave out."""
    column = table.column(name)
    if column.null_count:
        column = pc.cast(column, pa.float64()).fill_null(float("nan"))
    values: npt.NDArray[Any] = column.to_numpy()
    return values


def build_report(
    capture_dir: Path,
    window: Window,
    repository: Path,
    reference: Path | None = None,
    bins: int = DEFAULT_BINS,
    drift_share: float = DEFAULT_DRIFT_SHARE,
    threads: int | None = None,
) -> DriftReport:
    """Read, compare and sort. A file pyarrow cannot read (a truncated capture file, a reference that is
    not Parquet) is a :class:`DriftUsageError` naming it, not a traceback."""
    try:
        return _build_report(capture_dir, window, repository, reference, bins, drift_share, threads)
    except (pa.ArrowException, OSError) as error:
        raise DriftUsageError(f"cannot read the capture or the reference: {error}") from error


def _build_report(
    capture_dir: Path,
    window: Window,
    repository: Path,
    reference: Path | None,
    bins: int,
    drift_share: float,
    threads: int | None,
) -> DriftReport:
    versions = captured_versions(capture_dir, window.model)
    if not versions:
        raise DriftUsageError(f"no capture for model {window.model!r} under {capture_dir}")
    if window.version is not None and window.version not in versions:
        found = ", ".join(map(str, versions))
        raise DriftUsageError(f"no capture for model {window.model!r} version {window.version} (captured: {found})")
    version, capture, _ = choose_version(capture_dir, window, versions)
    reference_path = reference or reference_file(repository, window.model, version)
    if not reference_path.is_file():
        raise DriftUsageError(f"no reference sample at {reference_path} (give one with --reference FILE)")
    reference_schema = pq.read_schema(reference_path)
    names, skipped = matched_features(capture.schema, reference_schema)
    if not names:
        raise DriftUsageError(f"the capture and {reference_path} have no numeric feature in common")
    reference_table = pq.read_table(reference_path, columns=names)
    current_table = read_current(capture, names, window)
    compared = compare_all(reference_table, current_table, names, bins, threads)
    features = [feature for feature in compared if feature is not None]
    skipped.update({name: "no finite values" for name, feature in zip(names, compared, strict=True) if feature is None})
    if not features:
        raise DriftUsageError(f"no feature has finite values on both sides ({len(names)} matched by name)")
    return DriftReport(
        model=window.model,
        version=version,
        version_chosen=window.version is None,
        rows=current_table.num_rows,
        reference_rows=reference_table.num_rows,
        reference=str(reference_path),
        drift_share=drift_share,
        features=sorted(features, key=lambda feature: -feature.score),  # stable: ties keep the capture order
        skipped=skipped,
        window=window,
    )


def read_current(capture: ds.Dataset, names: Sequence[str], window: Window) -> pa.Table:
    """The feature columns of the served rows. One fragment and one batch read ahead, not pyarrow's
    default 4 and 16: at a million rows by 64 features that kept peak memory at 660 MB instead of
    950 MB, and read faster on two cores (0.44 s against 1.04 s; docs/benchmarks-log.md)."""
    return capture.to_table(columns=list(names), filter=served_rows(window), fragment_readahead=1, batch_readahead=1)


def compare_all(
    reference: pa.Table, current: pa.Table, names: Sequence[str], bins: int, threads: int | None
) -> list[drift.FeatureDrift | None]:
    """Each feature's drift, in the order of ``names``; None for a feature one side has no values of."""

    def one(name: str) -> drift.FeatureDrift | None:
        try:
            return drift.compare(drift.profile(name, column_array(reference, name), bins), column_array(current, name))
        except drift.NoFiniteValues:
            return None

    workers = threads or min(len(names), os.cpu_count() or 1, 8)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="drift") as pool:
        return list(pool.map(one, names))


def report_json(report: DriftReport) -> dict[str, Any]:
    """The ``--json`` document; these keys are a contract (new ones may be added, none renamed)."""
    return {
        "model": report.model,
        "version": report.version,
        "rows": report.rows,
        "reference_rows": report.reference_rows,
        "drifted": report.drifted,
        "features": [
            {
                "name": feature.name,
                "psi": feature.psi,
                "js": feature.js,
                "ks": feature.ks,
                "ks_pvalue": feature.ks_pvalue,
                "wasserstein": feature.wasserstein,
                "drifted": feature.drifted,
                "level": feature.level,
                "test": feature.test,
            }
            for feature in report.features
        ],
        "drifted_features": report.drifted_features,
        "drift_share": report.drift_share,
        "version_chosen": report.version_chosen,
        "reference": report.reference,
        "skipped": report.skipped,
    }


def report_lines(report: DriftReport) -> Iterator[str]:
    """The table for a terminal: a summary line, then one row per feature, the most drifted first."""
    chosen = " (the newest version with captured rows)" if report.version_chosen else ""
    yield f"model {report.model} version {report.version}{chosen}: {report.rows} captured rows"
    yield f"reference {report.reference}: {report.reference_rows} rows"
    drifted = len(report.drifted_features)
    verdict = "DRIFT" if report.drifted else "no drift"
    yield (
        f"{verdict}: {drifted} of {len(report.features)} features drifted"
        f" (dataset drift at {report.drift_share:.0%} or more)"
    )
    yield ""
    yield f"{'feature':<24} {'verdict':<7} {'psi':>8} {'js':>7} {'ks':>7} {'ks p':>9} {'wass/sd':>8}  test"
    for feature in report.features:
        yield (
            f"{feature.name:<24} {feature.level:<7} {feature.psi:>8.4f} {feature.js:>7.4f} {feature.ks:>7.4f}"
            f" {feature.ks_pvalue:>9.3g} {feature.wasserstein:>8.4f}  {feature.test}"
        )
    if report.skipped:
        yield ""
        yield "skipped: " + ", ".join(f"{name} ({why})" for name, why in sorted(report.skipped.items()))
