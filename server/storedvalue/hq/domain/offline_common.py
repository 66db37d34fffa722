"""The common case of offline sync, decided in bulk: a batch in which every transaction is one
gift card line under the lock its own till got for that sale, on a card with the balance,
in its currency, within the offline limits, delivered for the first time.

`plan_common_batch` gives exactly what `plan_offline_batch` would for such a batch (results,
records, redemptions, journal entries, balances, lock releases), from far less: the cards'
balances and lock holders rather than whole cards, and with no per-line machinery. For any
batch with one transaction that is not the common case it answers None, and the caller
plans the whole batch with `plan_offline_batch` (the rules live there; this module only
recognises the case in which they all say "applied, nothing to report").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import NamedTuple, TypeVar, overload

from storedvalue.hq.domain.cards import CardKind, is_valid_card_number
from storedvalue.hq.domain.client_text import are_valid_ids
from storedvalue.hq.domain.moments import micros_from_epoch
from storedvalue.hq.domain.money import MAX_AMOUNT_MINOR, MAX_BALANCE_MINOR, Money
from storedvalue.hq.domain.offline_checks import DEFAULT_ITEM_LIMITS, ItemLimits
from storedvalue.hq.domain.offline_limits import offline_limit_breaches
from storedvalue.hq.domain.offline_transactions import (
    OfflineLineOutcome,
    OfflineLineResult,
    OfflineOutcome,
    OfflineRecord,
    OfflineTransaction,
    OfflineTransactionResult,
    Redemption,
)
from storedvalue.hq.domain.parameters import Parameters

T = TypeVar("T")

# `new_tuple(SomeNamedTuple, values)` (tuple.__new__) makes a named tuple from a tuple of its
# fields in one call into C; calling the class instead runs its generated __new__, a Python
# function taking each field as an argument before it makes the same tuple, which costs about
# twice as much. The common sync makes a few of these for every transaction (its cards, lock
# grants, debits and balance changes).
new_tuple = tuple.__new__
# A row's first column, as a sort key.
first_column = itemgetter(0)


class CardBalance(NamedTuple):
    """What the common case needs of a card (by its number), as read for one terminal: its
    currency, its balance when it is a gift card (-1 for any other kind: the common case
    debits gift cards only, and no amount it debits fits in -1), and which of that
    terminal's sales holds its lock under which fencing token (None when the card is free
    or another terminal's)."""

    currency: str
    balance_minor: int
    lock_transaction_id: str | None
    lock_fencing_token: int | None


class SaleLock(NamedTuple):
    """A lock a terminal got for one of its sales (a `LockGrant`, without its times): which
    card, which token, and whether the terminal released it itself."""

    transaction_id: str
    card_number: str
    fencing_token: int
    released_by_holder: bool


class BalanceChange(NamedTuple):
    """A card's new balance, and whether its lock (held by the debiting sale) is released."""

    card_number: str
    balance_minor: int
    release_lock: bool


class CommonDebit(NamedTuple):
    """One common transaction as applied: its line debited from its card. What it writes:
    the line's redemption, its journal entry (a REDEEM of `amount_minor` that left the card
    at `balance_after_minor`, at `occurred_at_micros`, microseconds since the epoch in UTC)
    and its offline record with its result (`applied_result`)."""

    transaction_id: str
    sequence_number: int
    fingerprint: bytes
    line_id: str
    card_number: str
    amount_minor: int
    currency: str
    balance_after_minor: int
    occurred_at_micros: int


def applied_result(debit: CommonDebit) -> OfflineTransactionResult:
    """The result of a common transaction: it and its one line APPLIED, leaving the card's
    balance."""
    return OfflineTransactionResult(
        debit.transaction_id, debit.sequence_number, _APPLIED, _APPLIED, "", "",
        (OfflineLineResult(debit.line_id, _LINE_APPLIED, "",
                           Money(debit.balance_after_minor, debit.currency), ""),))


_APPLIED, _LINE_APPLIED = OfflineOutcome.APPLIED, OfflineLineOutcome.APPLIED


class CommonDebits:
    """The debits of a common batch, as columns: its sales (`CommonSales`, in batch order),
    each one's line debited from its card, leaving `balances_after_minor`; iterated, one
    `CommonDebit` each. Stored as written from the columns themselves."""

    __slots__ = ("balances_after_minor", "sales")

    def __init__(self, sales: CommonSales, balances_after_minor: list[int]) -> None:
        self.sales = sales
        self.balances_after_minor = balances_after_minor

    def __len__(self) -> int:
        return len(self.balances_after_minor)

    def debit(self, index: int) -> CommonDebit:
        sales = self.sales
        return CommonDebit(
            sales.transaction_ids[index], sales.sequence_numbers[index],
            sales.fingerprints[index], sales.line_ids[index], sales.card_numbers[index],
            sales.amounts_minor[index], sales.currencies[index],
            self.balances_after_minor[index], sales.completed_micros[index])

    def __iter__(self) -> Iterator[CommonDebit]:
        sales = self.sales
        for row in zip(sales.transaction_ids, sales.sequence_numbers, sales.fingerprints,
                       sales.line_ids, sales.card_numbers, sales.amounts_minor,
                       sales.currencies, self.balances_after_minor, sales.completed_micros,
                       strict=True):
            yield new_tuple(CommonDebit, row)


