"""Back-office use cases: locks, offline exceptions, journals, terminals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from storedvalue.hq.domain.cards import Card, Lock, validate_card_number
from storedvalue.hq.domain.client_text import (
    MAX_REASON_LENGTH,
    MAX_RESOLUTION_LENGTH,
    required_free_text,
    validate_id,
)
from storedvalue.hq.domain.errors import (
    CardNotFound,
    ExceptionAlreadyResolved,
    ExceptionNotFound,
    TerminalAlreadyExists,
    TerminalNotFound,
)
from storedvalue.hq.domain.journal import JournalEntry
from storedvalue.hq.domain.offline import OfflineException
from storedvalue.hq.domain.paging import Page, page_of
from storedvalue.hq.domain.parameters import validate_store_id
from storedvalue.hq.domain.terminal_reports import (
    NEVER_REPORTED,
    ReceivedReport,
    TerminalLink,
    link_now,
)
from storedvalue.hq.domain.terminals import (
    Terminal,
    hash_token,
    new_bearer_token,
    validate_display_name,
    validate_terminal_id,
)
from storedvalue.hq.services.clock import Clock, utc_now
from storedvalue.hq.services.idempotency import RequestKey, once, run_once
from storedvalue.hq.services.offline import SyncStatus, sync_status
from storedvalue.hq.services.transactions import Transactions
from storedvalue.hq.services.unit_of_work import Repositories


@dataclass(frozen=True, slots=True)
class ForcedUnlock:
    card: Card
    released_lock: Lock | None


@dataclass(frozen=True, slots=True)
class ResolvedException:
    exception: OfflineException
    card: Card | None


@dataclass(frozen=True, slots=True)
class TerminalView:
    """A terminal as the back office sees it: its sync status, its last report (what it held
    unsynced) and its link as judged from that report."""

    terminal: Terminal
    sync_status: SyncStatus
    report: ReceivedReport | None = None
    link: TerminalLink = NEVER_REPORTED


@dataclass(frozen=True, slots=True)
class RevokedTerminal:
    terminal: TerminalView
    released_locks: tuple[Lock, ...]


@dataclass(frozen=True, slots=True)
class IssuedCredential:
    """A terminal and its new bearer token. The token is shown once: a retry of the same
    request gets the terminal with an empty token (HQ keeps only the hash)."""

    terminal: TerminalView
    bearer_token: str


_ALL = 1_000_000  # a till holds a handful of locks; this bounds a runaway one


def _public(terminal: Terminal) -> Terminal:
    """A terminal as shown outside HQ: never with its token hash."""
    return replace(terminal, token_hash="")


def _view(uow: Repositories, terminal: Terminal, now: datetime,
          report: ReceivedReport | None = None) -> TerminalView:
    if report is None:
        report = uow.reports.get_many([terminal.terminal_id]).get(terminal.terminal_id)
    return TerminalView(_public(terminal), sync_status(uow, terminal), report,
                        link_now(report, now))


class BackOfficeService:
    def __init__(self, transactions: Transactions, *, clock: Clock = utc_now) -> None:
        self._transactions = transactions
        self._clock = clock

    # -- locks ----------------------------------------------------------------------------

    async def list_locks(self, *, terminal_id: str | None, include_expired: bool,
                         after_card_number: str, limit: int) -> Page[Lock]:
        if terminal_id:
            validate_terminal_id(terminal_id)
        now = self._clock()
        found = await self._transactions.read(
            lambda uow: uow.cards.list_locks(
                now=now, terminal_id=terminal_id or None, include_expired=include_expired,
                after_card_number=after_card_number, limit=limit + 1,
            ),
        )
        return page_of(found, limit, lambda lock: lock.card_number)

    async def force_unlock(self, *, key: RequestKey, admin: str, card_number: str, reason: str
                     ) -> ForcedUnlock:
        key.validate()
        validate_card_number(card_number)
        reason = required_free_text(reason, "reason", max_length=MAX_REASON_LENGTH,
                                    why="say why the lock is forced")

        def run(uow: Repositories, now: datetime) -> ForcedUnlock:
            card = uow.cards.get_for_update(card_number)
            if card is None:
                raise CardNotFound(card_number)
            released = card.force_release(reason=reason, by=admin, now=now)
            uow.cards.save([card])
            return ForcedUnlock(card=card.snapshot(now), released_lock=released)

        return await run_once(self._transactions, key, ForcedUnlock, self._clock, run)

    # -- offline exceptions -----------------------------------------------------------------

    async def list_exceptions(self, *, include_resolved: bool, terminal_id: str | None,
                              card_number: str | None, after_position: int, limit: int
                              ) -> Page[OfflineException]:
        """Oldest first; the cursor is the last listed exception's insertion position."""
        if terminal_id:
            validate_terminal_id(terminal_id)
        if card_number:
            validate_card_number(card_number)
        found = await self._transactions.read(
            lambda uow: uow.exceptions.list(
                include_resolved=include_resolved, terminal_id=terminal_id or None,
                card_number=card_number or None, after_position=after_position,
                limit=limit + 1,
            ),
        )
        page = page_of(found, limit, lambda listed: listed[0])
        return Page(tuple(exc for _, exc in page.items), page.next_cursor)

    async def resolve_exception(self, *, key: RequestKey, admin: str, exception_id: str,
                          resolution: str) -> ResolvedException:
        key.validate()
        validate_id(exception_id, "exception_id")
        resolution = required_free_text(resolution, "resolution",
                                        max_length=MAX_RESOLUTION_LENGTH,
                                        why="say what was done")

        def run(uow: Repositories, now: datetime) -> ResolvedException:
            exc = uow.exceptions.get_for_update(exception_id)
            if exc is None:
                raise ExceptionNotFound(exception_id)
            if not exc.is_open:
                raise ExceptionAlreadyResolved(exception_id)
            card = uow.cards.get_for_update(exc.card_number) if exc.card_number else None
            exc.resolved_at = now
            exc.resolved_by = admin
            exc.resolution = resolution
            uow.exceptions.save(exc)
            if card is not None:
                card.clear_flag_if_resolved(uow.exceptions.count_open_for_card(
                    card.card_number))
                uow.cards.save([card])
            return ResolvedException(
                exception=exc, card=card.snapshot(now) if card is not None else None
            )

        return await run_once(self._transactions, key, ResolvedException, self._clock, run)

    # -- journal ----------------------------------------------------------------------------

    async def list_journal(self, *, card_number: str, after_entry_id: int, limit: int
                           ) -> Page[JournalEntry]:
        validate_card_number(card_number)

        def work(uow: Repositories) -> list[JournalEntry]:
            if uow.cards.get(card_number) is None:
                raise CardNotFound(card_number)
            return uow.journal.list_for_card(
                card_number, after_entry_id=after_entry_id, limit=limit + 1
            )

        found = await self._transactions.read(work)
        return page_of(found, limit, lambda entry: entry.entry_id)

    # -- terminals --------------------------------------------------------------------------

    async def register_terminal(self, *, key: RequestKey, terminal_id: str,
                                display_name: str, store_id: str = "") -> IssuedCredential:
        key.validate()
        validate_terminal_id(terminal_id)
        validate_display_name(display_name)
        if store_id:
            validate_store_id(store_id)
        token = new_bearer_token()

        def run(uow: Repositories, now: datetime) -> IssuedCredential:
            if uow.terminals.get_for_update(terminal_id) is not None:
                raise TerminalAlreadyExists(terminal_id)
            terminal = Terminal(
                terminal_id=terminal_id, display_name=display_name or terminal_id,
                token_hash=hash_token(token), registered_at=now, credential_issued_at=now,
                store_id=store_id,
            )
            uow.terminals.add(terminal)
            return IssuedCredential(terminal=_view(uow, terminal, now), bearer_token="")

        return await self._issue_credential(key, token, run)

    async def rotate_credential(self, *, key: RequestKey, terminal_id: str) -> IssuedCredential:
        key.validate()
        validate_terminal_id(terminal_id)
        token = new_bearer_token()

        def run(uow: Repositories, now: datetime) -> IssuedCredential:
            terminal = uow.terminals.get_for_update(terminal_id)
            if terminal is None:
                raise TerminalNotFound(terminal_id)
            terminal.refuse_if_revoked()
            terminal.token_hash = hash_token(token)
            terminal.credential_issued_at = now
            uow.terminals.save(terminal)
            return IssuedCredential(terminal=_view(uow, terminal, now), bearer_token="")

        return await self._issue_credential(key, token, run)

    async def _issue_credential(
        self,
        key: RequestKey,
        token: str,
        run: Callable[[Repositories, datetime], IssuedCredential],
    ) -> IssuedCredential:
        """Run a credential-issuing use case once per request id. The remembered first result
        never holds the token (HQ keeps only hashes): the token is handed out only when the
        stored hash is this call's, checked in the same transaction that stored it."""

        def work(uow: Repositories) -> IssuedCredential:
            now = self._clock()
            issued = once(uow, key, IssuedCredential, now, run)
            stored = uow.terminals.get(issued.terminal.terminal.terminal_id)
            if stored is not None and stored.token_hash == hash_token(token):
                return IssuedCredential(terminal=issued.terminal, bearer_token=token)
            return issued

        return await self._transactions.write(work)

    async def revoke_terminal(self, *, key: RequestKey, admin: str, terminal_id: str, reason: str
                              ) -> RevokedTerminal:
        """Revoke the terminal's credential for good and release every lock it holds, with
        the reason in each card's journal. What it last reported stays visible. Other HQ
        replicas are told (`announce`)."""
        key.validate()
        validate_terminal_id(terminal_id)
        reason = required_free_text(reason, "reason", max_length=MAX_REASON_LENGTH,
                                    why="say why the terminal is revoked")

        def run(uow: Repositories, now: datetime) -> RevokedTerminal:
            terminal = uow.terminals.get_for_update(terminal_id)
            if terminal is None:
                raise TerminalNotFound(terminal_id)
            terminal.revoke(by=admin, reason=reason, now=now)
            uow.terminals.save(terminal)
            uow.terminals.announce(terminal_id)
            held = uow.cards.list_locks(now=now, terminal_id=terminal_id, include_expired=True,
                                        after_card_number="", limit=_ALL)
            cards = uow.cards.get_many_for_update({lock.card_number for lock in held})
            released = []
            for card in cards.values():  # locked in card-number order
                if card.lock is not None and card.lock.terminal_id == terminal_id:
                    lock = card.force_release(
                        reason=f"terminal {terminal_id} revoked: {reason}", by=admin,
                        now=now,
                    )
                    assert lock is not None
                    released.append(lock)
            uow.cards.save(cards.values())
            return RevokedTerminal(_view(uow, terminal, now), tuple(released))

        return await run_once(self._transactions, key, RevokedTerminal, self._clock, run)

    async def set_terminal_store(self, *, key: RequestKey, terminal_id: str, store_id: str
                           ) -> TerminalView:
        """Move a terminal to another store (or to none): it gets that store's parameters."""
        key.validate()
        validate_terminal_id(terminal_id)
        if store_id:
            validate_store_id(store_id)

        def run(uow: Repositories, now: datetime) -> TerminalView:
            terminal = uow.terminals.get_for_update(terminal_id)
            if terminal is None:
                raise TerminalNotFound(terminal_id)
            terminal.refuse_if_revoked()
            terminal.store_id = store_id
            uow.terminals.save(terminal)
            uow.terminals.announce(terminal_id)
            return _view(uow, terminal, now)

        return await run_once(self._transactions, key, TerminalView, self._clock, run)

    async def list_terminals(self, *, after_terminal_id: str, limit: int
                             ) -> Page[TerminalView]:
        now = self._clock()

        def work(uow: Repositories) -> list[TerminalView]:
            listed = uow.terminals.list(after_terminal_id=after_terminal_id, limit=limit + 1)
            reports = uow.reports.get_many([t.terminal_id for t in listed])
            return [_view(uow, t, now, reports.get(t.terminal_id)) for t in listed]

        found = await self._transactions.read(work)
        return page_of(found, limit, lambda view: view.terminal.terminal_id)

    async def get_sync_status(self, *, terminal_id: str) -> SyncStatus:
        validate_terminal_id(terminal_id)

        def work(uow: Repositories) -> SyncStatus:
            terminal = uow.terminals.get(terminal_id)
            if terminal is None:
                raise TerminalNotFound(terminal_id)
            return sync_status(uow, terminal)

        return await self._transactions.read(work)
