"""Cards, their locks and the rules of online use.

A card row carries its lock, so "at most one live lock per card" holds by construction, and
its fencing-token counter, which only grows.
"""

from __future__ import annotations

import enum
import functools
import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from storedvalue.hq.domain.errors import (
    CardFlagged,
    CardKindNotSupported,
    CardLocked,
    CardRedeemed,
    CurrencyMismatch,
    InsufficientFunds,
    InvalidCardNumber,
    LockNotHeld,
)
from storedvalue.hq.domain.journal import JournalEntry, JournalEntryKind
from storedvalue.hq.domain.moments import rfc3339
from storedvalue.hq.domain.money import Money, require_balance_within_limit
from storedvalue.hq.domain.value_objects import value_object


class CardKind(enum.Enum):
    GIFT_CARD = "GIFT_CARD"
    CREDIT_MEMO = "CREDIT_MEMO"


class CardStatus(enum.Enum):
    ACTIVE = "ACTIVE"
    FLAGGED = "FLAGGED"
    REDEEMED = "REDEEMED"


# The members the rules test on every use, as module constants: in Python 3.11 reading
# `CardStatus.FLAGGED` goes through EnumType.__getattr__'s slot, about twenty times the
# cost of a global (each online call and each offline line tests a few).
_ACTIVE, _FLAGGED, _REDEEMED = CardStatus.ACTIVE, CardStatus.FLAGGED, CardStatus.REDEEMED
_CREDIT_MEMO = CardKind.CREDIT_MEMO
_REDEEM = JournalEntryKind.REDEEM

# Luhn doubles every other digit (from the right) and sums the doubled value's digits.
_LUHN_DOUBLED = str.maketrans("0123456789", "0246813579")


def luhn_check_digit(payload: str) -> str:
    """The check digit of `payload`, a string of ASCII digits (every caller checks that
    first; anything else is a ValueError)."""
    if not (payload.isascii() and payload.isdigit()):
        raise ValueError("a Luhn payload is ASCII digits")
    # The digit sum of ASCII digits is their byte sum less 48 ("0") each: a few C calls
    # instead of a Python loop; every card number HQ sees goes through here.
    backwards = payload[::-1]
    total = (
        sum(backwards[::2].translate(_LUHN_DOUBLED).encode())
        + sum(backwards[1::2].encode())
        - 48 * len(backwards)
    )
    return str(-total % 10)


_LUHN_DOUBLED_BYTES = bytes.maketrans(b"0123456789", b"0246813579")


@functools.lru_cache(maxsize=1 << 14)
def is_valid_card_number(card_number: str) -> bool:
    """8 to 19 ASCII digits whose last is their Luhn check digit. Remembered for the numbers
    seen lately: a sale asks about its card at LockCard and again at Redeem, and a hit costs
    a tenth of the check."""
    if not (8 <= len(card_number) <= 19 and card_number.isascii()
            and card_number.isdigit()):
        return False
    # The check digit holds when Luhn's sum over the whole number is a multiple of ten (from
    # the right, the second digit and every other one after it doubled).
    digits = card_number.encode()
    total = (sum(digits[-2::-2].translate(_LUHN_DOUBLED_BYTES)) + sum(digits[::-2])
             - 48 * len(digits))
    return total % 10 == 0


def validate_card_number(card_number: str, field_name: str = "card_number") -> str:
    if not is_valid_card_number(card_number):
        raise InvalidCardNumber(field_name, missing=not card_number)
    return card_number


def generate_card_number() -> str:
    """A random 16-digit number with a Luhn check digit (HQ retries on the rare collision)."""
    payload = "7" + "".join(secrets.choice("0123456789") for _ in range(14))
    return payload + luhn_check_digit(payload)


@value_object
class Lock:
    card_number: str
    terminal_id: str
    transaction_id: str
    fencing_token: int
    lease_expires_at: datetime
    acquired_at: datetime

    def is_live(self, now: datetime) -> bool:
        return now < self.lease_expires_at

    def is_held_by(self, terminal_id: str, transaction_id: str) -> bool:
        return self.terminal_id == terminal_id and self.transaction_id == transaction_id


