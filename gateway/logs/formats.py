"""The two line formats of the gateway's log: ``text`` for people, ``json`` (one object a line) for collectors.

A log call that concerns a model or a request passes ``extra={"model": ..., "version": ...,
"request_id": ...}``; the JSON format writes those as keys of their own. ``extra={"fields": {...}}``
adds keys of any name (the access log's): the JSON format merges them into the object, the text
format appends them to the line as ``key=value``.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Keys a log record may carry (through ``extra=``) that the JSON format writes when they are present.
CONTEXT_KEYS = ("model", "version", "request_id")
# The keys every JSON line has; a record's ``fields`` never overwrite them.
_BASE_KEYS = frozenset({"time", "level", "logger", "message", "process", "exception", "stack"})
_NEEDS_QUOTES = re.compile(r'[\s"=]')


def rfc3339(seconds: float) -> str:
    """A Unix time as RFC 3339 in UTC with microseconds: ``2026-12-04T18:20:01.123456Z``."""
    whole = int(seconds)
    microseconds = round((seconds - whole) * 1e6)
    if microseconds == 1_000_000:
        whole, microseconds = whole + 1, 0
    return f"{_second(whole)}.{microseconds:06d}Z"


@functools.lru_cache(maxsize=4)
def _second(whole: int) -> str:
    """``2026-12-04T18:20:01`` of a whole Unix second; cached, as a busy log writes many lines a second."""
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record, on one line.

    ASCII only (``ensure_ascii``): a non-ASCII message is escaped, so every line stays valid JSON
    whatever encoding the stream has (stderr falls back to backslash escapes that JSON would refuse).
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,  # several gateway processes share one stderr
        }
        attributes = record.__dict__
        for key in CONTEXT_KEYS:
            value = attributes.get(key)
            if value is not None:
                line[key] = value
        fields = attributes.get("fields")
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                if key not in _BASE_KEYS:
                    line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, then a record's ``fields`` as ``key=value``."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        fields = record.__dict__.get("fields")
        if isinstance(fields, Mapping) and fields:
            text += " " + " ".join([f"{key}={_text_value(value)}" for key, value in fields.items()])
        return text


def _text_value(value: object) -> str:
    """A value as one token: quoted (JSON string rules) when it has a space, a quote or an equals sign."""
    text = str(value)
    if not text or _NEEDS_QUOTES.search(text):
        return json.dumps(text)
    return text


def formatter_for(log_format: str) -> logging.Formatter:
    """The formatter of ``--log-format``: ``text`` or ``json``."""
    if log_format == "json":
        return JsonLineFormatter()
    if log_format == "text":
        return TextFormatter()
    raise ValueError(f"unknown log format {log_format!r} (text or json)")
