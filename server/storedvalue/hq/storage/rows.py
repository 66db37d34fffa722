"""Domain objects to rows and back. Timestamps travel as integer microseconds since the
epoch, UTC; the domain always gets timezone-aware UTC datetimes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from storedvalue.hq import records
from storedvalue.hq.domain.cards import Card, CardKind, CardStatus, Lock
from storedvalue.hq.domain.journal import JournalEntry, JournalEntryKind
from storedvalue.hq.domain.moments import EPOCH, micros_from_epoch
from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.offline import (
    OfflineException,
    OfflineExceptionKind,
    OfflineRecord,
    OfflineTransaction,
    Redemption,
    ReversalOutcome,
)
from storedvalue.hq.domain.offline_locks import LockGrant
from storedvalue.hq.domain.parameters import OfflineRiskLimits, ParameterSet, ParameterValues
from storedvalue.hq.domain.terminal_reports import ReceivedReport, TerminalReport
from storedvalue.hq.domain.terminals import Terminal
from storedvalue.hq.storage import offline_results

Row = Any  # a sqlalchemy Row: columns as attributes
Values = dict[str, Any]

# Enum members by stored value: the sync converts tens of thousands of rows a second, and
# Enum's by-value call costs more than the rest of a row's conversion.
# Enum members are written as `member._value_` (their value, documented by `enum`) rather
# than `member.value`: in Python 3.11 the property costs about twenty times the attribute,
# and every card saved and journal entry written reads a few.
CARD_KINDS = {kind.value: kind for kind in CardKind}
_CARD_KINDS = CARD_KINDS
_CARD_STATUSES = {status.value: status for status in CardStatus}


# Converting a moment costs about 3,000 instructions each way in Python 3.11 (aware datetime
# arithmetic and timedelta division), and the same few moments recur: a unit of work writes
# its `now` in three or four columns, and Redeem reads back the card's issue time and the
# lock times LockCard wrote a moment before. So the last moment converted is remembered (by
# identity: the tuple keeps it alive, so no other object can take its place), and moments
# read or written lately by their microseconds (datetimes are immutable: sharing one is
# safe). Each is replaced whole, so the threads that convert at once see a consistent pair.
_last_converted: tuple[datetime, int] = (EPOCH, 0)
_MOMENTS: dict[int, datetime] = {}
_MOMENTS_KEPT = 4096  # then forgotten all at once: a dict lookup stays the common cost


def to_micros(moment: datetime) -> int:
    global _last_converted
    last = _last_converted
    if moment is last[0]:
        return last[1]
    micros = micros_from_epoch(moment)  # (refuses a naive datetime)
    _last_converted = (moment, micros)
    if moment.tzinfo is UTC and len(_MOMENTS) < _MOMENTS_KEPT:  # read back as it is: UTC
        _MOMENTS[micros] = moment
    return micros


def from_micros(micros: int) -> datetime:
    found = _MOMENTS.get(micros)
    if found is None:
        if len(_MOMENTS) >= _MOMENTS_KEPT:
            _MOMENTS.clear()
        # Positional: a third cheaper than by keyword.
        found = _MOMENTS[micros] = EPOCH + timedelta(0, 0, micros)
    return found


def _optional_micros(moment: datetime | None) -> int | None:
    return None if moment is None else to_micros(moment)


def _optional_moment(micros: int | None) -> datetime | None:
    return None if micros is None else from_micros(micros)


# -- cards and money movements --------------------------------------------------------------


# What `save` writes back, the mutable part of a card: its columns, and each row's values in
# that order. Rows are written as tuples in the order of the statement's parameters (the
# columns' order in the table): no mapping built and reordered per row.
CARD_STATE_KEYS = ("status", "balance_minor", "last_fencing_token", "lock_terminal_id",
                   "lock_transaction_id", "lock_fencing_token", "lock_lease_expires_at",
                   "lock_acquired_at")


def card_state_row(card: Card) -> tuple[Any, ...]:
    lock = card.lock
    if lock is None:
        return (card.status._value_, card.balance_minor, card.last_fencing_token,
                None, None, None, None, None)
    return (card.status._value_, card.balance_minor, card.last_fencing_token,
            lock.terminal_id, lock.transaction_id, lock.fencing_token,
            to_micros(lock.lease_expires_at), to_micros(lock.acquired_at))


def card_values(card: Card) -> Values:
    values = dict(zip(CARD_STATE_KEYS, card_state_row(card), strict=True))
    values.update(
        card_number=card.card_number,
        kind=card.kind._value_,
        currency=card.currency,
        issued_at=to_micros(card.issued_at),
        remainder_of_card_number=card.remainder_of_card_number,
    )
    return values


def lock_from_row(row: Row) -> Lock:
    return Lock(
        card_number=row.card_number,
        terminal_id=row.lock_terminal_id,
        transaction_id=row.lock_transaction_id,
        fencing_token=row.lock_fencing_token,
        lease_expires_at=from_micros(row.lock_lease_expires_at),
        acquired_at=from_micros(row.lock_acquired_at),
    )


def card_from_row(row: Row) -> Card:
    """A card from the columns `CARD_COLUMNS` names, in that order (positional: no attribute
    looked up per column; a joined row's further columns are left alone)."""
    (number, kind, status, currency, balance, issued, token, remainder, lock_terminal_id,
     lock_transaction_id, lock_token, lease_expires, acquired) = row[:len(CARD_COLUMNS)]
    return Card(
        number,
        _CARD_KINDS.get(kind) or CardKind(kind),
        _CARD_STATUSES.get(status) or CardStatus(status),
        currency,
        balance,
        from_micros(issued),
        token,
        None if lock_terminal_id is None else Lock(
            number, lock_terminal_id, lock_transaction_id, lock_token,
            from_micros(lease_expires), from_micros(acquired)),
        remainder,
    )


# The cards table's columns in its order, as `card_from_row` reads them (the card repository
# checks the table against it).
CARD_COLUMNS = ("card_number", "kind", "status", "currency", "balance_minor", "issued_at",
                "last_fencing_token", "remainder_of_card_number", "lock_terminal_id",
                "lock_transaction_id", "lock_fencing_token", "lock_lease_expires_at",
                "lock_acquired_at")


LOCK_GRANT_KEYS = ("card_number", "fencing_token", "terminal_id", "transaction_id",
                   "acquired_at", "released_by_holder_at")


def lock_grant_row(grant: LockGrant) -> tuple[Any, ...]:
    return (grant.card_number, grant.fencing_token, grant.terminal_id, grant.transaction_id,
            to_micros(grant.acquired_at), _optional_micros(grant.released_by_holder_at))


def lock_grant_from_row(row: Row) -> LockGrant:
    # Positional, in the table's column order: a sync reads one of these per transaction.
    card_number, token, terminal_id, transaction_id, acquired, released = row
    return LockGrant(card_number, token, terminal_id, transaction_id,
                     EPOCH + timedelta(0, 0, acquired),
                     None if released is None else EPOCH + timedelta(0, 0, released))


# entry_id is left out: the database assigns it.
JOURNAL_KEYS = ("card_number", "kind", "amount_minor", "currency", "balance_after_minor",
                "terminal_id", "transaction_id", "line_id", "offline", "occurred_at",
                "recorded_at", "note")


def journal_row(entry: JournalEntry) -> tuple[Any, ...]:
    return (entry.card_number, entry.kind._value_, entry.amount_minor, entry.currency,
            entry.balance_after_minor, entry.terminal_id, entry.transaction_id,
            entry.line_id, entry.offline, to_micros(entry.occurred_at),
            to_micros(entry.recorded_at), entry.note)


def online_journal_row(entry: JournalEntry) -> tuple[Any, ...]:
    """`journal_row` of an online entry, without `offline` (written as a constant)."""
    return (entry.card_number, entry.kind._value_, entry.amount_minor, entry.currency,
            entry.balance_after_minor, entry.terminal_id, entry.transaction_id,
            entry.line_id, to_micros(entry.occurred_at), to_micros(entry.recorded_at),
            entry.note)


def journal_from_row(row: Row) -> JournalEntry:
    return JournalEntry(
        card_number=row.card_number,
        kind=JournalEntryKind(row.kind),
        amount_minor=row.amount_minor,
        currency=row.currency,
        balance_after_minor=row.balance_after_minor,
        terminal_id=row.terminal_id,
        transaction_id=row.transaction_id,
        line_id=row.line_id,
        offline=bool(row.offline),
        occurred_at=from_micros(row.occurred_at),
        recorded_at=from_micros(row.recorded_at),
        entry_id=row.entry_id,
        note=row.note,
    )


REDEMPTION_KEYS = ("terminal_id", "transaction_id", "line_id", "card_number", "amount_minor",
                   "currency", "remainder_card_number", "offline", "recorded_at", "reversal",
                   "reversed_at")


def redemption_row(redemption: Redemption) -> tuple[Any, ...]:
    reversal = redemption.reversal
    return (redemption.terminal_id, redemption.transaction_id, redemption.line_id,
            redemption.card_number, redemption.amount_minor, redemption.currency,
            redemption.remainder_card_number, redemption.offline,
            to_micros(redemption.recorded_at),
            None if reversal is None else reversal._value_,
            _optional_micros(redemption.reversed_at))


def redemption_reversal_values(redemption: Redemption) -> Values:
    """What `mark_reversed` writes back, keyed by the line."""
    return {
        "key_terminal_id": redemption.terminal_id,
        "key_transaction_id": redemption.transaction_id,
        "key_line_id": redemption.line_id,
        "reversal": redemption.reversal._value_ if redemption.reversal is not None else None,
        "reversed_at": _optional_micros(redemption.reversed_at),
    }


def redemption_from_row(row: Row) -> Redemption:
    return _redemption(
        (row.terminal_id, row.transaction_id, row.line_id), row.card_number, row.amount_minor,
        row.currency, row.remainder_card_number, row.offline, row.recorded_at, row.reversal,
        row.reversed_at,
    )


def _redemption(line: tuple[str, str, str], card_number: str, amount_minor: int,
                currency: str, remainder_card_number: str, offline: object,
                recorded_at: int, reversal: str | None, reversed_at: int | None
                ) -> Redemption:
    terminal_id, transaction_id, line_id = line
    return Redemption(
        terminal_id=terminal_id,
        transaction_id=transaction_id,
        line_id=line_id,
        card_number=card_number,
        amount_minor=amount_minor,
        currency=currency,
        remainder_card_number=remainder_card_number,
        offline=bool(offline),
        recorded_at=from_micros(recorded_at),
        reversal=None if reversal is None else ReversalOutcome(reversal),
        reversed_at=_optional_moment(reversed_at),
    )


# -- offline transactions -------------------------------------------------------------------


def offline_record_values(record: OfflineRecord) -> Values:
    return {
        "terminal_id": record.terminal_id,
        "transaction_id": record.transaction_id,
        "sequence_number": record.sequence_number,
        "fingerprint": record.fingerprint,
        "outcome": record.result.outcome._value_,
        "result_json": offline_results.dumps(
            record.result, record.transaction_id, record.sequence_number),
        "received_at": to_micros(record.received_at),
    }


def offline_record_from_row(row: Row) -> OfflineRecord:
    return OfflineRecord(
        terminal_id=row.terminal_id,
        transaction_id=row.transaction_id,
        sequence_number=row.sequence_number,
        fingerprint=bytes(row.fingerprint),
        result=offline_results.loads(row.result_json, row.transaction_id, row.sequence_number),
        received_at=from_micros(row.received_at),
    )


def exception_state_values(exc: OfflineException) -> Values:
    return {
        "kind": exc.kind._value_,
        "terminal_id": exc.terminal_id,
        "transaction_id": exc.transaction_id,
        "line_id": exc.line_id,
        "card_number": exc.card_number,
        "amount_minor": exc.amount.amount_minor if exc.amount else None,
        "currency": exc.amount.currency if exc.amount else None,
        "reason": exc.reason,
        "message": exc.message,
        "resolved_at": _optional_micros(exc.resolved_at),
        "resolved_by": exc.resolved_by,
        "resolution": exc.resolution,
        "transaction_json": (
            None if exc.transaction is None else records.dumps(exc.transaction)
        ),
    }


def exception_values(exc: OfflineException) -> Values:
    values = exception_state_values(exc)
    values.update(exception_id=exc.exception_id, created_at=to_micros(exc.created_at))
    return values


def exception_from_row(row: Row) -> OfflineException:
    return OfflineException(
        exception_id=row.exception_id,
        kind=OfflineExceptionKind(row.kind),
        terminal_id=row.terminal_id,
        transaction_id=row.transaction_id,
        line_id=row.line_id,
        card_number=row.card_number,
        amount=(
            None if row.amount_minor is None else Money(row.amount_minor, row.currency)
        ),
        reason=row.reason,
        message=row.message,
        created_at=from_micros(row.created_at),
        resolved_at=_optional_moment(row.resolved_at),
        resolved_by=row.resolved_by,
        resolution=row.resolution,
        transaction=(
            None
            if row.transaction_json is None
            else records.loads(OfflineTransaction, row.transaction_json)
        ),
    )


# -- configuration ----------------------------------------------------------------------------


_LIMIT_GROUPS = (("gift_card", "gift_card_offline_limits"),
                 ("credit_memo", "credit_memo_offline_limits"))


def parameter_set_values(parameter_set: ParameterSet) -> Values:
    values = parameter_set.values
    lease = values.lock_lease
    row: Values = {
        "version": parameter_set.version,
        "store_id": parameter_set.store_id,
        "gift_card_offline_completion_allowed": values.gift_card_offline_completion_allowed,
        "credit_memo_offline_completion_allowed": values.credit_memo_offline_completion_allowed,
        # Whole seconds: the lease is bounded to [1 minute, 7 days] and set in seconds.
        "lock_lease_seconds": None if lease is None else round(lease.total_seconds()),
        "updated_at": to_micros(parameter_set.changed_at),
        "updated_by": parameter_set.changed_by,
    }
    for prefix, group in _LIMIT_GROUPS:
        limits: OfflineRiskLimits = getattr(values, group)
        for name, amount in (("max_line", limits.max_line_amount),
                             ("max_unsynced", limits.max_unsynced_amount)):
            row[f"{prefix}_{name}_minor"] = None if amount is None else amount.amount_minor
            row[f"{prefix}_{name}_currency"] = None if amount is None else amount.currency
        duration = limits.max_offline_duration
        row[f"{prefix}_max_offline_seconds"] = (
            None if duration is None else round(duration.total_seconds())
        )
    return row


def parameter_set_from_row(row: Row) -> ParameterSet:
    lease = row.lock_lease_seconds
    gift = row.gift_card_offline_completion_allowed
    memo = row.credit_memo_offline_completion_allowed
    return ParameterSet(
        version=row.version,
        store_id=row.store_id,
        values=ParameterValues(
            gift_card_offline_completion_allowed=None if gift is None else bool(gift),
            credit_memo_offline_completion_allowed=None if memo is None else bool(memo),
            lock_lease=None if lease is None else timedelta(seconds=lease),
            gift_card_offline_limits=_limits_from_row(row, "gift_card"),
            credit_memo_offline_limits=_limits_from_row(row, "credit_memo"),
        ),
        changed_at=from_micros(row.updated_at),
        changed_by=row.updated_by,
    )


def _limits_from_row(row: Row, prefix: str) -> OfflineRiskLimits:
    amounts = []
    for name in ("max_line", "max_unsynced"):
        minor = getattr(row, f"{prefix}_{name}_minor")
        currency = getattr(row, f"{prefix}_{name}_currency")
        amounts.append(None if minor is None else Money(minor, currency))
    seconds = getattr(row, f"{prefix}_max_offline_seconds")
    return OfflineRiskLimits(
        max_line_amount=amounts[0],
        max_unsynced_amount=amounts[1],
        max_offline_duration=None if seconds is None else timedelta(seconds=seconds),
    )


def terminal_state_values(terminal: Terminal) -> Values:
    return {
        "display_name": terminal.display_name,
        "token_hash": terminal.token_hash,
        "credential_issued_at": to_micros(terminal.credential_issued_at),
        "highest_contiguous_sequence": terminal.highest_contiguous_sequence,
        "highest_sequence_seen": terminal.highest_sequence_seen,
        "last_synced_at": _optional_micros(terminal.last_synced_at),
        "store_id": terminal.store_id,
        "revoked_at": _optional_micros(terminal.revoked_at),
        "revoked_by": terminal.revoked_by,
        "revocation_reason": terminal.revocation_reason,
    }


def terminal_values(terminal: Terminal) -> Values:
    values = terminal_state_values(terminal)
    values.update(
        terminal_id=terminal.terminal_id, registered_at=to_micros(terminal.registered_at)
    )
    return values


def terminal_from_row(row: Row) -> Terminal:
    return Terminal(
        terminal_id=row.terminal_id,
        display_name=row.display_name,
        token_hash=row.token_hash,
        registered_at=from_micros(row.registered_at),
        credential_issued_at=from_micros(row.credential_issued_at),
        highest_contiguous_sequence=row.highest_contiguous_sequence,
        highest_sequence_seen=row.highest_sequence_seen,
        last_synced_at=_optional_moment(row.last_synced_at),
        store_id=row.store_id,
        revoked_at=_optional_moment(row.revoked_at),
        revoked_by=row.revoked_by,
        revocation_reason=row.revocation_reason,
    )


def report_values(terminal_id: str, received: ReceivedReport) -> Values:
    return {
        "terminal_id": terminal_id,
        "reported_at": to_micros(received.report.reported_at),
        "received_at": to_micros(received.received_at),
        "report_json": records.dumps(received.report),
    }


def report_from_row(row: Row) -> ReceivedReport:
    return ReceivedReport(
        report=records.loads(TerminalReport, row.report_json),
        received_at=from_micros(row.received_at),
    )
