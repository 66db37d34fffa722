"""What ``storedvalue admin`` shows a person: the terminals, the locks and the offline
exceptions as plain-text tables (``--json`` gives scripts the messages instead).

Money is shown in major units with its currency, times as UTC minutes with their age
("2026-12-01 14:05Z, 2h 10m ago"), so a glance tells which till has been offline longest,
which lock is oldest and what the exceptions are about.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2

from storedvalue.terminal import Money
from storedvalue.v1 import back_office_service_pb2 as pb
from storedvalue.v1 import common_pb2, offline_pb2, terminal_status_pb2

from ._display import format_money

_KINDS = {
    common_pb2.CARD_KIND_GIFT_CARD: "gift card",
    common_pb2.CARD_KIND_CREDIT_MEMO: "credit memo",
}


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded to their widest cell, the last one left ragged."""
    rows = [list(row) for row in rows]
    widths = [max([len(headers[i])] + [len(row[i]) for row in rows])
              for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = [cell.ljust(widths[i]) for i, cell in enumerate(cells[:-1])]
        return "  ".join([*padded, cells[-1]]).rstrip()

    return "\n".join([line(headers), *[line(row) for row in rows]])


def money(amount: common_pb2.Money) -> str:
    return format_money(Money(amount.amount_minor, amount.currency_code or "XXX"))


def moment(ts: timestamp_pb2.Timestamp, now: datetime) -> str:
    """"2026-12-01 14:05Z, 2h 10m ago" (or "in 3h" for a moment ahead)."""
    when = ts.ToDatetime(tzinfo=UTC)
    age = now - when
    relative = f"{span(age)} ago" if age >= timedelta(0) else f"in {span(-age)}"
    return f"{when:%Y-%m-%d %H:%M}Z, {relative}"


def span(length: timedelta) -> str:
    """A duration as a person reads it: "45s", "12m", "2h 10m", "3d 4h"."""
    seconds = int(length.total_seconds())
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m"
    return f"{seconds}s"


def unsynced(amounts: Iterable[offline_pb2.UnsyncedAmount]) -> str:
    parts = [f"{_KINDS.get(held.card_kind, 'card')} {money(held.amount)}" for held in amounts]
    return ", ".join(parts) if parts else "nothing"


# -- terminals -----------------------------------------------------------------------------


def terminals_table(terminals: Sequence[pb.Terminal], now: datetime) -> str:
    if not terminals:
        return "no terminal registered"
    rows = [
        [
            terminal.terminal_id,
            terminal.store_id or "-",
            _link(terminal, now),
            _exposure(terminal, now),
            str(terminal.sync_status.highest_contiguous_sequence),
            _gaps(terminal.sync_status.gaps),
        ]
        for terminal in terminals
    ]
    return table(["TERMINAL", "STORE", "LINK", "UNSYNCED (last report)", "SYNCED THROUGH",
                  "GAPS"], rows)


def _link(terminal: pb.Terminal, now: datetime) -> str:
    if terminal.HasField("revoked_at"):
        return f"REVOKED {moment(terminal.revoked_at, now)}"
    link = terminal.link
    if link.state == terminal_status_pb2.LINK_STATE_UNSPECIFIED:
        return "never reported"
    state = "online" if link.state == terminal_status_pb2.LINK_STATE_ONLINE else "offline"
    return f"{state} since {moment(link.since, now)}"


def _exposure(terminal: pb.Terminal, now: datetime) -> str:
    if not terminal.HasField("last_report"):
        return "unknown"
    outbox = terminal.last_report.outbox
    if not outbox.transaction_count:
        return "nothing"
    oldest = (f", oldest {span(now - outbox.oldest_completed_at.ToDatetime(tzinfo=UTC))}"
              if outbox.HasField("oldest_completed_at") else "")
    return f"{outbox.transaction_count} txn: {unsynced(outbox.unsynced_amounts)}{oldest}"


def _gaps(gaps: Sequence[offline_pb2.SequenceGap]) -> str:
    if not gaps:
        return "-"
    return ", ".join(
        str(gap.first_missing) if gap.first_missing == gap.last_missing
        else f"{gap.first_missing}-{gap.last_missing}"
        for gap in gaps
    )


# -- locks ---------------------------------------------------------------------------------


def locks_by_age(locks: Iterable[common_pb2.Lock]) -> list[common_pb2.Lock]:
    """Oldest first (the stuck ones), then by card number."""
    return sorted(locks, key=lambda lock: (lock.acquired_at.ToNanoseconds(), lock.card_number))


def locks_table(locks: Sequence[common_pb2.Lock], now: datetime) -> str:
    if not locks:
        return "no card is locked"
    rows = [
        [
            lock.card_number,
            f"{lock.terminal_id} / sale {lock.transaction_id}",
            span(now - lock.acquired_at.ToDatetime(tzinfo=UTC)),
            _lease(lock.lease_expires_at, now),
            str(lock.fencing_token),
        ]
        for lock in locks
    ]
    return table(["CARD", "HOLDER (terminal / sale)", "AGE", "LEASE", "TOKEN"], rows)


def _lease(ends: timestamp_pb2.Timestamp, now: datetime) -> str:
    left = ends.ToDatetime(tzinfo=UTC) - now
    return f"ends in {span(left)}" if left > timedelta(0) else f"ended {span(-left)} ago"


# -- offline exceptions --------------------------------------------------------------------


def exception_groups(exceptions: Iterable[pb.OfflineException]
                     ) -> list[tuple[str, list[pb.OfflineException]]]:
    """By kind (in the contract's order), each oldest first."""
    groups: dict[pb.OfflineExceptionKind.ValueType, list[pb.OfflineException]] = {}
    for exc in exceptions:
        groups.setdefault(exc.kind, []).append(exc)
    return [
        (pb.OfflineExceptionKind.Name(kind).removeprefix("OFFLINE_EXCEPTION_KIND_"),
         sorted(groups[kind], key=lambda exc: exc.created_at.ToNanoseconds()))
        for kind in sorted(groups)
    ]


def exceptions_text(groups: Sequence[tuple[str, Sequence[pb.OfflineException]]],
                    now: datetime) -> str:
    if not groups:
        return "no offline exception"
    parts = []
    for kind, exceptions in groups:
        open_count = sum(1 for exc in exceptions if not exc.HasField("resolved_at"))
        rows = [
            [
                exc.exception_id,
                exc.terminal_id,
                f"{exc.transaction_id}/{exc.line_id}" if exc.line_id else exc.transaction_id,
                exc.card_number or "-",
                money(exc.amount) if exc.HasField("amount") else "-",
                exc.reason,
                span(now - exc.created_at.ToDatetime(tzinfo=UTC)),
                "open" if not exc.HasField("resolved_at")
                else f"resolved by {exc.resolved_by}",
            ]
            for exc in exceptions
        ]
        body = table(["ID", "TERMINAL", "SALE/LINE", "CARD", "AMOUNT", "REASON", "AGE",
                      "STATE"], rows)
        details = "\n".join(f"  {exc.exception_id}: {exc.message}" for exc in exceptions)
        parts.append(f"{kind}: {len(exceptions)} ({open_count} open)\n{body}\n{details}")
    return "\n\n".join(parts)
