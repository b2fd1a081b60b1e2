"""Closed write-ahead log segments compacted into a Hive-partitioned Parquet dataset.

``<root>/model=<name>/version=<v>/date=<YYYY-MM-DD>/<segment>.parquet``. A request of ``n`` rows
becomes ``n`` Parquet rows sharing its ``request_id`` (``row`` says which), so a feature column holds
one value per sample, as drift statistics want it. A tensor with a batch axis is cut into its rows:
a numeric row of shape ``(F,)`` becomes ``F`` columns (the model's ``feature_names`` for an input
when they fit, else ``<name>_<i>``), a numeric scalar one column, anything else a binary column of
its raw bytes plus a ``<name>.shape`` column. Outputs get the same, prefixed ``output.``. Inputs
of a request that failed before they were checked are kept whole as bytes and shape, since their
datatype may fit no column the model's answered requests make.

Every row has a ``host`` column: the host whose gateway served the request (null in files written
before hosts were named, and for segments left from then; readers take the union of the files'
schemas, so such files read with a null host).

The file is named after its segment, which names its host, process and run
(:mod:`gateway.capture.naming`): writers on several hosts sharing the directory never write the same
file, and compacting a segment again after a crash replaces the same files instead of duplicating
rows. It is written to a temporary name of the writing host's own, starting with a dot (so no
reader lists it: pyarrow skips such names, and :func:`parquet_files` takes ``*.parquet`` alone),
fsynced, renamed onto its name in one step and the directory fsynced: only then is the segment
deleted.
"""

from __future__ import annotations

import datetime
import functools
import os
import urllib.parse
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from gateway.capture.record import CaptureRecord
from gateway.capture.wal import sync_directory
from gateway.registry.model_settings import SettingsInvalid, read_model_settings
from runtimes.datatypes import BYTES, numpy_dtype
from runtimes.raw_tensors import RawTensor, cut_rows

OUTPUT_PREFIX = "output."
FeatureNames = Callable[[str], Sequence[str] | None]


def repository_feature_names(repository: Path) -> FeatureNames:
    """Column names for a model's input features, read from its ``model.yaml`` when compacting."""

    def names(model: str) -> Sequence[str] | None:
        try:
            return read_model_settings(repository / model).feature_names
        except (SettingsInvalid, OSError, ValueError):  # an unknown or broken model: generic names
            return None

    return names


def partition_of(record: CaptureRecord) -> tuple[str, str, str]:
    day = datetime.datetime.fromtimestamp(record.time_unix_ns / 1e9, datetime.UTC).date().isoformat()
    return record.model, record.version, day


def partition_dir(root: Path, model: str, version: str, day: str) -> Path:
    # Percent-encoded: a name from a failed request may hold anything; pyarrow decodes it ("uri").
    quoted = [urllib.parse.quote(part, safe="") for part in (model, version or "none", day)]
    return root / f"model={quoted[0]}" / f"version={quoted[1]}" / f"date={quoted[2]}"


_FIXED: tuple[tuple[str, pa.DataType], ...] = (
    ("request_id", pa.string()),
    ("row", pa.int32()),
    ("time", pa.timestamp("us", tz="UTC")),
    ("arm", pa.string()),
    ("generation", pa.int64()),
    ("reason", pa.string()),
    ("status", pa.string()),
    ("latency_ms", pa.float64()),
)
HOST_COLUMN = "host"  # one value per file: the host that served its records


class _Block:
    """Numeric columns filled from one tensor's raw rows: joined once and cut into columns by numpy,
    not value by value in Python (which cost about 70 µs a digits record)."""

    def __init__(self, names: tuple[str, ...], dtype: np.dtype[Any]) -> None:
        self.names = names
        self.dtype = dtype
        self.rows: list[int] = []
        self.chunks: list[bytes] = []

    def add(self, first_row: int, count: int, data: bytes, dtype: np.dtype[Any]) -> None:
        if dtype != self.dtype:  # the same columns in another datatype: kept in the first one's
            data = np.frombuffer(data, dtype).astype(self.dtype).tobytes()
        self.rows.extend(range(first_row, first_row + count))
        self.chunks.append(data)

    def columns(self, total: int) -> dict[str, pa.Array]:
        data = np.frombuffer(b"".join(self.chunks), self.dtype).reshape(-1, len(self.names))
        mask = None
        if len(self.rows) != total:  # rows of other records (failed, or other inputs) are null
            full = np.zeros((total, len(self.names)), self.dtype)
            full[self.rows] = data
            data, mask = full, np.ones(total, np.bool_)
            mask[self.rows] = False
        by_column = np.ascontiguousarray(data.T)
        return {name: pa.array(by_column[index], mask=mask) for index, name in enumerate(self.names)}


