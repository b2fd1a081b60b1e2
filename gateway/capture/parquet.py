"""Closed write-ahead log segments compacted into a Hive-partitioned Parquet dataset.

``<root>/model=<name>/version=<v>/date=<YYYY-MM-DD>/<segment>.parquet``. A request of ``n`` rows
becomes ``n`` Parquet rows sharing its ``request_id`` (``row`` says which), so a feature column holds
one value per sample, as drift statistics want it. A tensor with a batch axis is cut into its rows:
a numeric row of shape ``(F,)`` becomes ``F`` columns (the model's ``feature_names`` for an input
when they fit, else ``<name>_<i>``), a numeric scalar one column, anything else a binary column of
its raw bytes plus a ``<name>.shape`` column. Outputs get the same, prefixed ``output.``. Inputs
of a request that failed before they were checked are kept whole as bytes and shape, since their
datatype may fit no column the model's answered requests make.

The file is named after its segment, so compacting a segment again after a crash replaces the same
files instead of duplicating rows. It is written to a temporary name, fsynced, renamed and the
directory fsynced: only then is the segment deleted.
"""

from __future__ import annotations

import datetime
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


class _Columns:
    """Columns being filled for one file: each a list with one slot per Parquet row."""

    def __init__(self) -> None:
        self.values: dict[str, list[Any]] = {}
        self.types: dict[str, pa.DataType] = {}
        self.rows = 0

    def put(self, name: str, kind: pa.DataType, row: int, value: Any) -> None:
        column = self.values.get(name)
        if column is None:
            column = self.values[name] = [None] * self.rows
            self.types[name] = kind
        column.append(value) if len(column) == row else column.__setitem__(row, value)

    def end_rows(self, count: int) -> None:
        self.rows += count
        for column in self.values.values():
            column.extend([None] * (self.rows - len(column)))

    def table(self) -> pa.Table:
        return pa.table({name: pa.array(column, type=self.types[name]) for name, column in self.values.items()})


def _add_tensor(
    columns: _Columns, base: int, rows: int, name: str, tensor: RawTensor, names: Sequence[str] | None
) -> None:
    batched = bool(tensor.shape) and tensor.shape[0] == rows
    pieces = cut_rows(tensor, [1] * rows) if batched and rows > 1 else [tensor]
    for offset, piece in enumerate(pieces):
        row_shape = piece.shape[1:] if batched else piece.shape
        _add_piece(columns, base + offset, name, piece, row_shape, names)


def _add_piece(
    columns: _Columns,
    row: int,
    name: str,
    piece: RawTensor,
    row_shape: tuple[int, ...],
    names: Sequence[str] | None,
    raw: bool = False,
) -> None:
    if not raw and piece.datatype != BYTES and len(row_shape) <= 1:
        values = np.frombuffer(piece.data, dtype=numpy_dtype(piece.datatype))
        kind = pa.from_numpy_dtype(values.dtype)
        if not row_shape:
            columns.put(name, kind, row, values[0].item())
            return
        labels = names if names is not None and len(names) == row_shape[0] else None
        for index, value in enumerate(values.tolist()):
            columns.put(labels[index] if labels else f"{name}_{index}", kind, row, value)
        return
    columns.put(name, pa.binary(), row, bytes(piece.data))
    columns.put(f"{name}.shape", pa.list_(pa.int64()), row, list(row_shape))


def table_of(records: Sequence[CaptureRecord], feature_names: Sequence[str] | None) -> pa.Table:
    """One Parquet table for records of one partition."""
    columns = _Columns()
    for record in records:
        rows = max(record.rows, 1)
        for offset in range(rows):
            row = columns.rows + offset
            columns.put("request_id", pa.string(), row, record.request_id)
            columns.put("row", pa.int32(), row, offset)
            columns.put("time", pa.timestamp("us", tz="UTC"), row, record.time_unix_ns // 1000)
            columns.put("arm", pa.string(), row, record.arm)
            columns.put("generation", pa.int64(), row, record.generation)
            columns.put("reason", pa.string(), row, record.reason)
            columns.put("status", pa.string(), row, record.status)
            columns.put("latency_ms", pa.float64(), row, record.latency_ms)
        lone_input = feature_names if len(record.inputs) == 1 else None
        for name, tensor in record.inputs.items():
            if record.inputs_checked:
                _add_tensor(columns, columns.rows, rows, name, tensor, lone_input)
            else:  # as sent, whatever its datatype: whole, as bytes, on the record's first row
                _add_piece(columns, columns.rows, name, tensor, tensor.shape, None, raw=True)
        for name, tensor in record.outputs.items():
            _add_tensor(columns, columns.rows, rows, OUTPUT_PREFIX + name, tensor, None)
        columns.end_rows(rows)
    return columns.table()


def write_partitions(
    root: Path, stem: str, records: Sequence[CaptureRecord], feature_names: FeatureNames
) -> list[Path]:
    """Write ``records`` as one file per partition, durably; returns the files written."""
    groups: dict[tuple[str, str, str], list[CaptureRecord]] = defaultdict(list)
    for record in records:
        groups[partition_of(record)].append(record)
    written = []
    for (model, version, day), members in sorted(groups.items()):
        directory = partition_dir(root, model, version, day)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"{stem}.parquet"
        _write_durably(table_of(members, feature_names(model)), target)
        written.append(target)
    return written


def _write_durably(table: pa.Table, target: Path) -> None:
    temporary = target.with_name(f".{target.name}.tmp")
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
