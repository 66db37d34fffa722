"""Cards, locks and the journal.

The online calls' cards and locks are written straight into their response messages
(`fill_card`, `fill_lock`): no intermediate messages copied into the response, no name
lookups of enum values, and timestamps computed without a `struct_time` round trip. LockCard
and Redeem answer with these on every sale.
"""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2

from storedvalue.hq.domain.cards import Card, CardStatus, Lock
from storedvalue.hq.domain.journal import JournalEntry, JournalEntryKind
from storedvalue.hq.domain.money import Money
from storedvalue.hq.grpc_api.convert.common import (
    CARD_KINDS_TO_PROTO,
    enum_to_proto,
    fill_timestamp,
    money_to_proto,
    timestamp,
)
from storedvalue.v1 import back_office_service_pb2 as bo_pb
from storedvalue.v1 import common_pb2

_STATUSES = enum_to_proto(CardStatus, common_pb2.CardStatus, "CARD_STATUS_")
# The same, by the members' values: an Enum member's hash is a Python-level method
# (`Enum.__hash__`) in 3.11, a str's is cached; every LockCard and Redeem fills a card.
_STATUSES_BY_VALUE = {member._value_: value for member, value in _STATUSES.items()}
_KINDS_BY_VALUE = {member._value_: value for member, value in CARD_KINDS_TO_PROTO.items()}
_JOURNAL_KINDS = enum_to_proto(JournalEntryKind, bo_pb.JournalEntryKind, "JOURNAL_ENTRY_KIND_")
_KIND_UNSPECIFIED = common_pb2.CARD_KIND_UNSPECIFIED


def fill_lock(target: common_pb2.Lock, lock: Lock) -> None:
    target.card_number = lock.card_number
    target.terminal_id = lock.terminal_id
    target.transaction_id = lock.transaction_id
    target.fencing_token = lock.fencing_token
    fill_timestamp(target.lease_expires_at, lock.lease_expires_at)
    fill_timestamp(target.acquired_at, lock.acquired_at)


def fill_card(target: common_pb2.Card, card: Card,
              filled_lock: common_pb2.Lock | None = None) -> None:
    """The card as handed out by the services (a snapshot: `lock` is the live lock only).

    `filled_lock`: the card's lock, already filled into another message of the response
    (LockCard's `lock`): copied, which costs a third of filling it again."""
    target.card_number = card.card_number
    target.kind = _KINDS_BY_VALUE.get(card.kind._value_, _KIND_UNSPECIFIED)
    target.status = _STATUSES_BY_VALUE[card.status._value_]
    balance = target.balance
    balance.amount_minor = card.balance_minor  # the card keeps no Money: no object built
    balance.currency_code = card.currency
    if filled_lock is not None:
        target.lock.CopyFrom(filled_lock)
    elif card.lock is not None:
        fill_lock(target.lock, card.lock)
    target.issued_at.CopyFrom(_issued_at(card.issued_at))
    if card.remainder_of_card_number:  # proto3: an empty string is the field left unset
        target.remainder_of_card_number = card.remainder_of_card_number


# Cards' issue times as messages, by moment: a card's issue time is the same datetime call
# after call (storage.rows keeps the moments it read lately), and a made Timestamp is copied
# for half the cost of filling one. Cleared when full.
_ISSUE_TIMES: dict[datetime, timestamp_pb2.Timestamp] = {}
_ISSUE_TIMES_KEPT = 4096


def _issued_at(moment: datetime) -> timestamp_pb2.Timestamp:
    found = _ISSUE_TIMES.get(moment)
    if found is None:
        if len(_ISSUE_TIMES) >= _ISSUE_TIMES_KEPT:
            _ISSUE_TIMES.clear()
        found = _ISSUE_TIMES[moment] = timestamp(moment)
    return found


def lock_to_proto(lock: Lock) -> common_pb2.Lock:
    message = common_pb2.Lock()
    fill_lock(message, lock)
    return message


def card_to_proto(card: Card) -> common_pb2.Card:
    message = common_pb2.Card()
    fill_card(message, card)
    return message


def journal_entry_to_proto(entry: JournalEntry) -> bo_pb.JournalEntry:
    return bo_pb.JournalEntry(
        entry_id=entry.entry_id,
        card_number=entry.card_number,
        kind=_JOURNAL_KINDS[entry.kind],
        amount=money_to_proto(Money(entry.amount_minor, entry.currency)),
        balance_after=money_to_proto(Money(entry.balance_after_minor, entry.currency)),
        terminal_id=entry.terminal_id,
        transaction_id=entry.transaction_id,
        line_id=entry.line_id,
        offline=entry.offline,
        occurred_at=timestamp(entry.occurred_at),
        recorded_at=timestamp(entry.recorded_at),
        note=entry.note,
    )
