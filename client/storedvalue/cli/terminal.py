"""``storedvalue terminal``: act as one till from a shell, for support staff.

Each command opens the till's data directory (its open sales, cached parameters and outbox,
the same files the POS application uses, so stop the POS first), does one thing and exits:
0 on success, 1 when HQ or the till refused (the message says why), 2 on a usage error.
The background sync is off: only ``sync`` sends the outbox. Against an HQ serving TLS give
the CA of its certificate (``--ca-file``) and, under mutual TLS, the till's own certificate
and key (``--client-cert``, ``--client-key``; its common name is the terminal id).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from storedvalue.terminal import (
    CardKind,
    CardLocked,
    ConnectivityState,
    HandshakeFailed,
    HQUnavailable,
    Money,
    OfflineNotAllowed,
    OfflineRefusal,
    OfflineRiskLimits,
    Sale,
    SaleAlreadyCompleted,
    SaleLine,
    SyncProgress,
    Terminal,
    TerminalConfig,
    TerminalError,
    TlsProblem,
    Unauthenticated,
)

from ._display import format_moment, format_money, mask, parse_money
from ._tls_options import add_tls_options, tls_files

ENV_TARGET = "STOREDVALUE_TARGET"
ENV_TERMINAL_ID = "STOREDVALUE_TERMINAL_ID"
ENV_TOKEN = "STOREDVALUE_TERMINAL_TOKEN"  # noqa: S105 - a variable name
ENV_DATA_DIR = "STOREDVALUE_TERMINAL_DATA_DIR"
ENV_CLIENT_CERT = "STOREDVALUE_TERMINAL_CLIENT_CERT"
ENV_CLIENT_KEY = "STOREDVALUE_TERMINAL_CLIENT_KEY"
DEFAULT_TARGET = "127.0.0.1:50051"
Handler = Callable[[Terminal, argparse.Namespace], int]

_WHY_OFFLINE = {
    "KIND_NOT_ALLOWED": "HQ's parameters do not allow this kind of card offline",
    "NOT_LOCKED": "this till did not lock the card for this sale before the link dropped",
    "LOCK_UNCONFIRMED": "HQ never confirmed the lock (its answer was lost), so it may be "
    "held by another till",
    "OVER_BALANCE": "more than the balance seen when the card was locked",
    "CURRENCY_MISMATCH": "not the card's currency",
    "OFFLINE_LINE_LIMIT_EXCEEDED": "more than HQ's largest offline line for this kind of card",
    "OFFLINE_UNSYNCED_LIMIT_EXCEEDED": "more than this till may hold unsynced for this kind "
    "of card",
    "OFFLINE_DURATION_EXCEEDED": "this till has been out of touch with HQ for longer than HQ "
    "allows offline sales of this kind of card",
}


class UsageError(Exception):
    """Bad input on the command line: exit code 2."""


# -- commands ----------------------------------------------------------------------------


def lock(till: Terminal, args: argparse.Namespace) -> int:
    tender = till.add_tender(transaction_id=args.transaction, card_number=args.card_number)
    lease = format_moment(tender.lease_expires_at) if tender.lease_expires_at else "no lease end"
    print(f"locked card {mask(tender.card_number)} for sale {tender.transaction_id}: "
          f"{_kind(tender.kind)}, balance {format_money(tender.balance)}, "
          f"fencing token {tender.fencing_token}, lease until {lease}")
    return 0


def unlock(till: Terminal, args: argparse.Namespace) -> int:
    card = mask(args.card_number)
    if till.remove_tender(transaction_id=args.transaction, card_number=args.card_number):
        print(f"released card {card} from sale {args.transaction}")
    else:
        print(f"HQ unreachable: the release of card {card} is queued and reaches HQ at the "
              "next sync")
    return 0


def sale(till: Terminal, args: argparse.Namespace) -> int:
    lines = [_sale_line(index, text) for index, text in enumerate(args.line, start=1)]
    try:
        for line in lines:
            try:
                till.add_tender(transaction_id=args.transaction, card_number=line.card_number)
            except HQUnavailable:
                break  # offline: the sale completes offline if the cards were locked before
        result = till.complete_sale(transaction_id=args.transaction, lines=lines)
    except SaleAlreadyCompleted as completed:
        earlier = completed.result
        how = "offline" if earlier is not None and earlier.completed_offline else "online"
        raise UsageError(f"sale {args.transaction} was already completed {how}; "
                         "`sales` shows how it stands") from None
    if result.completed_offline:
        print(f"sale {result.transaction_id} completed offline (outbox sequence "
              f"{result.sequence_number}): the receipt says \"completed offline\"")
    else:
        print(f"sale {result.transaction_id} completed online")
    for done in result.lines:
        after = ("completed offline" if done.balance_after is None
                 else f"balance after {format_money(done.balance_after)}")
        print(f"  {done.line_id} card {mask(done.card_number)}: {format_money(done.amount)}, "
              f"{after}")
        if done.remainder_credit_memo is not None:
            memo = done.remainder_credit_memo
            print(f"  remainder credit memo {memo.card_number}: {format_money(memo.balance)}")
    for line in result.reversed_lines:
        print(f"  {line.line_id} card {mask(line.card_number)}: {format_money(line.amount)} "
              "reversed (its Redeem went unanswered; HQ credits it back at sync)")
    return 0


def abandon(till: Terminal, args: argparse.Namespace) -> int:
    till.abandon_sale(transaction_id=args.transaction)
    print(f"sale {args.transaction} abandoned: its cards are released and its lines that "
          "reached HQ reversed (queued for sync when HQ is unreachable)")
    return 0


def sales(till: Terminal, args: argparse.Namespace) -> int:
    if args.transaction:
        found = till.sale(transaction_id=args.transaction)
        if found is None:
            raise UsageError(f"this till has no sale {args.transaction}")
        chosen: tuple[Sale, ...] = (found,)
    else:
        chosen = till.open_sales()
        if not chosen:
            print("no open sale")
    for one in chosen:
        queued = f", outbox #{one.sequence_number}" if one.sequence_number else ""
        synced = "" if one.synced else " (not synced yet)"
        print(f"sale {one.transaction_id}: {one.status.value}{queued}{synced}")
        for tender in one.tenders:
            held = "locked" if tender.tender is not None else "lock unconfirmed"
            print(f"  card {mask(tender.card_number)}: {held}"
                  f"{', release queued' if tender.release_queued else ''}")
        for line in one.lines:
            why = f" ({line.hq_reason})" if line.hq_reason else ""
            print(f"  {line.line_id} card {mask(line.card_number)}: "
                  f"{format_money(line.amount)} {line.state.value}{why}")
    return 0


def balance(till: Terminal, args: argparse.Namespace) -> int:
    card = till.balance(card_number=args.card_number)
    if card.lock is None:
        held = "not locked"
    else:
        until = format_moment(card.lock.lease_expires_at) if card.lock.lease_expires_at else "-"
        held = (f"locked by terminal {card.lock.terminal_id} for sale "
                f"{card.lock.transaction_id} until {until}")
    print(f"card {mask(card.card_number)}: {_kind(card.kind)}, {card.status.value}, "
          f"balance {format_money(card.balance)}, {held}")
    return 0


def issue(till: Terminal, args: argparse.Namespace) -> int:
    amount_text, _, currency = args.amount.rpartition(":")
    kind = CardKind.CREDIT_MEMO if args.kind == "credit-memo" else CardKind.GIFT_CARD
    card = till.issue_card(kind=kind, initial_value=_money(amount_text, currency),
                           card_number=args.card_number or "")
    print(f"issued {_kind(card.kind)} {card.card_number} with {format_money(card.balance)}")
    return 0


def status(till: Terminal, args: argparse.Namespace) -> int:
    parameters = till.parameters
    allowed = {True: "allowed", False: "not allowed"}
    print(f"terminal {till.terminal_id} -> HQ {args.resolved_target}")
    print(f"connectivity: {till.state.value}")
    if till.handshake_problem is not None:
        print(f"TLS: {describe(till.handshake_problem, args.resolved_target)}")
    if parameters.version == 0:
        print("parameters: none received yet (nothing may complete offline)")
    else:
        print(f"parameters: version {parameters.version} (gift cards offline: "
              f"{allowed[parameters.gift_card_offline_completion_allowed]}, credit memos "
              f"offline: {allowed[parameters.credit_memo_offline_completion_allowed]}, "
              f"lock lease {parameters.lock_lease})")
        for kind in (CardKind.GIFT_CARD, CardKind.CREDIT_MEMO):
            limits = parameters.offline_limits(kind)
            if limits != OfflineRiskLimits():
                print(f"  {_kind(kind)} offline limits: {_limits(limits)}")
    print(f"outbox: {len(till.outbox())} offline transaction(s) waiting for sync")
    for held in till.unsynced_amounts():
        print(f"  unsynced {_kind(held.card_kind)} lines: {format_money(held.amount)} "
              f"({held.line_count} line(s))")
    reached = till.last_reached_hq_at
    print(f"last reached HQ: {format_moment(reached) if reached else 'never'}")
    reports = till.sync_reports()
    if reports:
        print(f"sync reports needing attention: {len(reports)} (see `outbox`)")
    return 0


def outbox(till: Terminal, args: argparse.Namespace) -> int:
    entries = till.outbox()
    if not entries:
        print("outbox is empty")
    else:
        print(f"{'SEQ':>6}  {'TRANSACTION':<24} {'COMPLETED AT':<32} LINES  UNLOCKS")
    for entry in entries:
        print(f"{entry.sequence_number:>6}  {entry.transaction_id:<24} "
              f"{format_moment(entry.completed_at):<32} {entry.redeem_line_count:>5}  "
              f"{entry.unlock_count:>7}")
    for report in till.sync_reports():
        print(f"synced #{report.sequence_number} {report.transaction_id}: "
              f"{report.outcome.value} {report.reason} {report.message}".rstrip())
    return 0


def sync(till: Terminal, args: argparse.Namespace) -> int:
    if till.state is not ConnectivityState.ONLINE:
        till.wait_for_state(ConnectivityState.ONLINE, timeout_s=args.wait)
    bar = ProgressBar(sys.stderr, batch_size=args.batch_size)
    till.on_sync_progress(bar)
    summary = till.sync_now()
    bar.finish()
    print(f"synced {summary.sent} offline transaction(s) in {summary.elapsed_s:.2f} s: "
          f"{summary.applied} applied, {summary.already_applied} already applied, "
          f"{summary.applied_with_exception} with exception, {summary.rejected} rejected; "
          f"{summary.remaining} left")
    if summary.error is not None:
        error = summary.error
        text = describe(error, args.resolved_target) if isinstance(error, TerminalError) \
            else str(error)
        print(f"storedvalue terminal: sync stopped: {text}", file=sys.stderr)
        return 1
    return 1 if summary.remaining else 0


class ProgressBar:
    """A text bar on stderr, redrawn after every acknowledged batch of a long sync (one that
    needs more than one batch)."""

    def __init__(self, stream: TextIO, *, batch_size: int, width: int = 30) -> None:
        self._stream = stream
        self._batch_size = batch_size
        self._width = width
        self._drawn = False

    def __call__(self, progress: SyncProgress) -> None:
        if progress.total <= self._batch_size and not self._drawn:
            return
        filled = self._width * progress.done // max(progress.total, 1)
        bar = "#" * filled + "." * (self._width - filled)
        self._stream.write(f"\rsyncing [{bar}] {progress.done}/{progress.total} "
                           f"{progress.rate_per_s:,.0f}/s")
        self._stream.flush()
        self._drawn = True

    def finish(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()


# -- plumbing ----------------------------------------------------------------------------


def _limits(limits: OfflineRiskLimits) -> str:
    parts = []
    if limits.max_line_amount is not None:
        parts.append(f"largest line {format_money(limits.max_line_amount)}")
    if limits.max_unsynced_amount is not None:
        parts.append(f"most unsynced {format_money(limits.max_unsynced_amount)}")
    if limits.max_offline_duration is not None:
        parts.append(f"longest offline {limits.max_offline_duration}")
    return ", ".join(parts)


def _kind(kind: CardKind) -> str:
    return "gift card" if kind is CardKind.GIFT_CARD else "credit memo"


def _money(amount: str, currency: str) -> Money:
    try:
        return parse_money(amount, currency)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _sale_line(index: int, text: str) -> SaleLine:
    card_number, sep1, rest = text.partition(":")
    amount, sep2, currency = rest.partition(":")
    if not (card_number and sep1 and sep2 and currency):
        raise UsageError(f"--line {text!r}: expected CARD:AMOUNT:CURRENCY, e.g. "
                         "6012345678901234:12.50:EUR")
    return SaleLine(line_id=f"L{index}", card_number=card_number,
                    amount=_money(amount, currency))


def describe(error: TerminalError, target: str) -> str:
    """One line a person can act on, naming the reason so support can look it up."""
    if isinstance(error, CardLocked):
        until = format_moment(error.lease_expires_at) if error.lease_expires_at else "-"
        return (f"the card is locked by terminal {error.holder_terminal_id or '?'} for sale "
                f"{error.holder_transaction_id or '?'} until {until} (CARD_LOCKED)")
    if isinstance(error, OfflineNotAllowed):
        lines = "; ".join(f"{r.line_id} card {mask(r.card_number)}: "
                          f"{_WHY_OFFLINE.get(r.why, r.why)} ({r.why}{_left(r)})"
                          for r in error.refusals)
        return (f"HQ is unreachable and the sale cannot complete offline: {lines}. The sale "
                "stays open; nothing was lost")
    if isinstance(error, HandshakeFailed):
        return f"{error.message} ({error.problem.value})"
    if isinstance(error, HQUnavailable):
        return f"HQ at {target} is unreachable ({error.message})"
    if isinstance(error, Unauthenticated):
        return f"HQ refused this terminal's credential: {error.message} (UNAUTHENTICATED)"
    reason = f" ({error.reason})" if error.reason else ""
    return f"{error.message}{reason}"


def _left(refusal: OfflineRefusal) -> str:
    """What the refusing limit still allows, e.g. ", limit max_unsynced_amount: 5.00 EUR
    left"."""
    if not refusal.limit:
        return ""
    if refusal.amount_left is not None:
        return f", limit {refusal.limit}: {format_money(refusal.amount_left)} left"
    return f", limit {refusal.limit}: no time left"


