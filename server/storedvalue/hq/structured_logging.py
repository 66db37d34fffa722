"""Logs of the HQ process on stderr: for a person at a terminal, one readable line per event
("2026-12-02T03:04:05.120Z INFO  stop requested  signal=SIGTERM"); for anything else (a file,
journald, a log shipper), one JSON object per line. `--log-format` chooses; "auto" picks by
whether stderr is a terminal.

Card numbers never reach the log, in either form: every run of 8 to 19 digits in the
message, the extra fields and the traceback (database errors quote their parameters) is
masked to its last four digits, the same form errors use.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from storedvalue.hq.domain.errors import mask_card_number
from storedvalue.hq.domain.moments import rfc3339

_CARD_LIKE = re.compile(r"(?<!\d)\d{8,19}(?!\d)")
# Attributes every LogRecord has; anything else was passed with `extra=` and is logged.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName",
}


def mask_card_numbers(text: str) -> str:
    return _CARD_LIKE.sub(lambda m: mask_card_number(m.group(0)), text)


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask_card_numbers(value)
    if isinstance(value, bool | float | type(None)):
        return value
    if isinstance(value, int):
        return mask_card_numbers(str(value)) if len(str(abs(value))) >= 8 else value
    return mask_card_numbers(str(value))


def _entry(formatter: logging.Formatter, record: logging.LogRecord) -> dict[str, Any]:
    """A record's fields, masked: time, level, logger, message, its extras, a traceback."""
    entry: dict[str, Any] = {
        "time": rfc3339(datetime.fromtimestamp(record.created, UTC)),
        "level": record.levelname,
        "logger": record.name,
        "message": mask_card_numbers(record.getMessage()),
    }
    for key, value in record.__dict__.items():
        if key not in _STANDARD and not key.startswith("_"):
            entry[key] = _masked(value)
    if record.exc_info:
        entry["exception"] = mask_card_numbers(formatter.formatException(record.exc_info))
    return entry


class JsonFormatter(logging.Formatter):
    """One JSON object per line: for machines."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_entry(self, record), ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """One line per event for a person: time, level, message, then the extras as key=value
    (and a traceback below it)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = _entry(self, record)
        exception = entry.pop("exception", None)
        line = f"{entry.pop('time')} {entry.pop('level'):<7} {entry.pop('message')}"
        entry.pop("logger")
        if entry:
            line += "  " + " ".join(f"{key}={value}" for key, value in entry.items())
        return f"{line}\n{exception}" if exception else line


def configure_logging(*, log_format: str = "auto", level: int = logging.INFO,
                      stream: TextIO | None = None,
                      fields: Mapping[str, Any] | None = None) -> None:
    """Route every logger of the process to one handler on `stream` (stderr), text or JSON
    as `log_format` says (call once, from the process entry point; libraries and tests leave
    logging alone). `fields` go on every entry: a worker process of `serve --processes N`
    says which it is, as its lines mix with its siblings' on one stderr."""
    out = stream or sys.stderr
    if log_format == "auto":
        log_format = "text" if out.isatty() else "json"
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextFormatter() if log_format == "text" else JsonFormatter())
    if fields:
        stamped = dict(fields)

        def stamp(record: logging.LogRecord) -> bool:
            for key, value in stamped.items():
                setattr(record, key, value)
            return True

        handler.addFilter(stamp)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