class MadeWhenRead(Sequence[T]):
    """A sequence of `length` items that `make()` makes the first time one is read (the
    common path's results, a batch's decoded transactions: most batches never read them)."""

    __slots__ = ("_length", "_made", "_make")

    def __init__(self, length: int, make: Callable[[], Sequence[T]]) -> None:
        self._length = length
        self._make: Callable[[], Sequence[T]] | None = make
        self._made: Sequence[T] = ()

    def made(self) -> Sequence[T]:
        """The items, made now if they were not yet."""
        make = self._make
        if make is not None:
            self._made = make()
            self._make = None
        return self._made

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[T]: ...

    def __getitem__(self, index: int | slice) -> T | Sequence[T]:
        return self.made()[index]

    def __iter__(self) -> Iterator[T]:
        return iter(self.made())


class AppliedResults(MadeWhenRead[OfflineTransactionResult]):
    """The results of a batch the common path applied, one per debit (`applied_result`),
    made only when read: the answer is written from the debits themselves (see
    `storedvalue.hq.grpc_api.convert.offline.sync_response_wire`). Equal to the tuple of
    the same results, and hashed alike."""

    __slots__ = ("debits",)

    def __init__(self, debits: CommonDebits) -> None:
        super().__init__(len(debits), lambda: tuple([applied_result(d) for d in debits]))
        self.debits = debits

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AppliedResults):
            other = other.made()
        if isinstance(other, tuple):
            return self.made() == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.made())

    def __repr__(self) -> str:
        return repr(self.made())


@dataclass(slots=True)
class CommonBatchPlan:
    """What applying a common batch changes: its debits, whose results `results` are, and
    the cards' new balances (in card-number order)."""

    debits: CommonDebits
    balances: list[BalanceChange] = field(default_factory=list)

    @property
    def results(self) -> AppliedResults:
        return AppliedResults(self.debits)


@dataclass(slots=True)
class CommonSales:
    """A batch's transactions in the common case's shape (one redeem line with an amount, a
    completion time, nothing else, every field readable), as one column per field the common
    path reads, in batch order. The batch decoder fills these straight from the request's
    messages (`storedvalue.hq.grpc_api.convert.offline`), without an object per transaction
    or reading the fields the common case does not need; `common_sales` makes them from
    decoded transactions."""

    transaction_ids: list[str] = field(default_factory=list)
    sequence_numbers: list[int] = field(default_factory=list)
    # Microseconds since the epoch, UTC (`micros_from_epoch`).
    completed_micros: list[int] = field(default_factory=list)
    parameters_versions: list[int] = field(default_factory=list)
    fingerprints: list[bytes] = field(default_factory=list)
    line_ids: list[str] = field(default_factory=list)
    card_numbers: list[str] = field(default_factory=list)
    amounts_minor: list[int] = field(default_factory=list)
    currencies: list[str] = field(default_factory=list)
    fencing_tokens: list[int] = field(default_factory=list)


def common_sales(transactions: Sequence[OfflineTransaction]) -> CommonSales | None:
    """The batch as `CommonSales`, or None when a transaction has not the common case's
    shape (the test worth making before reading anything)."""
    sales = CommonSales()
    for txn in transactions:
        lines = txn.redeem_lines
        if (len(lines) != 1 or txn.unlocks or txn.reversals or txn.unreadable_fields
                or txn.completed_at is None or lines[0].amount is None):
            return None
        (line,) = lines
        amount = line.amount
        assert amount is not None
        sales.transaction_ids.append(txn.transaction_id)
        sales.sequence_numbers.append(txn.sequence_number)
        sales.completed_micros.append(micros_from_epoch(txn.completed_at))
        sales.parameters_versions.append(txn.parameters_version)
        sales.fingerprints.append(txn.fingerprint)
        sales.line_ids.append(line.line_id)
        sales.card_numbers.append(line.card_number)
        sales.amounts_minor.append(amount.amount_minor)
        sales.currencies.append(amount.currency)
        sales.fencing_tokens.append(line.fencing_token)
    return sales


def sales_to_look_up(sales: CommonSales, cards: Mapping[str, CardBalance]) -> list[str]:
    """The sales whose lock grants `plan_common_batch` needs: those whose line's card is not
    locked by the terminal (the one `cards` were read for) for that sale under the line's
    token (usually none: a till syncs the sales it completed under their cards' locks,
    which the sync releases)."""
    wanted = []
    for txn_id, number, token in zip(sales.transaction_ids, sales.card_numbers,
                                     sales.fencing_tokens, strict=True):
        card = cards.get(number)
        if (card is None or card.lock_transaction_id != txn_id
                or card.lock_fencing_token != token):
            wanted.append(txn_id)
    return wanted