def _run(args: argparse.Namespace, handler: Handler) -> int:
    target = args.hq or os.environ.get(ENV_TARGET) or DEFAULT_TARGET
    terminal_id = args.terminal_id or os.environ.get(ENV_TERMINAL_ID, "")
    credential = args.credential or os.environ.get(ENV_TOKEN, "")
    if not terminal_id or not credential:
        print(f"storedvalue terminal: give --terminal-id and --credential (or set "
              f"{ENV_TERMINAL_ID} and {ENV_TOKEN})", file=sys.stderr)
        return 2
    data_dir = args.data_dir or os.environ.get(ENV_DATA_DIR) or _default_data_dir(terminal_id)
    args.resolved_target = target
    try:
        tls = tls_files(args, cert_env=ENV_CLIENT_CERT, key_env=ENV_CLIENT_KEY)
    except ValueError as error:
        print(f"storedvalue terminal: {error}", file=sys.stderr)
        return 2
    config = TerminalConfig(
        tls=tls,
        call_timeout_s=args.timeout,
        sync_automatically=False,
        watch_parameters=False,
        probe_max_backoff_s=0.5,
        sync_batch_size=getattr(args, "batch_size", None) or TerminalConfig().sync_batch_size,
    )
    try:
        with Terminal(address=target, terminal_id=terminal_id, credential=credential,
                      data_dir=data_dir, config=config) as till:
            return handler(till, args)
    except UsageError as error:
        print(f"storedvalue terminal: {error}", file=sys.stderr)
        return 2
    except HandshakeFailed as error:  # the given files cannot be used: a usage error
        print(f"storedvalue terminal: {describe(error, target)}", file=sys.stderr)
        return 2 if error.problem is TlsProblem.CLIENT_FILES_UNUSABLE else 1
    except TerminalError as error:
        print(f"storedvalue terminal: {describe(error, target)}", file=sys.stderr)
        return 1


