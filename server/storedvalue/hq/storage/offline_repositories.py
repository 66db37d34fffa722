"""Offline transactions HQ has taken, and the exceptions kept for the back office."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime
from typing import TypeVar

from sqlalchemy import bindparam, func, insert, select, update

from storedvalue.hq.domain.offline import OfflineException, OfflineOutcome, OfflineRecord
from storedvalue.hq.domain.offline_common import CommonDebits
from storedvalue.hq.services.unit_of_work import ConcurrentUpdate
from storedvalue.hq.storage import offline_results, rows
from storedvalue.hq.storage.card_repositories import SqlRedemptionRepository
from storedvalue.hq.storage.statements import Statement, in_chunks
from storedvalue.hq.storage.tables import offline_exceptions, offline_records
from storedvalue.hq.storage.transaction import Transaction

T = TypeVar("T")

_RECORDS = Statement(
    select(offline_records).where(
        offline_records.c.terminal_id == bindparam("terminal_id"),
        offline_records.c.transaction_id.in_(bindparam("transaction_ids", expanding=True)),
    ),
    in_list="transaction_ids",
)
_SEQUENCE_OWNERS = Statement(
    select(offline_records.c.sequence_number, offline_records.c.transaction_id).where(
        offline_records.c.terminal_id == bindparam("terminal_id"),
        offline_records.c.sequence_number.in_(bindparam("sequence_numbers", expanding=True)),
    ),
    in_list="sequence_numbers",
)
_SEQUENCES_ABOVE = Statement(
    select(offline_records.c.sequence_number)
    .where(
        offline_records.c.terminal_id == bindparam("terminal_id"),
        offline_records.c.sequence_number > bindparam("mark"),
    )
    .order_by(offline_records.c.sequence_number)
)
_INSERT_RECORDS = Statement(insert(offline_records))
# add_offline_debits: records of transactions applied.
_INSERT_APPLIED_RECORDS = Statement(
    insert(offline_records), constants={"outcome": OfflineOutcome.APPLIED.value})
# (terminal_id and received_at are the same in every row: bound once.)
_DEBIT_RECORD_KEYS = ("transaction_id", "sequence_number", "fingerprint", "result_json")

_EXCEPTION_FOR_UPDATE = Statement(
    select(offline_exceptions)
    .where(offline_exceptions.c.exception_id == bindparam("exception_id"))
    .with_for_update()
)
_INSERT_EXCEPTIONS = Statement(insert(offline_exceptions))
_SAVE_EXCEPTION = Statement(
    update(offline_exceptions).where(
        offline_exceptions.c.exception_id == bindparam("key_exception_id")
    )
)
_COUNT_OPEN_FOR_CARD = Statement(
    select(func.count().label("open_count")).where(
        offline_exceptions.c.card_number == bindparam("card_number"),
        offline_exceptions.c.resolved_at.is_(None),
    )
)


def _exceptions_page(include_resolved: bool, by_terminal: bool, by_card: bool) -> Statement:
    table = offline_exceptions
    query = select(table).where(table.c.position > bindparam("after"))
    if not include_resolved:
        query = query.where(table.c.resolved_at.is_(None))
    if by_terminal:
        query = query.where(table.c.terminal_id == bindparam("terminal_id"))
    if by_card:
        query = query.where(table.c.card_number == bindparam("card_number"))
    return Statement(query.order_by(table.c.position).limit(bindparam("limit")))


# By (including resolved ones, filtering by terminal, filtering by card).
_EXCEPTIONS_PAGE = {
    flags: _exceptions_page(*flags)
    for flags in ((r, t, c) for r in (False, True) for t in (False, True) for c in (False, True))
}


class SqlOfflineRecordRepository:
    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    def get_many(
        self, terminal_id: str, transaction_ids: Collection[str]
    ) -> dict[str, OfflineRecord]:
        found: dict[str, OfflineRecord] = {}
        for chunk in in_chunks(transaction_ids):
            params = {"terminal_id": terminal_id, "transaction_ids": chunk}
            for row in self._tx.fetch(_RECORDS, params):
                found[row.transaction_id] = rows.offline_record_from_row(row)
        return found

    def sequence_owners(
        self, terminal_id: str, sequence_numbers: Collection[int]
    ) -> dict[int, str]:
        owners: dict[int, str] = {}
        for chunk in in_chunks(sequence_numbers):
            params = {"terminal_id": terminal_id, "sequence_numbers": chunk}
            for row in self._tx.fetch(_SEQUENCE_OWNERS, params):
                owners[row.sequence_number] = row.transaction_id
        return owners

    def sequences_above(self, terminal_id: str, mark: int) -> list[int]:
        params = {"terminal_id": terminal_id, "mark": mark}
        return [row.sequence_number for row in self._tx.fetch(_SEQUENCES_ABOVE, params)]

    def if_first_delivery(self, terminal_id: str, transaction_ids: Sequence[str],
                          line_ids: Sequence[str], apply: Callable[[], T | None]
                          ) -> T | None:
        # SQLite: no lookup first. The records' and the redemptions' primary keys refuse a
        # transaction or a line stored already (as they would a race): then everything
        # `apply` wrote is undone, back to the savepoint. The lookups cost more than the
        # inserts' own checks of the same keys (each a few thousand instructions a
        # transaction), and a batch is nearly always delivered for the first time.
        # PostgreSQL: the failed insert would only surface at the next read or the commit
        # (the writes are pipelined): the lookups first.
        tx = self._tx
        if not tx.is_sqlite:
            if self.get_many(terminal_id, transaction_ids) or (
                    SqlRedemptionRepository(tx).get_many(
                        {(terminal_id, txn_id, line_id)
                         for txn_id, line_id in zip(transaction_ids, line_ids, strict=True)})):
                return None
            return apply()
        writes = tx.savepoint("first_delivery")
        try:
            result = apply()
        except ConcurrentUpdate:  # a key taken: delivered before (in part)
            tx.rollback_to("first_delivery", writes)
            return None
        except BaseException:
            if tx.is_open:
                tx.rollback_to("first_delivery", writes)
            raise
        if result is None:
            tx.rollback_to("first_delivery", writes)
        else:
            tx.release("first_delivery")
        return result

    def add(self, records: Iterable[OfflineRecord]) -> None:
        self._tx.write(_INSERT_RECORDS, [rows.offline_record_values(r) for r in records])

    def add_offline_debits(self, terminal_id: str, debits: CommonDebits,
                           now: datetime) -> None:
        received = rows.to_micros(now)
        sales = debits.sales
        # The fingerprint as a bytearray: the sqlite3 module binds one as it is, but bytes
        # through its adapters (~1,800 instructions a value); the same BLOB either way.
        fingerprints = (sales.fingerprints if self._tx.dialect.name == "postgresql"
                        else map(bytearray, sales.fingerprints))
        self._tx.write_rows(_INSERT_APPLIED_RECORDS, _DEBIT_RECORD_KEYS, list(zip(
            sales.transaction_ids, sales.sequence_numbers, fingerprints,
            offline_results.dumps_applied(debits), strict=True)),
            {"terminal_id": terminal_id, "received_at": received})


class SqlOfflineExceptionRepository:
    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    def add(self, exceptions: Iterable[OfflineException]) -> None:
        self._tx.write(_INSERT_EXCEPTIONS, [rows.exception_values(e) for e in exceptions])

    def get_for_update(self, exception_id: str) -> OfflineException | None:
        row = self._tx.fetch_first(_EXCEPTION_FOR_UPDATE, {"exception_id": exception_id})
        return None if row is None else rows.exception_from_row(row)

    def save(self, exception: OfflineException) -> None:
        values = rows.exception_state_values(exception)
        values["key_exception_id"] = exception.exception_id
        self._tx.write(_SAVE_EXCEPTION, [values])

    def count_open_for_card(self, card_number: str) -> int:
        row = self._tx.fetch_first(_COUNT_OPEN_FOR_CARD, {"card_number": card_number})
        return 0 if row is None else int(row.open_count)

    def list(
        self,
        *,
        include_resolved: bool,
        terminal_id: str | None,
        card_number: str | None,
        after_position: int,
        limit: int,
    ) -> list[tuple[int, OfflineException]]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        statement = _EXCEPTIONS_PAGE[
            (include_resolved, terminal_id is not None, card_number is not None)
        ]
        params = {
            "after": after_position,
            "terminal_id": terminal_id,
            "card_number": card_number,
            "limit": limit,
        }
        return [(row.position, rows.exception_from_row(row))
                for row in self._tx.fetch(statement, params)]
