"""Sample domain objects and small helpers for the storage contract tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from storedvalue.hq.domain.cards import Card, CardKind, CardStatus, Lock
from storedvalue.hq.domain.journal import JournalEntry, JournalEntryKind
from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.offline import (
    OfflineException,
    OfflineExceptionKind,
    OfflineLineOutcome,
    OfflineLineResult,
    OfflineOutcome,
    OfflineRecord,
    OfflineRedeemLine,
    OfflineReversal,
    OfflineReversalResult,
    OfflineTransaction,
    OfflineTransactionResult,
    OfflineUnlock,
    Redemption,
    ReversalOutcome,
)
from storedvalue.hq.domain.offline_transactions import UnsyncedAmount
from storedvalue.hq.domain.parameters import (
    NO_LIMITS,
    OfflineRiskLimits,
    ParameterSet,
    ParameterValues,
)
from storedvalue.hq.domain.terminal_reports import (
    LinkChange,
    LinkState,
    ReceivedReport,
    TerminalReport,
)
from storedvalue.hq.domain.terminals import Terminal, hash_token
from storedvalue.hq.services.unit_of_work import Storage, UnitOfWork

T = TypeVar("T")

# Microsecond precision on purpose: storage must keep every digit.
NOW = datetime(2025, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def card_number(n: int) -> str:
    return f"70000000{n:08d}"


def write(storage: Storage, work: Callable[[UnitOfWork], T]) -> T:
    with storage.unit_of_work(write=True) as uow:
        result = work(uow)
        uow.commit()
        return result


def read(storage: Storage, work: Callable[[UnitOfWork], T]) -> T:
    with storage.unit_of_work(write=False) as uow:
        return work(uow)


def make_lock(number: str, *, terminal_id: str = "till-1", transaction_id: str = "txn-1",
              token: int = 1, lease_ends: datetime | None = None) -> Lock:
    return Lock(
        card_number=number,
        terminal_id=terminal_id,
        transaction_id=transaction_id,
        fencing_token=token,
        lease_expires_at=lease_ends or at(3600),
        acquired_at=NOW,
    )


def make_card(number: str, *, balance: int = 5_000, lock: Lock | None = None,
              kind: CardKind = CardKind.GIFT_CARD, status: CardStatus = CardStatus.ACTIVE,
              currency: str = "EUR", remainder_of: str = "", token: int = 0) -> Card:
    return Card(
        card_number=number,
        kind=kind,
        status=status,
        currency=currency,
        balance_minor=balance,
        issued_at=NOW,
        last_fencing_token=max(token, lock.fencing_token if lock else 0),
        lock=lock,
        remainder_of_card_number=remainder_of,
    )


def make_entry(number: str, amount: int, *, balance_after: int = 0, line_id: str = "",
               kind: JournalEntryKind = JournalEntryKind.REDEEM, note: str = "") -> JournalEntry:
    return JournalEntry(
        card_number=number,
        kind=kind,
        amount_minor=amount,
        currency="EUR",
        balance_after_minor=balance_after,
        terminal_id="till-1",
        transaction_id="txn-1",
        line_id=line_id,
        offline=amount < 0,
        occurred_at=at(-60),
        recorded_at=NOW,
        note=note,
    )


def make_redemption(terminal_id: str, transaction_id: str, line_id: str, *,
                    remainder: str = "") -> Redemption:
    return Redemption(
        terminal_id=terminal_id,
        transaction_id=transaction_id,
        line_id=line_id,
        card_number=card_number(1),
        amount_minor=1_250,
        currency="EUR",
        remainder_card_number=remainder,
        offline=True,
        recorded_at=NOW,
    )


def make_transaction(transaction_id: str, sequence_number: int) -> OfflineTransaction:
    return OfflineTransaction(
        transaction_id=transaction_id,
        sequence_number=sequence_number,
        completed_at=at(-120),
        parameters_version=3,
        redeem_lines=(
            OfflineRedeemLine(
                line_id="line-1",
                card_number=card_number(1),
                card_kind=CardKind.CREDIT_MEMO,
                amount=Money(700, "EUR"),
                fencing_token=4,
                online_redeem_attempted=True,
            ),
            OfflineRedeemLine(
                line_id="line-2", card_number="123", card_kind=None, amount=None
            ),
        ),
        unlocks=(OfflineUnlock(card_number=card_number(2), transaction_id="txn-0",
                               fencing_token=2),),
        fingerprint=b"\x00\x01digest\xff",
        reversals=(OfflineReversal(line_id="line-0", card_number=card_number(3),
                                   amount=Money(500, "EUR"), fencing_token=7),),
    )


def make_record(terminal_id: str, transaction_id: str, sequence_number: int) -> OfflineRecord:
    """Odd sequence numbers carry reversal results, even ones none (two stored forms)."""
    reversals = (
        OfflineReversalResult(
            line_id="line-0", outcome=ReversalOutcome.REVERSED, reason="REMAINDER_MEMO_IN_USE",
            balance_after=Money(500, "EUR"), remainder_credit_memo_number=card_number(8),
        ),
        OfflineReversalResult(line_id="line-9", outcome=ReversalOutcome.NEVER_APPLIED),
    ) if sequence_number % 2 else ()
    result = OfflineTransactionResult(
        transaction_id=transaction_id,
        sequence_number=sequence_number,
        outcome=OfflineOutcome.APPLIED_WITH_EXCEPTION,
        original_outcome=OfflineOutcome.APPLIED_WITH_EXCEPTION,
        reason="OFFLINE_OVERDRAFT",
        message="1 exception(s) recorded",
        line_results=(
            OfflineLineResult(
                line_id="line-1",
                outcome=OfflineLineOutcome.APPLIED_WITH_EXCEPTION,
                reason="OFFLINE_OVERDRAFT",
                balance_after=Money(-300, "EUR"),
                remainder_credit_memo_number=card_number(9),
            ),
        ),
        exception_ids=("exc_1",),
        reversal_results=reversals,
    )
    return OfflineRecord(
        terminal_id=terminal_id,
        transaction_id=transaction_id,
        sequence_number=sequence_number,
        fingerprint=b"\xde\xad\xbe\xef" + transaction_id.encode(),
        result=result,
        received_at=NOW,
    )


def make_exception(exception_id: str, *, terminal_id: str = "till-1",
                   number: str = card_number(1), with_amount: bool = True,
                   transaction: OfflineTransaction | None = None) -> OfflineException:
    return OfflineException(
        exception_id=exception_id,
        kind=OfflineExceptionKind.OVERDRAFT if with_amount else OfflineExceptionKind.REJECTED,
        terminal_id=terminal_id,
        transaction_id=f"txn-{exception_id}",
        line_id="line-1" if with_amount else "",
        card_number=number,
        amount=Money(700, "EUR") if with_amount else None,
        reason="OFFLINE_OVERDRAFT" if with_amount else "CARD_NOT_FOUND",
        message="offline debit left the card at -300 EUR; the card is flagged",
        created_at=NOW,
        transaction=transaction,
    )


def make_parameters(version: int, *, gift: bool = True, memo: bool = False,
                    lease: timedelta = timedelta(hours=4), store_id: str = "",
                    limits: OfflineRiskLimits = NO_LIMITS) -> ParameterSet:
    """The global set made by `version` (or, with `store_id`, a store's override of the
    gift card flag and its limits only)."""
    if store_id:
        values = ParameterValues(gift_card_offline_completion_allowed=gift,
                                 gift_card_offline_limits=limits)
    else:
        values = ParameterValues(
            gift_card_offline_completion_allowed=gift,
            credit_memo_offline_completion_allowed=memo,
            lock_lease=lease,
            gift_card_offline_limits=limits,
        )
    return ParameterSet(version=version, store_id=store_id, values=values,
                        changed_at=at(version), changed_by=f"admin:alice-{version}")


def make_terminal(terminal_id: str, *, token_hash: str | None = None) -> Terminal:
    return Terminal(
        terminal_id=terminal_id,
        display_name=f"Store 12, {terminal_id}",
        token_hash=token_hash or hash_token(f"token of {terminal_id}"),
        registered_at=NOW,
        credential_issued_at=at(5),
    )


def make_report(*, reported: datetime, received: datetime, unsynced: int) -> ReceivedReport:
    """A till's report: online since just before it, `unsynced` EUR minor units of gift
    card lines in its outbox."""
    amounts = (UnsyncedAmount(CardKind.GIFT_CARD, Money(unsynced, "EUR"), 2),) if unsynced else ()
    return ReceivedReport(
        report=TerminalReport(
            reported_at=reported,
            link_history=(LinkChange(LinkState.OFFLINE, reported - timedelta(hours=2),
                                     "call failed: UNAVAILABLE"),
                          LinkChange(LinkState.ONLINE, reported - timedelta(seconds=5),
                                     "health check answered SERVING")),
            outbox_transactions=2 if unsynced else 0,
            unsynced_amounts=amounts,
            oldest_completed_at=reported - timedelta(hours=1) if unsynced else None,
            last_sequence_number=7,
            parameters_version=3,
            next_report_within=timedelta(minutes=2),
        ),
        received_at=received,
    )
