"""``turnout drift``: its arguments and exit status; the work is in :mod:`gateway.capture.drift_report`.

Only argparse here, so building the ``turnout`` parser imports neither pyarrow nor scipy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from gateway.capture.drift_thresholds import DEFAULT_BINS, DEFAULT_DRIFT_SHARE

# Exit status of `turnout drift`.
EXIT_NO_DRIFT, EXIT_DRIFT, EXIT_USAGE = 0, 1, 2


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or date and time; without a zone it is UTC."""
    try:
        parsed = datetime.combine(date.fromisoformat(text), time()) if len(text) == 10 else datetime.fromisoformat(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {text!r}") from error
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def add_drift_command(commands: Any) -> None:
    """Register ``turnout drift`` on the ``turnout`` argument parser's subcommands."""
    text = "compare a model's captured inputs with its reference sample; exit 1 when the dataset drifted"
    parser: argparse.ArgumentParser = commands.add_parser("drift", help=text, description=text)
    parser.add_argument("model", help="model name (required)")
    parser.add_argument("--capture-dir", type=Path, required=True, metavar="DIR", help="the capture dataset (required)")
    parser.add_argument(
        "--version", type=int, metavar="V", help="model version (default: the newest with captured rows)"
    )
    parser.add_argument(
        "--since", type=parse_time, metavar="TIME",
        help="from this ISO 8601 date or time, UTC, inclusive (default: the first row)",
    )
    parser.add_argument(
        "--until", type=parse_time, metavar="TIME",
        help="until this ISO 8601 date or time, UTC, exclusive (default: the last row)",
    )
    parser.add_argument("--arm", help="only this routing arm (default: every arm but shadow)")
    repository = os.environ.get("TURNOUT_REPOSITORY") or "models"
    parser.add_argument(
        "--repository", "--model-repository", type=Path, default=Path(repository), metavar="DIR",
        help=f"model repository holding <model>/<version>/reference.parquet (default: {repository};"
        " env TURNOUT_REPOSITORY)",
    )
    parser.add_argument(
        "--reference", type=Path, metavar="FILE", help="reference Parquet file (default: the version's)"
    )
    parser.add_argument(
        "--bins", type=int, default=DEFAULT_BINS, metavar="N",
        help=f"quantile bins for PSI and Jensen-Shannon (default: {DEFAULT_BINS})",
    )
    parser.add_argument(
        "--drift-share", type=float, default=DEFAULT_DRIFT_SHARE, metavar="X",
        help=f"share of drifted features that makes the dataset drift (default: {DEFAULT_DRIFT_SHARE:g})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts (default: a table)")
    parser.add_argument(
        "--html", type=Path, metavar="FILE", help="also write a self-contained HTML report here (default: none)"
    )


def run_drift(args: argparse.Namespace) -> int:
    """``turnout drift``: 0 no dataset drift, 1 dataset drift, 2 nothing to compare or bad arguments."""
    if not 0 < args.drift_share <= 1 or args.bins < 2:
        print("turnout drift: --drift-share must be in (0, 1] and --bins at least 2", file=sys.stderr)
        return EXIT_USAGE
    if args.since is not None and args.until is not None and args.since >= args.until:
        print("turnout drift: --since must be before --until", file=sys.stderr)
        return EXIT_USAGE
    from gateway.capture.drift_report import DriftUsageError, Window, build_report, report_json, report_lines

    window = Window(args.model, args.version, args.since, args.until, args.arm)
    try:
        report = build_report(args.capture_dir, window, args.repository, args.reference, args.bins, args.drift_share)
    except DriftUsageError as error:
        print(f"turnout drift: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(report_json(report), indent=2))
    else:
        print("\n".join(report_lines(report)))
    if args.html is not None:
        from gateway.capture.drift_html import render

        args.html.write_text(render(report), encoding="utf-8")
    return EXIT_DRIFT if report.drifted else EXIT_NO_DRIFT