@dataclass(slots=True)
class Card:
    card_number: str
    kind: CardKind
    status: CardStatus
    currency: str
    balance_minor: int
    issued_at: datetime
    last_fencing_token: int = 0
    lock: Lock | None = None
    remainder_of_card_number: str = ""
    # Journal entries the rules recorded since the card was loaded (`_move`); the unit of
    # work appends them as it commits, in the same database transaction as the card's state.
    pending_entries: list[JournalEntry] = field(default_factory=list, compare=False, repr=False)

    @property
    def balance(self) -> Money:
        return Money(self.balance_minor, self.currency)

    def is_locked_by(self, terminal_id: str) -> bool:
        """Whether this terminal holds the card's lock (for any of its sales; an ended lease
        nobody took over still counts): the card is part of the till's work in progress."""
        return self.lock is not None and self.lock.terminal_id == terminal_id

    def live_lock(self, now: datetime) -> Lock | None:
        return self.lock if self.lock is not None and self.lock.is_live(now) else None

    def snapshot(self, now: datetime) -> Card:
        """A detached copy to hand out of a unit of work; a lock whose lease has ended is
        not shown (anyone may take the card). (Built field by field: `dataclasses.replace`
        costs several times more, and every online call hands out a snapshot; the lock's
        lease is compared here rather than through `live_lock` and `Lock.is_live`, two
        Python calls of the 5.5K instructions a snapshot cost, callgrind.)"""
        lock = self.lock
        return Card(
            self.card_number,
            self.kind,
            self.status,
            self.currency,
            self.balance_minor,
            self.issued_at,
            self.last_fencing_token,
            lock if lock is not None and now < lock.lease_expires_at else None,
            self.remainder_of_card_number,
        )

    # -- online rules ---------------------------------------------------------------------

    def acquire_lock(
        self, *, terminal_id: str, transaction_id: str, now: datetime, lease: timedelta
    ) -> Lock:
        """Lock for a sale. The holder relocking renews its lease and keeps its token."""
        if self.status is not _ACTIVE:  # the usual case without a call (as in redeem_online)
            self._require_usable()
        current = self.lock
        if current is not None and current.is_held_by(terminal_id, transaction_id):
            renewed = replace(current, lease_expires_at=now + lease)
            self.lock = renewed
            return renewed
        if current is not None and current.is_live(now):
            raise CardLocked(
                self.card_number,
                holder_terminal_id=current.terminal_id,
                holder_transaction_id=current.transaction_id,
                lease_expires_at=rfc3339(current.lease_expires_at),
            )
        # Free, or the lease ended: take it. The new token fences off the old holder.
        self.last_fencing_token += 1
        # Positional, in the fields' order: a value object built by keyword costs a third
        # more (the keywords go through a dict), and every LockCard builds one.
        self.lock = Lock(
            self.card_number,  # card_number
            terminal_id,  # terminal_id
            transaction_id,  # transaction_id
            self.last_fencing_token,  # fencing_token
            now + lease,  # lease_expires_at
            now,  # acquired_at
        )
        return self.lock

    def require_lock(self, *, terminal_id: str, transaction_id: str, fencing_token: int) -> Lock:
        """The caller's lock, still unreleased and not taken over (an ended lease nobody took
        over still counts: the token only stops working once another terminal locks)."""
        current = self.lock
        if (
            current is None
            or not current.is_held_by(terminal_id, transaction_id)
            or current.fencing_token != fencing_token
        ):
            raise LockNotHeld(
                self.card_number,
                presented_token=fencing_token,
                current_token=current.fencing_token if current is not None else None,
            )
        return current

    def release_lock(self, *, terminal_id: str, transaction_id: str, fencing_token: int) -> Lock:
        """Release the caller's lock and return it. Token 0 releases whatever lock this
        terminal holds for this transaction: a till whose LockCard answer was lost never
        learned its token, and a lock held by this very terminal and sale is its own."""
        current = self.lock
        if fencing_token == 0 and current is not None and current.is_held_by(
            terminal_id, transaction_id
        ):
            self.lock = None
            return current
        released = self.require_lock(
            terminal_id=terminal_id, transaction_id=transaction_id, fencing_token=fencing_token
        )
        self.lock = None
        return released

    def force_release(self, *, reason: str, by: str, now: datetime) -> Lock | None:
        """Back office: release whoever holds the lock; the journal keeps why and who."""
        released, self.lock = self.lock, None
        self._move(
            JournalEntryKind.FORCED_UNLOCK, 0,
            terminal_id=released.terminal_id if released else "",
            transaction_id=released.transaction_id if released else "",
            now=now, note=f"{by}: {reason}",
        )
        return released

    def clear_flag_if_resolved(self, open_exceptions: int) -> None:
        """A flagged card becomes usable again once no exception about it is open."""
        if self.status is CardStatus.FLAGGED and open_exceptions == 0:
            self.status = CardStatus.REDEEMED if (
                self.kind is CardKind.CREDIT_MEMO and self.balance_minor <= 0
            ) else CardStatus.ACTIVE

    def redeem_online(
        self,
        *,
        terminal_id: str,
        transaction_id: str,
        line_id: str,
        fencing_token: int,
        amount: Money,
        now: datetime,
    ) -> int:
        """Debit under the caller's lock and release it. Never overdraws. Returns the
        remainder a credit memo leaves (to be moved to a new memo), else 0. (Each online
        Redeem runs this: the usual case, the caller's live lock on an active card in its
        currency, is checked inline, and `require_lock` and `_require_usable` are called
        only to refuse: three calls, ~2.4K instructions a Redeem, callgrind.)"""
        current = self.lock
        if (current is None or current.fencing_token != fencing_token
                or not current.is_held_by(terminal_id, transaction_id)):
            self.require_lock(  # raises LockNotHeld
                terminal_id=terminal_id, transaction_id=transaction_id,
                fencing_token=fencing_token,
            )
        if self.status is not _ACTIVE:
            self._require_usable()
        if amount.currency != self.currency:
            raise CurrencyMismatch(self.currency, amount.currency)
        if amount.amount_minor > self.balance_minor:
            raise InsufficientFunds(
                self.card_number,
                balance=self.balance_minor,
                requested=amount.amount_minor,
                currency=self.currency,
            )
        self.lock = None
        return self._debit(
            amount.amount_minor,
            terminal_id=terminal_id,
            transaction_id=transaction_id,
            line_id=line_id,
            offline=False,
            occurred_at=now,
            now=now,
        )

    def add_value(
        self, *, amount: Money, terminal_id: str, transaction_id: str, now: datetime
    ) -> None:
        if self.kind is not CardKind.GIFT_CARD:
            raise CardKindNotSupported(self.card_number, self.kind.value, "adding value")
        self._require_currency(amount)
        require_balance_within_limit(self.balance_minor + amount.amount_minor)
        self._move(
            JournalEntryKind.ADD_VALUE,
            amount.amount_minor,
            terminal_id=terminal_id,
            transaction_id=transaction_id,
            now=now,
        )

    # -- offline rules --------------------------------------------------------------------

    def debit_offline(
        self,
        *,
        terminal_id: str,
        transaction_id: str,
        line_id: str,
        amount_minor: int,
        occurred_at: datetime,
        now: datetime,
    ) -> tuple[bool, int]:
        """Apply a debit that already happened in a store: never refused. Returns whether it
        overdrew the card (which flags it) and the remainder a credit memo leaves."""
        overdrawn = amount_minor > self.balance_minor
        remainder = self._debit(
            amount_minor,
            terminal_id=terminal_id,
            transaction_id=transaction_id,
            line_id=line_id,
            offline=True,
            occurred_at=occurred_at,
            now=now,
        )
        if overdrawn:
            self.status = CardStatus.FLAGGED
        return overdrawn, remainder

    def record_reversal(
        self, amount_minor: int, *, terminal_id: str, transaction_id: str, line_id: str,
        now: datetime,
    ) -> None:
        """Move value back for a reversed line: positive credits a debit back, negative voids
        a remainder memo. A credit memo that holds value again is usable again (the use was
        undone); one emptied is used up. A flagged card stays flagged for the back office."""
        self._move(
            JournalEntryKind.REVERSAL, amount_minor, terminal_id=terminal_id,
            transaction_id=transaction_id, line_id=line_id, offline=True, now=now,
        )
        if self.kind is CardKind.CREDIT_MEMO and self.status is not CardStatus.FLAGGED:
            self.status = CardStatus.ACTIVE if self.balance_minor > 0 else CardStatus.REDEEMED

    def release_if_held(self, *, terminal_id: str, transaction_id: str) -> bool:
        """Release the lock this terminal and transaction hold; leave anyone else's alone."""
        if self.lock is not None and self.lock.is_held_by(terminal_id, transaction_id):
            self.lock = None
            return True
        return False

    # -- internals ------------------------------------------------------------------------

    def _require_usable(self) -> None:
        if self.status is _FLAGGED:
            raise CardFlagged(self.card_number)
        if self.status is _REDEEMED:
            raise CardRedeemed(self.card_number)

    def _require_currency(self, amount: Money) -> None:
        if amount.currency != self.currency:
            raise CurrencyMismatch(self.currency, amount.currency)

    def _debit(
        self,
        amount_minor: int,
        *,
        terminal_id: str,
        transaction_id: str,
        line_id: str,
        offline: bool,
        occurred_at: datetime,
        now: datetime,
    ) -> int:
        self._move(
            _REDEEM, -amount_minor, terminal_id=terminal_id,
            transaction_id=transaction_id, line_id=line_id, offline=offline,
            occurred_at=occurred_at, now=now,
        )
        if self.kind is not _CREDIT_MEMO:
            return 0
        # A credit memo is single-use: what is left moves to a new memo.
        remainder = max(self.balance_minor, 0)
        if self.status is CardStatus.ACTIVE:
            self.status = CardStatus.REDEEMED
        if remainder > 0:
            self._move(  # to zero: the remainder is the whole balance
                JournalEntryKind.REMAINDER_OUT, -remainder, terminal_id=terminal_id,
                transaction_id=transaction_id, line_id=line_id, offline=offline,
                occurred_at=occurred_at, now=now,
            )
        return remainder

    def _move(
        self,
        kind: JournalEntryKind,
        amount_minor: int,
        *,
        terminal_id: str,
        transaction_id: str,
        now: datetime,
        line_id: str = "",
        offline: bool = False,
        occurred_at: datetime | None = None,
        note: str = "",
    ) -> None:
        """The one place the balance moves and a journal entry is made: `amount_minor`
        (signed: positive credits the card) moves, and the entry records it with the new
        balance. The unit of work appends the recorded entries when it commits."""
        self.balance_minor += amount_minor
        # Positional, in the fields' order (as in acquire_lock).
        self.pending_entries.append(JournalEntry(
            self.card_number,  # card_number
            kind,  # kind
            amount_minor,  # amount_minor
            self.currency,  # currency
            self.balance_minor,  # balance_after_minor
            terminal_id,  # terminal_id
            transaction_id,  # transaction_id
            line_id,  # line_id
            offline,  # offline
            occurred_at or now,  # occurred_at
            now,  # recorded_at
            0,  # entry_id: assigned by storage
            note,  # note
        ))


def issue_card(
    *,
    card_number: str,
    kind: CardKind,
    value: Money,
    terminal_id: str,
    transaction_id: str,
    now: datetime,
    remainder_of: Card | None = None,
    line_id: str = "",
    offline: bool = False,
    occurred_at: datetime | None = None,
) -> Card:
    """A new card with its opening journal entry (ISSUE, or REMAINDER_IN for a memo that
    takes over another memo's remainder)."""
    card = Card(
        card_number=card_number,
        kind=kind,
        status=CardStatus.ACTIVE,
        currency=value.currency,
        balance_minor=0,
        issued_at=now,
        remainder_of_card_number=remainder_of.card_number if remainder_of else "",
    )
    card._move(
        JournalEntryKind.REMAINDER_IN if remainder_of else JournalEntryKind.ISSUE,
        value.amount_minor,
        terminal_id=terminal_id,
        transaction_id=transaction_id,
        line_id=line_id,
        offline=offline,
        occurred_at=occurred_at,
        now=now,
    )
    return card
