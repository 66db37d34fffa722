"""HQ logs: a plain line for a person at a terminal, one JSON object per line otherwise (or as
--log-format says), and never a full card number."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from storedvalue.hq.structured_logging import JsonFormatter, configure_logging, mask_card_numbers

CARD = "7012345678901234"


def test_card_numbers_are_masked_to_their_last_four_digits() -> None:
    assert mask_card_numbers(f"card {CARD} failed") == "card ****1234 failed"
    assert mask_card_numbers("fencing token 42, version 7") == "fencing token 42, version 7"


def test_a_log_line_is_one_json_object_with_extras_and_a_masked_traceback() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.structured")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise RuntimeError(f"INSERT failed for card_number={CARD}")
        except RuntimeError:
            logger.exception("redeem %s failed", CARD, extra={"rpc": "Redeem", "card": CARD})
    finally:
        logger.removeHandler(handler)

    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "ERROR"
    assert entry["rpc"] == "Redeem"
    assert entry["message"] == "redeem ****1234 failed"
    assert entry["card"] == "****1234"
    assert "RuntimeError" in entry["exception"]
    assert CARD not in lines[0]


class Terminal(io.StringIO):
    """What stderr is when a person runs `storedvalue serve` in a terminal."""

    def isatty(self) -> bool:
        return True


def log_through_the_process_handler(stream: io.StringIO, log_format: str) -> str:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure_logging(log_format=log_format, stream=stream)
    try:
        logging.getLogger("storedvalue.hq.process").info(
            "stop requested for card %s", CARD, extra={"signal": "SIGTERM"})
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    return stream.getvalue()


@pytest.mark.parametrize(("stream", "log_format"), [
    (Terminal(), "auto"), (io.StringIO(), "text"), (Terminal(), "text"),
])
def test_a_person_at_a_terminal_or_asking_for_text_reads_one_plain_line(
    stream: io.StringIO, log_format: str
) -> None:
    written = log_through_the_process_handler(stream, log_format)

    (line,) = written.splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6})?Z INFO    "
                        r"stop requested for card \*\*\*\*1234  signal=SIGTERM", line), line
    assert CARD not in written


@pytest.mark.parametrize(("stream", "log_format"), [
    (io.StringIO(), "auto"), (io.StringIO(), "json"), (Terminal(), "json"),
])
def test_a_pipe_a_file_or_asking_for_json_gets_one_object_per_line(
    stream: io.StringIO, log_format: str
) -> None:
    written = log_through_the_process_handler(stream, log_format)

    (line,) = written.splitlines()
    entry = json.loads(line)
    assert (entry["message"], entry["signal"]) == ("stop requested for card ****1234", "SIGTERM")
    assert entry["time"].endswith("Z")
