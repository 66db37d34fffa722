"""Idempotent requests' first results, parameter versions and terminals."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import bindparam, func, insert, select, update

from storedvalue.hq.domain.parameters import GLOBAL, ParameterSet
from storedvalue.hq.domain.terminal_reports import ReceivedReport
from storedvalue.hq.domain.terminals import Terminal
from storedvalue.hq.services.unit_of_work import StoredResponse
from storedvalue.hq.storage import rows
from storedvalue.hq.storage.statements import Statement, in_chunks
from storedvalue.hq.storage.tables import parameters, request_log, terminal_reports, terminals
from storedvalue.hq.storage.transaction import Transaction

# Listeners (other HQ replicas on PostgreSQL) hear the new version once it commits.
PARAMETERS_CHANNEL = "storedvalue_parameters"
# ... and the terminal revoked or moved to another store (its id), once that commits.
TERMINALS_CHANNEL = "storedvalue_terminals"

_REQUEST = Statement(
    select(request_log).where(
        request_log.c.caller == bindparam("caller"),
        request_log.c.request_id == bindparam("request_id"),
    )
)
_INSERT_REQUEST = Statement(insert(request_log))

_LATEST_VERSION = Statement(select(func.coalesce(func.max(parameters.c.version), 0)))
_SCOPE_AS_OF = Statement(
    select(parameters)
    .where(parameters.c.store_id == bindparam("store_id"),
           parameters.c.version <= bindparam("version"))
    .order_by(parameters.c.version.desc())
    .limit(1)
)
_NEWEST_PER_STORE = (
    select(parameters.c.store_id, func.max(parameters.c.version).label("version"))
    .where(parameters.c.store_id != GLOBAL)
    .group_by(parameters.c.store_id)
    .subquery()
)
_LATEST_OVERRIDES = Statement(
    select(parameters)
    .join(_NEWEST_PER_STORE, parameters.c.version == _NEWEST_PER_STORE.c.version)
    .order_by(parameters.c.store_id)
)
_CHANGES_PAGE = Statement(
    select(parameters)
    .where(parameters.c.version < bindparam("before"))
    .order_by(parameters.c.version.desc())
    .limit(bindparam("limit"))
)
_SCOPE_CHANGES_PAGE = Statement(
    select(parameters)
    .where(parameters.c.store_id == bindparam("store_id"),
           parameters.c.version < bindparam("before"))
    .order_by(parameters.c.version.desc())
    .limit(bindparam("limit"))
)
_INSERT_PARAMETERS = Statement(insert(parameters))
_NO_BOUND = 2**62  # versions stay far below

_TERMINAL_SELECT = select(terminals).where(terminals.c.terminal_id == bindparam("terminal_id"))
_TERMINAL = Statement(_TERMINAL_SELECT)
_TERMINAL_FOR_UPDATE = Statement(_TERMINAL_SELECT.with_for_update())
_TERMINAL_BY_TOKEN = Statement(
    select(terminals).where(terminals.c.token_hash == bindparam("token_hash"))
)
_TERMINALS_PAGE = Statement(
    select(terminals)
    .where(terminals.c.terminal_id > bindparam("after"))
    .order_by(terminals.c.terminal_id)
    .limit(bindparam("limit"))
)
_INSERT_TERMINAL = Statement(insert(terminals))
_SAVE_TERMINAL = Statement(
    update(terminals).where(terminals.c.terminal_id == bindparam("key_terminal_id"))
)


# Rows in the order of the INSERT's parameters (the table's columns): written as tuples.
_REQUEST_KEYS = ("caller", "request_id", "operation", "fingerprint", "result_json",
                 "created_at")


class SqlRequestLog:
    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    def get(self, caller: str, request_id: str) -> StoredResponse | None:
        row = self._tx.fetch_first(_REQUEST, {"caller": caller, "request_id": request_id})
        if row is None:
            return None
        return StoredResponse(
            caller=row.caller,
            request_id=row.request_id,
            operation=row.operation,
            fingerprint=bytes(row.fingerprint),
            result_json=row.result_json,
            created_at=rows.from_micros(row.created_at),
        )

    def add(self, response: StoredResponse) -> None:
        # A taken id surfaces where the append is sent (Transaction.append).
        self._tx.append(_INSERT_REQUEST, _REQUEST_KEYS, [(
            response.caller, response.request_id, response.operation, response.fingerprint,
            response.result_json, rows.to_micros(response.created_at),
        )])


class SqlParametersRepository:
    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    def latest_version(self) -> int:
        row = self._tx.fetch_first(_LATEST_VERSION, {})
        return int(row[0]) if row is not None else 0

    def as_of(self, store_id: str, version: int) -> ParameterSet | None:
        row = self._tx.fetch_first(_SCOPE_AS_OF, {"store_id": store_id, "version": version})
        return None if row is None else rows.parameter_set_from_row(row)

    def latest(self, store_id: str) -> ParameterSet | None:
        return self.as_of(store_id, _NO_BOUND)

    def latest_overrides(self) -> list[ParameterSet]:
        return [rows.parameter_set_from_row(row)
                for row in self._tx.fetch(_LATEST_OVERRIDES, {})]

    def add(self, parameter_set: ParameterSet) -> None:
        self._tx.write(_INSERT_PARAMETERS, [rows.parameter_set_values(parameter_set)])
        self._tx.notify(PARAMETERS_CHANNEL, str(parameter_set.version))

    def list(self, *, store_id: str | None, before_version: int, limit: int
             ) -> list[ParameterSet]:
        params: dict[str, object] = {
            "before": before_version if before_version > 0 else _NO_BOUND, "limit": limit,
        }
        statement = _CHANGES_PAGE
        if store_id is not None:
            params["store_id"] = store_id
            statement = _SCOPE_CHANGES_PAGE
        return [rows.parameter_set_from_row(row) for row in self._tx.fetch(statement, params)]


class SqlTerminalRepository:
    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    def get(self, terminal_id: str) -> Terminal | None:
        row = self._tx.fetch_first(_TERMINAL, {"terminal_id": terminal_id})
        return None if row is None else rows.terminal_from_row(row)

    def get_for_update(self, terminal_id: str) -> Terminal | None:
        row = self._tx.fetch_first(_TERMINAL_FOR_UPDATE, {"terminal_id": terminal_id})
        return None if row is None else rows.terminal_from_row(row)

    def get_by_token_hash(self, token_hash: str) -> Terminal | None:
        row = self._tx.fetch_first(_TERMINAL_BY_TOKEN, {"token_hash": token_hash})
        return None if row is None else rows.terminal_from_row(row)

    def add(self, terminal: Terminal) -> None:
        self._tx.write(_INSERT_TERMINAL, [rows.terminal_values(terminal)])

    def save(self, terminal: Terminal) -> None:
        values = rows.terminal_state_values(terminal)
        values["key_terminal_id"] = terminal.terminal_id
        self._tx.write(_SAVE_TERMINAL, [values])

    def announce(self, terminal_id: str) -> None:
        self._tx.notify(TERMINALS_CHANNEL, terminal_id)

    def list(self, *, after_terminal_id: str, limit: int) -> list[Terminal]:
        params = {"after": after_terminal_id, "limit": limit}
        return [rows.terminal_from_row(row) for row in self._tx.fetch(_TERMINALS_PAGE, params)]


_REPORTS = Statement(
    select(terminal_reports).where(
        terminal_reports.c.terminal_id.in_(bindparam("terminal_ids", expanding=True))
    ),
    in_list="terminal_ids",
)
_REPORT_FOR_UPDATE = Statement(
    select(terminal_reports.c.reported_at)
    .where(terminal_reports.c.terminal_id == bindparam("terminal_id"))
    .with_for_update()
)
_INSERT_REPORT = Statement(insert(terminal_reports))
_SAVE_REPORT = Statement(
    update(terminal_reports).where(
        terminal_reports.c.terminal_id == bindparam("key_terminal_id")
    )
)


class SqlTerminalReportRepository:
    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    def get_many(self, terminal_ids: Collection[str]) -> dict[str, ReceivedReport]:
        found: dict[str, ReceivedReport] = {}
        for chunk in in_chunks(terminal_ids):
            for row in self._tx.fetch(_REPORTS, {"terminal_ids": chunk}):
                found[row.terminal_id] = rows.report_from_row(row)
        return found

    def save(self, terminal_id: str, received: ReceivedReport) -> bool:
        values = rows.report_values(terminal_id, received)
        held = self._tx.fetch_first(_REPORT_FOR_UPDATE, {"terminal_id": terminal_id})
        if held is None:
            self._tx.write(_INSERT_REPORT, [values])
            return True
        if held.reported_at > values["reported_at"]:
            return False  # an older report overtaken by a newer one
        values["key_terminal_id"] = values.pop("terminal_id")
        self._tx.write(_SAVE_REPORT, [values])
        return True
