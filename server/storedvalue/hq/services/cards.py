"""Online card use cases: lock, unlock, redeem, read, issue, add value."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import overload

from storedvalue.hq.domain.cards import (
    Card,
    CardKind,
    Lock,
    generate_card_number,
    issue_card,
    validate_card_number,
)
from storedvalue.hq.domain.client_text import validate_id
from storedvalue.hq.domain.errors import (
    CardAlreadyExists,
    CardNotFound,
    InvalidField,
    StoredValueError,
)
from storedvalue.hq.domain.money import Money, positive_money
from storedvalue.hq.domain.offline import Redemption
from storedvalue.hq.domain.offline_locks import LockGrant
from storedvalue.hq.domain.parameters import DEFAULT_LOCK_LEASE
from storedvalue.hq.domain.reversals import refuse_if_reversed
from storedvalue.hq.domain.value_objects import value_object
from storedvalue.hq.services.clock import Clock, utc_now
from storedvalue.hq.services.idempotency import (
    Answer,
    RequestKey,
    once,
    once_answered,
    run_once,
    run_once_answered,
)
from storedvalue.hq.services.parameters import ParametersFeed, current_parameters
from storedvalue.hq.services.throttle import UnknownCardThrottle
from storedvalue.hq.services.transactions import Transactions
from storedvalue.hq.services.unit_of_work import Repositories


@value_object
class LockResult:
    lock: Lock
    card: Card


@value_object
class RedeemResult:
    card: Card
    debited: Money
    remainder_credit_memo: Card | None = None


class CardService:
    def __init__(
        self,
        transactions: Transactions,
        *,
        clock: Clock = utc_now,
        new_card_number: Callable[[], str] = generate_card_number,
        throttle: UnknownCardThrottle | None = None,
        parameters_feed: ParametersFeed | None = None,
    ) -> None:
        """`parameters_feed`: where LockCard reads the lock lease, instead of the database.
        The feed has local updates at once and other replicas' within its poll interval, so
        a lock can get the lease of a version that was replaced less than that long ago."""
        self._transactions = transactions
        self._clock = clock
        self._new_card_number = new_card_number
        self._throttle = throttle or UnknownCardThrottle()
        self._parameters_feed = parameters_feed

    # -- reads ----------------------------------------------------------------------------

    async def get_card(self, *, caller: str, card_number: str) -> Card:
        validate_card_number(card_number)

        def work(uow: Repositories) -> Card:
            card = self._admitted(uow.cards.get(card_number), card_number, caller)
            return card.snapshot(self._clock())

        try:
            return await self._transactions.read(work)
        except StoredValueError as error:
            self._throttle.count(error, caller)
            raise

    # -- locks ----------------------------------------------------------------------------

    @overload
    async def lock_card(
        self, *, key: RequestKey, terminal_id: str, card_number: str, transaction_id: str,
        store_id: str = "", answer: None = None,
    ) -> LockResult: ...
    @overload
    async def lock_card(
        self, *, key: RequestKey, terminal_id: str, card_number: str, transaction_id: str,
        store_id: str = "", answer: Answer[LockResult],
    ) -> bytes: ...

    async def lock_card(
        self, *, key: RequestKey, terminal_id: str, card_number: str, transaction_id: str,
        store_id: str = "", answer: Answer[LockResult] | None = None,
    ) -> LockResult | bytes:
        """`store_id`: the terminal's store, whose parameters give the lease. `answer`: the
        transport's answer to the result, which is then what this returns and remembers
        (see `idempotency.once_answered`)."""
        key.validate()
        validate_card_number(card_number)
        validate_id(transaction_id, "transaction_id")

        def run(uow: Repositories, now: datetime) -> LockResult:
            card = self._load_for_update(uow, card_number, caller=terminal_id)
            feed = self._parameters_feed
            params = feed.latest(store_id) if feed is not None else None
            if params is None:
                params = current_parameters(uow, store_id)
            lease = params.lock_lease if params is not None else DEFAULT_LOCK_LEASE
            issued = card.last_fencing_token
            lock = card.acquire_lock(
                terminal_id=terminal_id, transaction_id=transaction_id, now=now, lease=lease
            )
            uow.cards.save([card])
            if lock.fencing_token > issued:  # a new lock, not a renewal: remember it
                uow.lock_history.add([LockGrant.of(lock)])
            # Answered, the result is encoded at once and never handed out: the card itself
            # is shown rather than a detached snapshot, which would show the same (the lock
            # just taken is live for at least the lease's minute). Positional: cheaper by a
            # third.
            return LockResult(lock, card if answer is not None else card.snapshot(now))

        try:
            if answer is not None:
                return await run_once_answered(self._transactions, key, LockResult,
                                               self._clock, run, answer)
            return await run_once(self._transactions, key, LockResult, self._clock, run)
        except StoredValueError as error:
            self._throttle.count(error, terminal_id)
            raise

    async def unlock_card(
        self,
        *,
        key: RequestKey,
        terminal_id: str,
        card_number: str,
        transaction_id: str,
        fencing_token: int,
    ) -> Card:
        key.validate()
        validate_card_number(card_number)
        validate_id(transaction_id, "transaction_id")

        def run(uow: Repositories, now: datetime) -> Card:
            card = self._load_for_update(uow, card_number, caller=terminal_id)
            released = card.release_lock(
                terminal_id=terminal_id,
                transaction_id=transaction_id,
                fencing_token=fencing_token,
            )
            uow.cards.save([card])
            # Released by its holder: an offline line under it is no longer trusted.
            uow.lock_history.mark_released_by_holder([released], now)
            return card.snapshot(now)

        try:
            return await run_once(self._transactions, key, Card, self._clock, run)
        except StoredValueError as error:
            self._throttle.count(error, terminal_id)
            raise

    # -- money ----------------------------------------------------------------------------

    @overload
    async def redeem(
        self, *, key: RequestKey, terminal_id: str, card_number: str, transaction_id: str,
        line_id: str, fencing_token: int, amount: Money | None, answer: None = None,
    ) -> RedeemResult: ...
    @overload
    async def redeem(
        self, *, key: RequestKey, terminal_id: str, card_number: str, transaction_id: str,
        line_id: str, fencing_token: int, amount: Money | None, answer: Answer[RedeemResult],
    ) -> bytes: ...

    async def redeem(
        self,
        *,
        key: RequestKey,
        terminal_id: str,
        card_number: str,
        transaction_id: str,
        line_id: str,
        fencing_token: int,
        amount: Money | None,
        answer: Answer[RedeemResult] | None = None,
    ) -> RedeemResult | bytes:
        """Debit, journal and release the lock in one transaction. A line HQ already applied
        (same terminal, transaction and line ids, e.g. at sync) is not applied again; a line
        the terminal reversed is refused (LINE_REVERSED), even when this request id once
        debited it: that debit was credited back. `answer`: as for `lock_card`."""
        key.validate()
        validate_card_number(card_number)
        validate_id(transaction_id, "transaction_id")
        validate_id(line_id, "line_id")
        if not fencing_token:  # tokens start at 1: 0 is the field left out
            raise InvalidField("fencing_token", "is required (the live lock's, from LockCard)")
        money = positive_money(amount, "amount")

        line_key = (terminal_id, transaction_id, line_id)

        def run(card: Card, earlier: Redemption | None, uow: Repositories, now: datetime
                ) -> RedeemResult:
            if earlier is not None:
                return self._replayed_line(uow, earlier, card, money, now)
            remainder = card.redeem_online(
                terminal_id=terminal_id,
                transaction_id=transaction_id,
                line_id=line_id,
                fencing_token=fencing_token,
                amount=money,
                now=now,
            )
            memo = None
            if remainder > 0:
                memo = issue_card(
                    card_number=self._new_card_number(),
                    kind=CardKind.CREDIT_MEMO,
                    value=Money(remainder, card.currency),
                    terminal_id=terminal_id,
                    transaction_id=transaction_id,
                    line_id=line_id,
                    now=now,
                    remainder_of=card,
                )
            uow.cards.save([card])
            if memo is not None:
                uow.cards.add([memo])
            # Positional (in the fields' order): a value object built by keyword costs a
            # third more, and every Redeem builds these.
            uow.redemptions.add([
                Redemption(
                    terminal_id,  # terminal_id
                    transaction_id,  # transaction_id
                    line_id,  # line_id
                    card_number,  # card_number
                    money.amount_minor,  # amount_minor
                    money.currency,  # currency
                    memo.card_number if memo else "",  # remainder_card_number
                    False,  # offline
                    now,  # recorded_at
                )
            ])
            return RedeemResult(
                card if answer is not None else card.snapshot(now),  # card (as in lock_card)
                money,  # debited
                memo.snapshot(now) if memo else None,  # remainder_credit_memo
            )

        runs = 0  # a unit's first run need not look its request id up first (`once`)

        def work(uow: Repositories) -> RedeemResult | bytes:
            nonlocal runs
            runs += 1
            look_first = runs > 1
            now = self._clock()
            # The card's row lock first (a sync applying or reversing this line holds it),
            # read with the line in one statement.
            found, earlier = uow.cards.get_for_update_with_line(card_number, line_key)
            card = self._admitted(found, card_number, terminal_id)
            # Before the request id's replay: a reversal outranks a remembered answer.
            refuse_if_reversed(earlier)
            # The card and line bound to `run` by a partial: called from C, cheaper than a
            # lambda's frame and cells (~0.9K instructions a Redeem, callgrind).
            bound = partial(run, card, earlier)
            if answer is not None:
                return once_answered(uow, key, RedeemResult, now, bound, answer,
                                     look_first=look_first)
            return once(uow, key, RedeemResult, now, bound, look_first=look_first)

        try:
            return await self._transactions.write(work)
        except StoredValueError as error:
            self._throttle.count(error, terminal_id)
            raise

    async def issue_card(
        self,
        *,
        key: RequestKey,
        terminal_id: str,
        kind: CardKind | None,
        initial_value: Money | None,
        card_number: str,
        transaction_id: str,
    ) -> Card:
        key.validate()
        if kind is None:
            raise InvalidField("kind", "is required (gift card or credit memo)")
        value = positive_money(initial_value, "initial_value")
        if card_number:
            validate_card_number(card_number)
        if transaction_id:
            validate_id(transaction_id, "transaction_id")

        def run(uow: Repositories, now: datetime) -> Card:
            number = card_number or self._new_card_number()
            if card_number:
                # A pre-printed number: "taken" tells that the card exists.
                existing = uow.cards.get_for_update(card_number)
                self._throttle.admit(terminal_id, existing)
                if existing is not None:
                    raise CardAlreadyExists(card_number)
            card = issue_card(
                card_number=number,
                kind=kind,
                value=value,
                terminal_id=terminal_id,
                transaction_id=transaction_id,
                now=now,
            )
            uow.cards.add([card])
            return card.snapshot(now)

        try:
            return await run_once(self._transactions, key, Card, self._clock, run)
        except StoredValueError as error:
            self._throttle.count(error, terminal_id)
            raise

    async def add_value(
        self,
        *,
        key: RequestKey,
        terminal_id: str,
        card_number: str,
        amount: Money | None,
        transaction_id: str,
    ) -> Card:
        key.validate()
        validate_card_number(card_number)
        money = positive_money(amount, "amount")
        if transaction_id:
            validate_id(transaction_id, "transaction_id")

        def run(uow: Repositories, now: datetime) -> Card:
            card = self._load_for_update(uow, card_number, caller=terminal_id)
            card.add_value(
                amount=money, terminal_id=terminal_id, transaction_id=transaction_id, now=now
            )
            uow.cards.save([card])
            return card.snapshot(now)

        try:
            return await run_once(self._transactions, key, Card, self._clock, run)
        except StoredValueError as error:
            self._throttle.count(error, terminal_id)
            raise

    # -- internals ------------------------------------------------------------------------

    def _load_for_update(self, uow: Repositories, card_number: str, *, caller: str) -> Card:
        return self._admitted(uow.cards.get_for_update(card_number), card_number, caller)

    def _admitted(self, card: Card | None, card_number: str, caller: str) -> Card:
        """The card, if the unknown-card limit lets the caller learn anything about it."""
        self._throttle.admit(caller, card)
        if card is None:
            raise CardNotFound(card_number)
        return card

    def _replayed_line(
        self, uow: Repositories, earlier: Redemption, card: Card, amount: Money, now: datetime
    ) -> RedeemResult:
        if (earlier.card_number, earlier.amount_minor, earlier.currency) != (
            card.card_number, amount.amount_minor, amount.currency
        ):
            raise InvalidField(
                "line_id", "this line was already redeemed with another card or amount"
            )
        memo_number = earlier.remainder_card_number
        memo = uow.cards.get(memo_number) if memo_number else None
        return RedeemResult(
            card=card.snapshot(now),
            debited=amount,
            remainder_credit_memo=memo.snapshot(now) if memo else None,
        )