def plan_common_batch(
    *,
    terminal_id: str,
    sales: CommonSales,
    transactions: Sequence[OfflineTransaction],
    cards: Mapping[str, CardBalance],
    known: Mapping[str, OfflineRecord],
    sequence_owners: Mapping[int, str],
    redemptions: Mapping[tuple[str, str, str], Redemption],
    parameters: Mapping[int, Parameters],
    sale_locks: Iterable[SaleLock],
    highest_sequence_seen: int,
    now: datetime,
    limits: ItemLimits = DEFAULT_ITEM_LIMITS,
) -> CommonBatchPlan | None:
    """The plan of a batch whose every transaction is the common case (the arguments as for
    `plan_offline_batch`, the transactions as `sales`, the cards as balances read for
    `terminal_id` and the lock grants as `SaleLock`s), or None when one is not.
    `transactions`: the same batch as decoded transactions, read only for those whose
    parameters set offline risk limits.

    `sale_locks` may leave out the grants of a sale whose line's card is still locked by the
    terminal for that sale under the line's fencing token (`sales_to_look_up`): that lock is
    the latest the terminal got for the sale (a card's tokens only grow, and every lock
    handed out is in the lock history), and not one it released (it would be free). Such a
    line is trusted from the card alone, as `why_offline_line_is_untrusted` would."""
    if known or sequence_owners or redemptions or limits.max_lines < 1:
        return None
    gift_card = CardKind.GIFT_CARD
    # The trusted token of each (sale, card): the rule of `why_offline_line_is_untrusted`,
    # the latest lock the terminal got for the sale, unless it released it itself (then
    # None: no line on that card is trusted).
    trusted: dict[tuple[str, str], int | None] = {}
    latest: dict[tuple[str, str], int] = {}
    for sale, card_number, token, released in sale_locks:
        key = (sale, card_number)
        if token > latest.get(key, -1):
            latest[key] = token
            trusted[key] = None if released else token
    # By parameters version: None when it does not allow gift cards offline, else whether it
    # sets an offline risk limit on them (asked once a version, not once a transaction).
    limited: dict[int, bool | None] = {}
    for version, applied in parameters.items():
        risk = applied.offline_limits(gift_card)
        limited[version] = (
            risk.max_line_amount is not None or risk.max_unsynced_amount is not None
            or risk.max_offline_duration is not None
        ) if applied.offline_completion_allowed(gift_card) else None
    txn_ids, numbers = sales.transaction_ids, sales.card_numbers
    amounts, tokens = sales.amounts_minor, sales.fencing_tokens
    count = len(txn_ids)
    versions = set(sales.parameters_versions)
    # The rules that hold for each sale alone, or for the batch as a whole (no sale, line or
    # card twice), checked a column at a time.
    if count and (
        not are_valid_ids(txn_ids) or not are_valid_ids(sales.line_ids)
        or len(set(txn_ids)) != count or len(set(sales.sequence_numbers)) != count
        or len(set(numbers)) != count or 0 in tokens
        or not min(amounts) > 0 or max(amounts) > MAX_AMOUNT_MINOR
        # an unknown version, or one not allowing it
        or any(limited.get(version) is None for version in versions)
    ):
        return None
    # Whether any sale's version sets offline risk limits (then checked sale by sale).
    any_limited = any(limited[version] for version in versions)
    balances_after: list[int] = []
    balances_append = balances_after.append
    changes: list[BalanceChange] = []
    changes_append = changes.append
    highest_seen = highest_sequence_seen
    jump = limits.max_sequence_jump
    for index, (txn_id, sequence, number, amount_minor, currency, token) in enumerate(zip(
            txn_ids, sales.sequence_numbers, numbers, amounts, sales.currencies, tokens,
            strict=True)):
        if not 1 <= sequence <= highest_seen + jump:
            return None
        if sequence > highest_seen:
            highest_seen = sequence
        card = cards.get(number)
        if (
            card is None
            or currency != card.currency
            # (also a card of another kind: its balance is read as -1, every amount > 0)
            or amount_minor > card.balance_minor
            or card.balance_minor - amount_minor > MAX_BALANCE_MINOR
            or not is_valid_card_number(number)
        ):
            return None
        held = card.lock_transaction_id == txn_id  # (by this terminal: see CardBalance)
        if not (held and card.lock_fencing_token == token) and (
                trusted.get((txn_id, number)) != token):
            return None
        if any_limited and limited[sales.parameters_versions[index]]:
            txn = transactions[index]
            if offline_limit_breaches(txn, list(txn.redeem_lines), lambda _line: gift_card,
                                      parameters[txn.parameters_version]):
                return None
        balance = card.balance_minor - amount_minor
        balances_append(balance)
        # (All thrown away should a later sale not be the common case: rare, and cheaper
        # than a second pass over the batch.)
        changes_append(new_tuple(BalanceChange, (number, balance, held)))
    # Each card once (checked above): sorted by number alone (a key: strings compared as
    # such, not tuples element by element).
    changes.sort(key=first_column)
    return CommonBatchPlan(CommonDebits(sales, balances_after), changes)
