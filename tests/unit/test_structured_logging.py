"""HQ logs: one JSON object per line, and never a full card number."""

from __future__ import annotations

import io
import json
import logging

from storedvalue.hq.structured_logging import JsonFormatter, mask_card_numbers

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