def _default_data_dir(terminal_id: str) -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "storedvalue" / "terminals" / terminal_id


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return number


def register(subparsers: Any, summary: str) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "terminal", help=summary,
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--hq", metavar="HOST:PORT",
                        help=f"HQ address (env {ENV_TARGET}, default {DEFAULT_TARGET})")
    parser.add_argument("--terminal-id", metavar="ID", help=f"this till (env {ENV_TERMINAL_ID})")
    parser.add_argument("--credential", metavar="TOKEN",
                        help=f"this till's bearer token (env {ENV_TOKEN})")
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help=f"this till's files (env {ENV_DATA_DIR}, default "
                             "$XDG_DATA_HOME/storedvalue/terminals/ID)")
    parser.add_argument("--timeout", type=_positive, default=1.0, metavar="SECONDS",
                        help="deadline of each call to HQ (default %(default)g)")
    add_tls_options(parser, whose="this till's (common name: its terminal id)",
                    cert_env=ENV_CLIENT_CERT, key_env=ENV_CLIENT_KEY)
    parser.set_defaults(handler=lambda args: _usage(parser))
    commands = parser.add_subparsers(dest="terminal_command", metavar="COMMAND")

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(name, help=help_text,
                                                           description=help_text)
        sub.set_defaults(handler=lambda args: _run(args, handler))
        return sub

    for name, handler, help_text in (
        ("lock", lock, "add a card to a sale: lock it at HQ"),
        ("unlock", unlock, "remove a card from a sale: release it (queued when offline)"),
    ):
        sub = command(name, handler, help_text)
        sub.add_argument("card_number", metavar="CARD")
        sub.add_argument("--transaction", required=True, metavar="SALE_ID")
    sale_parser = command("sale", sale, "lock the cards and complete the sale (offline when "
                          "HQ is unreachable and HQ's parameters allow it)")
    sale_parser.add_argument("transaction", metavar="SALE_ID")
    sale_parser.add_argument("--line", action="append", required=True,
                             metavar="CARD:AMOUNT:CURRENCY",
                             help="a stored-value tender line, e.g. 6012345678901234:12.50:EUR "
                                  "(repeat for several cards)")
    command("abandon", abandon, "abandon a sale: release its cards, reverse what HQ may have "
            "debited").add_argument("transaction", metavar="SALE_ID")
    command("sales", sales, "the open sales, or how one sale stands").add_argument(
        "transaction", nargs="?", metavar="SALE_ID")
    command("balance", balance, "a card's balance and lock").add_argument(
        "card_number", metavar="CARD")
    issue_parser = command("issue", issue, "issue a gift card or credit memo (online)")
    issue_parser.add_argument("amount", metavar="AMOUNT:CURRENCY", help="e.g. 50.00:EUR")
    issue_parser.add_argument("--kind", choices=("gift-card", "credit-memo"),
                              default="gift-card")
    issue_parser.add_argument("--card-number", metavar="CARD",
                              help="number printed on the card (default: HQ assigns one)")
    command("status", status, "connectivity, parameters version and outbox size")
    command("outbox", outbox, "list offline transactions waiting for sync")
    sync_parser = command("sync", sync, "send the outbox to HQ now")
    sync_parser.add_argument("--batch-size", type=_positive_int,
                             default=TerminalConfig().sync_batch_size, metavar="N",
                             help="transactions per batch (default %(default)s)")
    sync_parser.add_argument("--wait", type=_positive, default=5.0, metavar="SECONDS",
                             help="how long to wait for HQ to answer first "
                                  "(default %(default)g)")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2
