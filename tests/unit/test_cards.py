"""Online rules of a card: locks, fencing tokens, leases, redemption, credit memos."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from storedvalue.hq.domain.cards import (
    Card,
    CardKind,
    CardStatus,
    generate_card_number,
    is_valid_card_number,
    issue_card,
    luhn_check_digit,
)
from storedvalue.hq.domain.errors import (
    CardFlagged,
    CardKindNotSupported,
    CardLocked,
    CardRedeemed,
    CurrencyMismatch,
    InsufficientFunds,
    LockNotHeld,
)
from storedvalue.hq.domain.journal import JournalEntryKind, journal_balance
from storedvalue.hq.domain.money import Money

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
LEASE = timedelta(hours=4)


def gift_card(amount: int = 10_000) -> Card:
    return issue_card(
        card_number=generate_card_number(), kind=CardKind.GIFT_CARD, value=Money(amount, "EUR"),
        terminal_id="t1", transaction_id="sale-0", now=NOW,
    )


def credit_memo(amount: int = 5_000) -> Card:
    return issue_card(
        card_number=generate_card_number(), kind=CardKind.CREDIT_MEMO,
        value=Money(amount, "EUR"), terminal_id="t1", transaction_id="return-0", now=NOW,
    )


def status_of(card: Card) -> CardStatus:
    return card.status


def test_generated_card_numbers_carry_a_valid_check_digit() -> None:
    for _ in range(200):
        number = generate_card_number()
        assert len(number) == 16 and is_valid_card_number(number)
    assert is_valid_card_number("79927398713")  # the textbook Luhn example
    assert not is_valid_card_number("79927398710")
    assert luhn_check_digit("7992739871") == "3"


def textbook_luhn(payload: str) -> str:
    total = 0
    for index, char in enumerate(reversed(payload)):
        digit = int(char) * (2 if index % 2 == 0 else 1)
        total += digit - 9 if digit > 9 else digit
    return str((10 - total % 10) % 10)


def test_the_check_digit_is_luhns_for_every_digit_string_and_refuses_anything_else() -> None:
    for payload in ["0", "9", "18", "7992739871", "0" * 18, "9" * 18,
                    *(str(n).zfill(length) for n in range(0, 10**6, 7919) for length in (7, 15))]:
        assert luhn_check_digit(payload) == textbook_luhn(payload), payload
    for payload in ["12a4", "\u0661\u0662", "1 2", ""]:
        with pytest.raises(ValueError, match="ASCII digits"):
            luhn_check_digit(payload)


def test_a_card_number_is_8_to_19_ascii_digits_ending_in_luhns_check_digit_of_the_rest(
) -> None:
    numbers = ["", "0", "00000000", "79927398713", "79927398710", "1" * 19, "1" * 20,
               "\u0661" * 10, "7992739871a", " 79927398713", "79927398713\n",
               *(str(n).zfill(length) for n in range(0, 10**6, 3917) for length in range(6, 22))]
    for number in numbers:
        expected = (8 <= len(number) <= 19 and number.isascii() and number.isdigit()
                    and textbook_luhn(number[:-1]) == number[-1])
        assert is_valid_card_number(number) is expected, number
        assert is_valid_card_number(number) is expected, number  # remembered: the same


def test_same_terminal_and_transaction_relocking_renews_the_lease_and_keeps_the_token() -> None:
    card = gift_card()
    first = card.acquire_lock(terminal_id="t1", transaction_id="s1", now=NOW, lease=LEASE)
    later = NOW + timedelta(hours=1)
    again = card.acquire_lock(terminal_id="t1", transaction_id="s1", now=later, lease=LEASE)
    assert again.fencing_token == first.fencing_token
    assert again.lease_expires_at == later + LEASE


def test_second_terminal_cannot_lock_a_locked_card_and_learns_who_holds_it() -> None:
    card = gift_card()
    card.acquire_lock(terminal_id="t1", transaction_id="s1", now=NOW, lease=LEASE)
    with pytest.raises(CardLocked) as refused:
        card.acquire_lock(terminal_id="t2", transaction_id="s9", now=NOW, lease=LEASE)
    assert refused.value.metadata["holder_terminal_id"] == "t1"
    assert refused.value.metadata["holder_transaction_id"] == "s1"
    assert refused.value.metadata["lease_expires_at"] == "2026-11-27T16:00:00Z"  # NOW + LEASE
    assert card.card_number not in refused.value.message  # masked


def test_an_expired_lease_is_taken_over_and_the_old_token_is_refused() -> None:
    card = gift_card()
    old = card.acquire_lock(terminal_id="t1", transaction_id="s1", now=NOW, lease=LEASE)
    after = NOW + LEASE + timedelta(seconds=1)
    new = card.acquire_lock(terminal_id="t2", transaction_id="s2", now=after, lease=LEASE)
    assert new.fencing_token > old.fencing_token
    with pytest.raises(LockNotHeld):
        card.redeem_online(terminal_id="t1", transaction_id="s1", line_id="l1",
                           fencing_token=old.fencing_token, amount=Money(100, "EUR"), now=after)


def test_an_expired_lease_nobody_took_over_still_lets_its_holder_redeem() -> None:
    card = gift_card()
    lock = card.acquire_lock(terminal_id="t1", transaction_id="s1", now=NOW, lease=LEASE)
    late = NOW + LEASE * 2
    card.redeem_online(terminal_id="t1", transaction_id="s1", line_id="l1",
                       fencing_token=lock.fencing_token, amount=Money(100, "EUR"), now=late)
    assert card.balance_minor == 9_900


def test_redeem_debits_journals_and_releases_the_lock() -> None:
    card = gift_card(10_000)
    lock = card.acquire_lock(terminal_id="t1", transaction_id="s1", now=NOW, lease=LEASE)
    remainder = card.redeem_online(terminal_id="t1", transaction_id="s1", line_id="l1",
                                   fencing_token=lock.fencing_token, amount=Money(2_500, "EUR"),
                                   now=NOW)
    assert remainder == 0
    assert card.balance_minor == 7_500
    assert card.lock is None
    assert journal_balance(card.pending_entries) == card.balance_minor
    assert card.pending_entries[-1].kind is JournalEntryKind.REDEEM


def test_online_redemption_never_overdraws() -> None:
    card = gift_card(1_000)
    lock = card.acquire_lock(terminal_id="t1", transaction_id="s1", now=NOW, lease=LEASE)
    with pytest.raises(InsufficientFunds) as refused:
        card.redeem_online(terminal_id="t1", transaction_id="s1", line_id="l1",
                           fencing_token=lock.fencing_token, amount=Money(1_001, "EUR"), now=NOW)
    assert refused.value.metadata["balance_minor"] == "1000"
    assert card.balance_minor == 1_000 and card.lock == lock


def test_redeem_in_another_currency_is_refused() -> None:
    card = gift_card()
    lock = card.acquire_lock(terminal_id="t1", transaction_id="s1", now=NOW, lease=LEASE)
    with pytest.raises(CurrencyMismatch):
        card.redeem_online(terminal_id="t1", transaction_id="s1", line_id="l1",
                           fencing_token=lock.fencing_token, amount=Money(1, "USD"), now=NOW)


def test_partial_credit_memo_redemption_moves_the_remainder_out_and_closes_the_memo() -> None:
    memo = credit_memo(5_000)
    lock = memo.acquire_lock(terminal_id="t1", transaction_id="s1", now=NOW, lease=LEASE)
    remainder = memo.redeem_online(terminal_id="t1", transaction_id="s1", line_id="l1",
                                   fencing_token=lock.fencing_token, amount=Money(1_200, "EUR"),
                                   now=NOW)
    assert remainder == 3_800
    assert memo.balance_minor == 0 and memo.status is CardStatus.REDEEMED
    assert journal_balance(memo.pending_entries) == 0
    with pytest.raises(CardRedeemed):
        memo.acquire_lock(terminal_id="t2", transaction_id="s2", now=NOW, lease=LEASE)


def test_a_flagged_card_cannot_be_locked_online() -> None:
    card = gift_card(100)
    card.debit_offline(terminal_id="t1", transaction_id="s1", line_id="l1", amount_minor=500,
                       occurred_at=NOW, now=NOW)
    assert card.status is CardStatus.FLAGGED and card.balance_minor == -400
    with pytest.raises(CardFlagged):
        card.acquire_lock(terminal_id="t1", transaction_id="s2", now=NOW, lease=LEASE)
    card.clear_flag_if_resolved(open_exceptions=1)
    assert status_of(card) is CardStatus.FLAGGED
    card.clear_flag_if_resolved(open_exceptions=0)
    assert status_of(card) is CardStatus.ACTIVE


def test_value_can_be_added_to_gift_cards_only() -> None:
    card = gift_card(100)
    card.add_value(amount=Money(50, "EUR"), terminal_id="t1", transaction_id="s", now=NOW)
    assert card.balance_minor == 150
    with pytest.raises(CardKindNotSupported):
        credit_memo().add_value(amount=Money(50, "EUR"), terminal_id="t1", transaction_id="s",
                                now=NOW)


def test_a_forced_unlock_keeps_its_reason_in_a_zero_amount_journal_entry() -> None:
    card = gift_card(100)
    card.acquire_lock(terminal_id="t1", transaction_id="s1", now=NOW, lease=LEASE)
    released = card.force_release(reason="till destroyed", by="alice", now=NOW)
    assert released is not None and released.terminal_id == "t1"
    assert card.lock is None
    entry = card.pending_entries[-1]
    assert entry.kind is JournalEntryKind.FORCED_UNLOCK and entry.amount_minor == 0
    assert "till destroyed" in entry.note
    assert journal_balance(card.pending_entries) == card.balance_minor


def test_token_zero_releases_only_the_callers_own_lock_for_that_sale() -> None:
    card = gift_card()
    card.acquire_lock(terminal_id="t1", transaction_id="s1", now=NOW, lease=LEASE)
    with pytest.raises(LockNotHeld):
        card.release_lock(terminal_id="t2", transaction_id="s1", fencing_token=0)
    with pytest.raises(LockNotHeld):
        card.release_lock(terminal_id="t1", transaction_id="s2", fencing_token=0)
    card.release_lock(terminal_id="t1", transaction_id="s1", fencing_token=0)
    assert card.lock is None
