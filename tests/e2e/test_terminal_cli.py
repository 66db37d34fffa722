"""`storedvalue terminal` as support staff use it: real CLI processes against a real
`storedvalue serve` process, which the tests stop and restart to take HQ out of reach."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cli_shop import Shop


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    shop = Shop(tmp_path)
    shop.start_hq()
    try:
        shop.register("T1")
        shop.register("T2")
        allowed = shop.cli("admin", "--target", shop.address, "params", "set",
                           "--gift-card-offline", "on")
        assert allowed.returncode == 0, allowed.stderr
        yield shop
    finally:
        if shop.process is not None:
            shop.stop_hq()


def test_support_staff_lock_a_card_sell_it_while_hq_is_down_and_sync_it_afterwards(
    shop: Shop,
) -> None:
    card = shop.issue("50.00:EUR")
    locked = shop.ok("T1", "lock", card, "--transaction", "S1")
    refused = shop.till("T2", "lock", card, "--transaction", "S9")
    online = shop.ok("T1", "status")

    assert f"locked card ****{card[-4:]} for sale S1: gift card, balance 50.00 EUR" in locked
    assert refused.returncode == 1
    assert "locked by terminal T1 for sale S1" in refused.stderr
    assert "CARD_LOCKED" in refused.stderr
    rfc3339 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6})?Z"  # as HQ writes times
    assert re.search(rf"until {rfc3339} \(CARD_LOCKED\)", refused.stderr), refused.stderr
    assert re.search(rf"last reached HQ: {rfc3339}$", online, re.MULTILINE), online
    assert "connectivity: ONLINE" in online
    assert "version 2 (gift cards offline: allowed" in online
    assert "outbox: 0 offline transaction(s)" in online

    shop.stop_hq()
    sold = shop.ok("T1", "sale", "S1", "--line", f"{card}:12.50:EUR")
    offline = shop.ok("T1", "status")
    listed = shop.ok("T1", "outbox")

    assert "sale S1 completed offline (outbox sequence 1)" in sold
    assert "12.50 EUR, completed offline" in sold
    assert "connectivity: OFFLINE" in offline
    assert "outbox: 1 offline transaction(s)" in offline
    assert re.search(r"^\s+1  S1 ", listed, re.MULTILINE)

    shop.start_hq()
    synced = shop.ok("T1", "sync")
    after = shop.ok("T1", "balance", card)
    empty = shop.ok("T1", "outbox")
    taken_over = shop.ok("T2", "lock", card, "--transaction", "S9")

    assert "synced 1 offline transaction(s)" in synced
    assert "1 applied" in synced
    assert "0 left" in synced
    assert "balance 37.50 EUR, not locked" in after
    assert "outbox is empty" in empty
    assert "locked card" in taken_over


def test_a_sync_of_several_batches_draws_a_progress_bar_on_stderr(shop: Shop) -> None:
    cards = [shop.issue("10.00:EUR") for _ in range(3)]
    for index, card in enumerate(cards):
        shop.ok("T1", "lock", card, "--transaction", f"S{index}")
    shop.stop_hq()
    for index, card in enumerate(cards):
        shop.ok("T1", "sale", f"S{index}", "--line", f"{card}:1.00:EUR")
    unreachable = shop.till("T1", "sync", "--wait", "0.5")
    shop.start_hq()

    synced = shop.till("T1", "sync", "--batch-size", "1")

    assert unreachable.returncode == 1
    assert f"HQ at {shop.address} is unreachable" in unreachable.stderr
    assert "3 left" in unreachable.stdout
    assert synced.returncode == 0, synced.stderr
    assert "syncing [" in synced.stderr
    assert "3/3" in synced.stderr
    assert "synced 3 offline transaction(s)" in synced.stdout
    assert "outbox: 0 offline" in shop.ok("T1", "status")


def test_refusals_name_their_reason_and_exit_non_zero(shop: Shop) -> None:
    card = shop.issue("5.00:EUR")

    too_much = shop.till("T1", "sale", "S1", "--line", f"{card}:9.00:EUR")
    unknown = shop.till("T1", "balance", "4000000000000002")
    released = shop.ok("T1", "unlock", card, "--transaction", "S1")
    bad_line = shop.till("T1", "sale", "S2", "--line", f"{card}:9.001:EUR")
    no_credential = shop.till("T3", "status")
    shop.credentials["T3"] = "not-a-credential"
    stranger = shop.till("T3", "balance", card)
    shop.stop_hq()
    never_locked = shop.till("T1", "sale", "S3", "--line", f"{card}:1.00:EUR")

    assert too_much.returncode == 1
    assert "INSUFFICIENT_FUNDS" in too_much.stderr
    assert unknown.returncode == 1
    assert "CARD_NOT_FOUND" in unknown.stderr
    assert f"released card ****{card[-4:]} from sale S1" in released
    assert bad_line.returncode == 2
    assert "more than 2 decimals for EUR" in bad_line.stderr
    assert no_credential.returncode == 2
    assert "--credential" in no_credential.stderr
    assert stranger.returncode == 1
    assert "UNAUTHENTICATED" in stranger.stderr
    assert never_locked.returncode == 1
    assert "cannot complete offline" in never_locked.stderr
    assert "NOT_LOCKED" in never_locked.stderr
    assert "nothing was lost" in never_locked.stderr


def test_support_staff_see_the_open_sales_and_abandon_one(shop: Shop) -> None:
    card = shop.issue("20.00:EUR")
    shop.ok("T1", "lock", card, "--transaction", "S1")

    listed = shop.ok("T1", "sales")
    abandoned = shop.ok("T1", "abandon", "S1")
    after = shop.ok("T1", "sales", "S1")

    assert "sale S1: OPEN" in listed
    assert f"card ****{card[-4:]}: locked" in listed
    assert "sale S1 abandoned" in abandoned
    assert "sale S1: ABANDONED" in after
    assert "not locked" in shop.ok("T1", "balance", card)
