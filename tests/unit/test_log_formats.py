"""The log's two line formats: every JSON line is one object with the keys operators filter on."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from datetime import datetime

import pytest

from gateway.logs.configure import ACCESS_LOGGER, configure_logging
from gateway.logs.formats import JsonLineFormatter, TextFormatter, formatter_for, rfc3339
from gateway.settings import Settings


def record(message: str = "loaded %s", *args: object, **extra: object) -> logging.LogRecord:
    made = logging.getLogger("turnout.test").makeRecord(
        "turnout.test", logging.INFO, __file__, 12, message, args or ("digits",), None, extra=extra or None
    )
    made.created = 1_796_400_001.25  # 2026-12-04T16:00:01.25Z
    return made


def as_json(made: logging.LogRecord) -> dict[str, object]:
    line = JsonLineFormatter().format(made)
    assert "\n" not in line
    parsed = json.loads(line)
    assert isinstance(parsed, dict)
    return parsed


def test_a_json_line_has_time_level_logger_message_and_process() -> None:
    assert as_json(record()) == {
        "time": "2026-12-04T16:00:01.250000Z",
        "level": "INFO",
        "logger": "turnout.test",
        "message": "loaded digits",
        "process": record().process,
    }


def test_the_time_is_rfc3339_in_utc_with_fractional_seconds() -> None:
    text = rfc3339(1_796_400_001.000123)
    assert text.endswith("Z") and text[19] == "." and len(text) == len("2026-12-04T16:00:01.000123Z")
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert parsed.timestamp() == pytest.approx(1_796_400_001.000123, abs=1e-6)
    assert rfc3339(1_796_400_001.9999997) == "2026-12-04T16:00:02.000000Z", "rounds up into the next second"


def test_model_version_and_request_id_become_keys_when_the_record_carries_them() -> None:
    line = as_json(record(model="digits", version=2, request_id="r-1", unrelated="not written"))
    assert (line["model"], line["version"], line["request_id"]) == ("digits", 2, "r-1")
    assert "unrelated" not in line
    assert "model" not in as_json(record())


def test_fields_are_merged_but_never_replace_the_base_keys() -> None:
    line = as_json(record(fields={"arm": "canary", "latency_ms": 1.5, "message": "spoofed", "level": "X"}))
    assert (line["arm"], line["latency_ms"]) == ("canary", 1.5)
    assert (line["message"], line["level"]) == ("loaded digits", "INFO")


def test_an_exception_is_written_as_one_escaped_string() -> None:
    try:
        raise ValueError("bad artifact\nsecond line")
    except ValueError:
        made = record()
        made.exc_info = sys.exc_info()
    line = as_json(made)
    assert isinstance(line["exception"], str)
    assert line["exception"].startswith("Traceback") and "ValueError: bad artifact\nsecond line" in line["exception"]


def test_non_ascii_text_stays_valid_json_in_ascii_and_round_trips() -> None:
    made = record("modèle %s chargé ✓", "zürich")
    line = JsonLineFormatter().format(made)
    assert line.isascii()
    assert json.loads(line)["message"] == "modèle zürich chargé ✓"


def test_the_text_format_is_the_old_one_plus_fields_as_key_value() -> None:
    text = TextFormatter().format(record())
    assert text.endswith(" INFO turnout.test: loaded digits")
    fields = {"model": "digits", "error": "queue is full"}
    with_fields = TextFormatter().format(record("request %s", "r-1", fields=fields))
    assert with_fields.endswith(' turnout.test: request r-1 model=digits error="queue is full"')


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="xml"):
        formatter_for("xml")


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.NOTSET)


@pytest.mark.usefixtures("restored_logging")
def test_configure_logging_installs_one_stderr_handler_with_the_format_and_level() -> None:
    configure_logging(Settings(log_format="json", log_level="WARNING", access_log=True))
    configure_logging(Settings(log_format="json", log_level="WARNING", access_log=True))  # again: replaced
    root = logging.getLogger()
    assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, JsonLineFormatter)
    assert root.level == logging.WARNING
    # Asking for the access log is asking for its lines, whatever the level.
    assert logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO)
    configure_logging(Settings(log_format="text", log_level="WARNING"))
    assert isinstance(root.handlers[0].formatter, TextFormatter)
    assert not logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO)