class _Columns:
    """The columns of one file: fixed ones, numeric blocks, and sparse binary ones."""

    def __init__(self) -> None:
        self.fixed: dict[str, list[Any]] = {name: [] for name, _ in _FIXED}
        self.blocks: dict[tuple[str, ...], _Block] = {}
        self.sparse: dict[str, tuple[pa.DataType, dict[int, Any]]] = {}
        self.rows = 0

    def block(self, names: tuple[str, ...], dtype: np.dtype[Any]) -> _Block:
        found = self.blocks.get(names)
        if found is None:
            found = self.blocks[names] = _Block(names, dtype)
        return found

    def put(self, name: str, kind: pa.DataType, row: int, value: Any) -> None:
        self.sparse.setdefault(name, (kind, {}))[1][row] = value

    def table(self, host: str | None) -> pa.Table:
        arrays: dict[str, pa.Array] = {name: pa.array(self.fixed[name], type=kind) for name, kind in _FIXED}
        arrays[HOST_COLUMN] = pa.array([host] * self.rows, type=pa.string())
        for block in self.blocks.values():
            arrays.update(block.columns(self.rows))
        for name, (kind, values) in self.sparse.items():
            arrays[name] = pa.array([values.get(row) for row in range(self.rows)], type=kind)
        return pa.table(arrays)


def _add_tensor(
    columns: _Columns, base: int, rows: int, name: str, tensor: RawTensor, names: Sequence[str] | None
) -> None:
    batched = bool(tensor.shape) and tensor.shape[0] == rows
    row_shape = tensor.shape[1:] if batched else tensor.shape
    if tensor.datatype != BYTES and len(row_shape) <= 1:
        if row_shape:
            width = row_shape[0]
            labels = tuple(names) if names is not None and len(names) == width else _numbered(name, width)
        else:
            labels = (name,)
        if labels:
            dtype = numpy_dtype(tensor.datatype)
            columns.block(labels, dtype).add(base, rows if batched else 1, bytes(tensor.data), dtype)
        return
    pieces = cut_rows(tensor, [1] * rows) if batched and rows > 1 else [tensor]
    for offset, piece in enumerate(pieces):
        _add_bytes(columns, base + offset, name, piece, row_shape)


@functools.lru_cache(maxsize=256)
def _numbered(name: str, width: int) -> tuple[str, ...]:
    return tuple(f"{name}_{index}" for index in range(width))


def _add_bytes(columns: _Columns, row: int, name: str, piece: RawTensor, shape: tuple[int, ...]) -> None:
    columns.put(name, pa.binary(), row, bytes(piece.data))
    columns.put(f"{name}.shape", pa.list_(pa.int64()), row, list(shape))


def table_of(
    records: Sequence[CaptureRecord], feature_names: Sequence[str] | None, host: str | None = None
) -> pa.Table:
    """One Parquet table for records of one partition, served by ``host``."""
    columns = _Columns()
    fixed = columns.fixed
    for record in records:
        rows = max(record.rows, 1)
        base = columns.rows
        time_us = record.time_unix_ns // 1000
        for name, value in (
            ("request_id", record.request_id), ("time", time_us), ("arm", record.arm),
            ("generation", record.generation), ("reason", record.reason), ("status", record.status),
            ("latency_ms", record.latency_ms),
        ):  # fmt: skip
            fixed[name].extend([value] * rows)
        fixed["row"].extend(range(rows))
        lone_input = feature_names if len(record.inputs) == 1 else None
        for name, tensor in record.inputs.items():
            if record.inputs_checked:
                _add_tensor(columns, base, rows, name, tensor, lone_input)
            else:  # as sent, whatever its datatype: whole, as bytes, on the record's first row
                _add_bytes(columns, base, name, tensor, tensor.shape)
        for name, tensor in record.outputs.items():
            _add_tensor(columns, base, rows, OUTPUT_PREFIX + name, tensor, None)
        columns.rows += rows
    return columns.table(host)


def write_partitions(
    root: Path,
    stem: str,
    records: Sequence[CaptureRecord],
    feature_names: FeatureNames,
    host: str | None,
    writing_host: str,
) -> list[Path]:
    """Write ``records``, served by ``host``, as one file per partition, durably; returns the files written.

    ``writing_host`` (this host) names the temporary files: a segment from before hosts were named
    may be compacted by two hosts at once where the filesystem's locks do not reach across hosts, and
    then each writes its own temporary file and renames the same rows onto the same name.
    """
    groups: dict[tuple[str, str, str], list[CaptureRecord]] = defaultdict(list)
    for record in records:
        groups[partition_of(record)].append(record)
    written = []
    for (model, version, day), members in sorted(groups.items()):
        directory = partition_dir(root, model, version, day)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"{stem}.parquet"
        _write_durably(table_of(members, feature_names(model), host), target, writing_host)
        written.append(target)
    return written


def _write_durably(table: pa.Table, target: Path, writing_host: str) -> None:
    # The same name each time on one host: compacting again after a crash overwrites what it left.
    temporary = target.with_name(f".{target.name}.{writing_host}.tmp")
    pq.write_table(table, temporary, compression="zstd")
    fd = os.open(temporary, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, target)
    sync_directory(target.parent)


def parquet_files(root: Path) -> list[Path]:
    return sorted(path for path in root.glob("model=*/version=*/date=*/*.parquet"))


def open_dataset(root: Path) -> pads.Dataset:
    """The whole capture dataset with one schema: the union of its files' (a file of failed requests
    alone has no tensor columns, and pyarrow would otherwise take the first file's schema)."""
    files = [str(path) for path in parquet_files(root)]
    found = pads.dataset(files, partitioning="hive", partition_base_dir=str(root))
    if not files:
        return found
    schema = pa.unify_schemas([fragment.physical_schema for fragment in found.get_fragments()])
    for partition_field in found.partitioning.schema:
        schema = schema.append(partition_field)
    return pads.dataset(files, partitioning="hive", partition_base_dir=str(root), schema=schema)
