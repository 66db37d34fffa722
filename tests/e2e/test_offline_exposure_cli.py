"""The offline risk limits end to end, through the shell as a store and its back office use it:
a `storedvalue serve` process, `storedvalue terminal` processes for the till and
`storedvalue admin` for the back office. The till goes offline, sells up to its exposure
limit, is refused past it, syncs; the back office sees its exposure fall to zero and the
exceptions, and resolves them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .cli_shop import Shop


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    shop = Shop(tmp_path)
    shop.start_hq()
    try:
        shop.register("T1", "--store", "S1")
        shop.register("T2")
        shop.admin("params", "set", "--gift-card-offline", "on")
        yield shop
    finally:
        if shop.process is not None:
            shop.stop_hq()


def terminal(shop: Shop, terminal_id: str) -> dict[str, Any]:
    listed: list[dict[str, Any]] = shop.admin_json("terminals", "--json")
    (found,) = [t for t in listed if t["terminal_id"] == terminal_id]
    return found


def test_a_till_sells_offline_up_to_its_exposure_limit_and_the_back_office_sees_it_synced(
    shop: Shop,
) -> None:
    override = shop.admin_json("params", "set", "--store", "S1",
                               "--gift-card-max-unsynced", "30.00:EUR")
    cards = [shop.issue("50.00:EUR") for _ in range(3)]
    for sale, card in enumerate(cards, start=1):
        shop.ok("T1", "lock", card, "--transaction", f"S{sale}")
    limits = shop.ok("T1", "status")

    assert override["change"]["store_id"] == "S1"
    assert override["parameters"]["gift_card_offline_limits"]["max_unsynced_amount"] == {
        "amount_minor": "3000", "currency_code": "EUR"}
    assert "gift card offline limits: most unsynced 30.00 EUR" in limits

    shop.stop_hq()
    first = shop.ok("T1", "sale", "S1", "--line", f"{cards[0]}:20.00:EUR")
    second = shop.ok("T1", "sale", "S2", "--line", f"{cards[1]}:10.00:EUR")
    refused = shop.till("T1", "sale", "S3", "--line", f"{cards[2]}:5.00:EUR")
    still_open = shop.ok("T1", "sales", "S3")
    exposure = shop.ok("T1", "status")

    assert "completed offline" in first and "completed offline" in second
    assert refused.returncode == 1
    assert "OFFLINE_UNSYNCED_LIMIT_EXCEEDED" in refused.stderr
    assert "limit max_unsynced_amount: 0.00 EUR left" in refused.stderr
    assert "The sale stays open; nothing was lost" in refused.stderr
    assert "sale S3: OPEN" in still_open
    assert "unsynced gift card lines: 30.00 EUR (2 line(s))" in exposure

    # HQ is back. Meanwhile another store spent the first card whole: the offline sale of it
    # will overdraw it.
    shop.start_hq()
    shop.ok("T1", "status")  # the till reaches HQ and reports what it holds
    before_sync = terminal(shop, "T1")
    table = shop.admin("terminals")
    shop.admin("unlock", cards[0], "--reason", "customer at another store")
    shop.ok("T2", "sale", "X1", "--line", f"{cards[0]}:50.00:EUR")
    synced = shop.ok("T1", "sync")
    after_sync = terminal(shop, "T1")
    exceptions = shop.admin_json("exceptions", "--json")
    locks = shop.admin("locks")

    assert before_sync["store_id"] == "S1"
    assert before_sync["link"]["state"] == "LINK_STATE_ONLINE"
    assert before_sync["last_report"]["outbox"]["transaction_count"] == "2"
    assert before_sync["last_report"]["outbox"]["unsynced_amounts"] == [{
        "card_kind": "CARD_KIND_GIFT_CARD",
        "amount": {"amount_minor": "3000", "currency_code": "EUR"},
        "line_count": "2",
    }]
    assert re.search(r"^T1\s+S1\s+online since .*2 txn: gift card 30\.00 EUR", table,
                     re.MULTILINE), table
    assert "1 with exception" in synced and "0 left" in synced
    assert "unsynced_amounts" not in after_sync["last_report"]["outbox"]
    assert after_sync["sync_status"]["highest_contiguous_sequence"] == "2"
    (group,) = exceptions["groups"]
    assert (group["kind"], group["count"]) == ("OVERDRAFT", 1)
    (overdraft,) = group["exceptions"]
    assert overdraft["terminal_id"] == "T1" and overdraft["card_number"] == cards[0]
    assert re.search(rf"^{cards[2]}\s+T1 / sale S3\s", locks, re.MULTILINE), locks

    resolved = shop.admin("exceptions", "resolve", overdraft["exception_id"],
                          "--resolution", "customer refunded 20.00 EUR")
    left = shop.admin("exceptions")
    shown_resolved = shop.admin("exceptions", "--include-resolved")

    assert '"resolved_by"' in resolved
    assert left.strip() == "no offline exception"
    assert "OVERDRAFT: 1 (0 open)" in shown_resolved
    assert "nothing" in shop.admin("terminals").splitlines()[1]
