"""``turnout drift`` end to end, on capture datasets the tests write: table, JSON, HTML, filters, exit status."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gateway.capture.drift_command import EXIT_DRIFT, EXIT_NO_DRIFT, EXIT_USAGE
from gateway.cli import main
from tests.support.capture_dataset import write_capture
from tests.support.model_repository import EXAMPLES

FEATURES = [f"px_{i}" for i in range(64)]
REFERENCE = EXAMPLES / "digits" / "1" / "reference.parquet"
DAY_1 = datetime(2026, 12, 1, 12, tzinfo=UTC)
DAY_2 = datetime(2026, 12, 2, 12, tzinfo=UTC)


def digits() -> dict[str, np.ndarray]:
    table = pq.read_table(REFERENCE, columns=FEATURES)
    return {name: table.column(name).to_numpy() for name in FEATURES}


def varied() -> list[str]:
    """The features that are not (almost) always blank: shifting a constant by half its std moves nothing."""
    return [name for name, values in digits().items() if values.std() >= 0.5]


def shifted(features: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    moved = dict(features)
    for name in names:
        moved[name] = features[name] + 0.5 * features[name].std()
    return moved


def run(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    code = main(["drift", *arguments, "--repository", str(EXAMPLES)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    """digits version 1 served its own reference on day 1 and a copy with 4 features shifted on day 2;
    version 2 served 40 of 64 features shifted; a shadow and failed requests wildly off, never counted."""
    root = tmp_path / "capture"
    features = digits()
    write_capture(root, "digits", 1, features, start=DAY_1)
    write_capture(root, "digits", 1, shifted(features, ["px_20", "px_21", "px_36", "px_43"]), start=DAY_2)
    write_capture(root, "digits", 2, shifted(features, varied()[:40]), start=DAY_2)
    wild = {name: values * 50 + 100 for name, values in features.items()}
    write_capture(root, "digits", 2, wild, start=DAY_2, arm="shadow")
    write_capture(root, "digits", 2, wild, start=DAY_2, status="INVALID_ARGUMENT")
    return root


def test_the_table_names_the_newest_version_and_sorts_features_by_drift(
    capture: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "digits", "--capture-dir", str(capture))
    assert code == EXIT_DRIFT
    lines = out.splitlines()
    assert lines[0] == "model digits version 2 (the newest version with captured rows): 1347 captured rows"
    assert lines[2].startswith("DRIFT: 40 of 64 features drifted")
    rows = [line.split() for line in lines[lines.index("") + 2 :] if re.match(r"px_\d+ ", line)]
    assert len(rows) == 64
    assert {row[0] for row in rows[:40]} == set(varied()[:40]) and {row[1] for row in rows[:40]} == {"drift"}
    assert {row[1] for row in rows[40:]} <= {"ok", "warn"}
    assert "skipped: label (not captured)" in out


def test_json_keys_and_a_version_without_dataset_drift(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "digits", "--capture-dir", str(capture), "--version", "1", "--json")
    assert code == EXIT_NO_DRIFT  # 4 of 64 features is under the default drift share of 0.5
    document = json.loads(out)
    assert {"model", "version", "rows", "reference_rows", "drifted", "features"} <= document.keys()
    assert (document["model"], document["version"], document["rows"], document["reference_rows"]) == (
        "digits", 1, 2 * 1347, 1347,
    )
    assert document["drifted"] is False
    feature_keys = {"name", "psi", "js", "ks", "ks_pvalue", "wasserstein", "drifted"}
    assert all(feature_keys <= feature.keys() for feature in document["features"])
    verdicts = [feature["drifted"] for feature in document["features"]]
    assert verdicts == [True] * 4 + [False] * 60, "the drifted features first"
    assert {feature["name"] for feature in document["features"][:4]} == {"px_20", "px_21", "px_36", "px_43"}
    assert len(document["features"]) == 64


def test_the_drift_share_decides_the_exit_status(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ("digits", "--capture-dir", str(capture), "--version", "1")
    assert run(capsys, *arguments, "--drift-share", "0.05")[0] == EXIT_DRIFT  # 4 of 64 is 6%
    assert run(capsys, *arguments, "--drift-share", "0.07")[0] == EXIT_NO_DRIFT


def test_since_and_until_choose_the_rows(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ("digits", "--capture-dir", str(capture), "--version", "1", "--json")
    day_1 = json.loads(run(capsys, *arguments, "--until", "2026-12-02")[1])
    assert day_1["rows"] == 1347 and not any(feature["drifted"] for feature in day_1["features"])
    day_2 = json.loads(run(capsys, *arguments, "--since", "2026-12-02T00:00:00Z")[1])
    assert day_2["rows"] == 1347
    assert {feature["name"] for feature in day_2["features"] if feature["drifted"]} == {
        "px_20", "px_21", "px_36", "px_43",
    }
    # A time inside a day: the first ten minutes of day 2 are 600 rows, one a second.
    late = (DAY_2 + timedelta(minutes=10)).isoformat()
    assert json.loads(run(capsys, *arguments, "--since", "2026-12-02T12:00:00", "--until", late)[1])["rows"] == 600


def test_days_outside_the_window_are_never_opened(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A file that is not Parquet at all, in a day after the window: pruned by its partition, never read.
    late = capture / "model=digits" / "version=1" / "date=2026-12-30"
    late.mkdir()
    (late / "part-broken.parquet").write_bytes(b"not parquet")
    arguments = ("digits", "--capture-dir", str(capture), "--version", "1", "--json")
    assert json.loads(run(capsys, *arguments, "--until", "2026-12-03")[1])["rows"] == 2 * 1347
    # The proof that it would fail if it were read: a clear message, exit status 2.
    code, _, err = run(capsys, *arguments)
    assert code == EXIT_USAGE and "cannot read the capture or the reference" in err and "Parquet" in err


def test_the_arm_filter(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ("digits", "--capture-dir", str(capture), "--version", "2", "--json")
    assert json.loads(run(capsys, *arguments, "--arm", "shadow")[1])["features"][0]["drifted"]
    code, _, err = run(capsys, *arguments, "--arm", "canary")
    assert code == EXIT_USAGE and "no served rows" in err


def test_html_is_one_self_contained_page_with_a_histogram_per_feature(
    capture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "report.html"
    code, _, _ = run(capsys, "digits", "--capture-dir", str(capture), "--html", str(page))
    assert code == EXIT_DRIFT
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?:", html), "no reference outside the file"
    assert "<script" not in html and " src=" not in html and "<link" not in html
    assert html.count('<svg class="histogram"') == 64
    names = re.findall(r"<h2>(px_\d+)</h2>", html)
    assert len(names) == 64 and set(names[:40]) == set(varied()[:40]), "drifted features first"
    assert "Dataset drift" in html and "40 of 64 features drifted" in html


def test_reference_file_and_skipped_features(
    capture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = pq.read_table(REFERENCE)
    reference = tmp_path / "mine.parquet"
    pq.write_table(table.select(["px_20", "px_21", "label"]).append_column("extra", pa.array([1.0] * len(table))),
                   reference)
    code, out, _ = run(capsys, "digits", "--capture-dir", str(capture), "--version", "1", "--reference",
                       str(reference), "--json")
    document = json.loads(out)
    assert code == EXIT_DRIFT  # both compared features drifted on day 2
    assert sorted(feature["name"] for feature in document["features"]) == ["px_20", "px_21"]
    assert document["skipped"]["px_0"] == "not in the reference"
    assert document["skipped"]["label"] == "not captured" and document["skipped"]["extra"] == "not captured"


def test_a_feature_captured_only_as_nulls_is_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    features = digits()
    columns: dict[str, np.ndarray] = {name: features[name] for name in ("px_20", "px_21")}
    columns["px_22"] = np.full(len(features["px_20"]), np.nan)
    write_capture(tmp_path, "digits", 1, columns)
    code, out, _ = run(capsys, "digits", "--capture-dir", str(tmp_path), "--json")
    document = json.loads(out)
    assert code == EXIT_NO_DRIFT and [feature["name"] for feature in document["features"]] == ["px_20", "px_21"]
    assert document["skipped"]["px_22"] == "no finite values"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("resnet", "--capture-dir", "{capture}"), "no capture for model 'resnet'"),
        (("digits", "--capture-dir", "{capture}", "--version", "7"), "no capture for model 'digits' version 7"),
        (("digits", "--capture-dir", "{capture}", "--since", "2027-01-01"), "no served rows"),
        (("digits", "--capture-dir", "{capture}", "--reference", "/nonexistent.parquet"), "no reference sample"),
        (("digits", "--capture-dir", "{capture}", "--drift-share", "0"), "--drift-share must be in (0, 1]"),
        (("digits", "--capture-dir", "{capture}", "--since", "2026-12-02", "--until", "2026-12-01"), "before"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(
    capture: Path, capsys: pytest.CaptureFixture[str], arguments: tuple[str, ...], message: str
) -> None:
    code, out, err = run(capsys, *(argument.format(capture=capture) for argument in arguments))
    assert code == EXIT_USAGE and message in err and out == ""


def test_a_time_that_is_not_iso_8601_is_a_usage_error(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run(capsys, "digits", "--capture-dir", str(capture), "--since", "yesterday")
    assert exited.value.code == EXIT_USAGE
