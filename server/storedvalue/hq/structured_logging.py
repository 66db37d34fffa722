"""Structured logs for the HQ process: one JSON object per line on stderr.

Card numbers never reach the log: every run of 8 to 19 digits in the message, the extra
fields and the traceback (database errors quote their parameters) is masked to its last four
digits, the same form errors use.
"""

from __future__ import annotations

import json
import logging
import re
import sys
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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
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
            entry["exception"] = mask_card_numbers(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(*, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Route every logger of the process to one JSON handler (call once, from the process
    entry point; libraries and tests leave logging alone)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
