"""``turnout capture``: what a capture directory holds, and exporting part of it, from the files alone.

It reads the Parquet dataset and the counters each gateway process saved, so it works whether or not
a gateway is running (records still in a write-ahead log segment are not counted until compacted).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import urllib.parse
from pathlib import Path
from typing import Any


def add_capture_command(commands: Any) -> None:
    """Register ``turnout capture`` on the ``turnout`` argument parser's subcommands."""
    text = "summarise a model's captured requests, or export them to one Parquet file"
    parser: argparse.ArgumentParser = commands.add_parser("capture", help=text, description=text)
    parser.add_argument("model", help="model name (required)")
    parser.add_argument(
        "--capture-dir", type=Path, required=True, metavar="DIR", help="the gateway's --capture-dir (required)"
    )
    parser.add_argument(
        "--version", dest="model_version", metavar="V", help="only this version (default: every version)"
    )
    parser.add_argument(
        "--since", type=_time, metavar="TIME",
        help="only records at or after this ISO 8601 time, UTC unless it says (default: the first)",
    )  # fmt: skip
    parser.add_argument(
        "--until", type=_time, metavar="TIME", help="only records before this ISO 8601 time (default: none)"
    )
    parser.add_argument(
        "--export", type=Path, metavar="FILE",
        help="write the selected records to this Parquet file (default: print a summary)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON for scripts (default: text for people)")


def _time(text: str) -> datetime.datetime:
    moment = datetime.datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)  # naive: UTC


def run_capture(args: argparse.Namespace) -> int:
    from gateway.capture.stats import saved_totals

    root: Path = args.capture_dir
    if not root.is_dir():
        print(f"turnout: {root} is not a capture directory", file=sys.stderr)
        return 2
    # A summary reads two columns; an export reads them all.
    columns = None if args.export is not None else ["request_id", "time"]
    table = _selected(root, args.model, args.model_version, args.since, args.until, columns)
    if args.export is not None:
        import pyarrow.parquet as pq

        pq.write_table(table, args.export, compression="zstd")
        print(f"{table.num_rows} rows written to {args.export}")
        return 0
    summary = _summary(root, args.model, args.model_version, table, saved_totals(root))
    print(json.dumps(summary, indent=2) if args.json else _text(summary))
    return 0


def _selected(
    root: Path,
    model: str,
    version: str | None,
    since: datetime.datetime | None,
    until: datetime.datetime | None,
    columns: list[str] | None,
) -> Any:
    import pyarrow.compute as pc

    from gateway.capture.parquet import open_dataset

    dataset = open_dataset(root)
    if "model" not in dataset.schema.names:  # nothing compacted yet
        return dataset.to_table()
    condition = pc.field("model") == model
    if version is not None:
        condition = condition & (pc.field("version").cast("string") == version)
    if since is not None:
        condition = condition & (pc.field("time") >= since)
    if until is not None:
        condition = condition & (pc.field("time") < until)
    return dataset.to_table(columns=columns, filter=condition)


def _summary(root: Path, model: str, version: str | None, table: Any, totals: dict[str, int]) -> dict[str, Any]:
    import pyarrow.parquet as pq

    partitions = []
    for directory in sorted(root.glob(f"model={urllib.parse.quote(model, safe='')}/version=*/date=*")):
        named = dict(part.split("=", 1) for part in directory.relative_to(root).parts)
        if version is not None and urllib.parse.unquote(named["version"]) != version:
            continue
        files = sorted(directory.glob("*.parquet"))
        partitions.append({
            "version": urllib.parse.unquote(named["version"]), "date": named["date"], "files": len(files),
            "rows": sum(pq.ParquetFile(path).metadata.num_rows for path in files),
            "bytes": sum(path.stat().st_size for path in files),
        })  # fmt: skip
    times = table.column("time").to_pylist() if table.num_rows else []
    requests = len(set(table.column("request_id").to_pylist())) if table.num_rows else 0
    return {
        "model": model,
        "partitions": partitions,
        "rows": table.num_rows,
        "requests": requests,
        "bytes": sum(partition["bytes"] for partition in partitions),
        "first": min(times).isoformat() if times else None,
        "last": max(times).isoformat() if times else None,
        # Counted for the whole directory, every model: the gateways keep one set of counters each.
        "dropped": totals["dropped_full"] + totals["dropped_budget"] + totals["dropped_closing"],
        "failed": totals["failed"],
        "skipped": totals["skipped"],
        "sampled_out": totals["sampled_out"],
        "deleted_files": totals["deleted_files"],
        "unclean_stops": totals["unclean_stops"],
        "counters": totals,
    }


def _text(summary: dict[str, Any]) -> str:
    lines = [f"{summary['model']}: {summary['requests']} requests, {summary['rows']} rows, {summary['bytes']} bytes"]
    if summary["first"] is not None:
        lines.append(f"  from {summary['first']} to {summary['last']}")
    lines.extend(
        f"  version {p['version']}  {p['date']}  {p['rows']} rows  {p['files']} files  {p['bytes']} bytes"
        for p in summary["partitions"]
    )
    lines.append(
        f"  dropped {summary['dropped']}, failed {summary['failed']}, skipped {summary['skipped']},"
        f" sampled out {summary['sampled_out']}, deleted files {summary['deleted_files']} (whole directory)"
    )
    if summary["unclean_stops"]:
        lines.append(
            f"  {summary['unclean_stops']} gateway stop(s) without a graceful stop: under async capture, the"
            " records of each one's last flush interval may be missing"
        )
    return "\n".join(lines)
