"""Idempotent requests' first results, parameter versions and terminals."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import bindparam, insert, select, update

from storedvalue.hq.domain.parameters import Parameters
from storedvalue.hq.domain.terminals import Terminal
from storedvalue.hq.services.unit_of_work import StoredResponse
from storedvalue.hq.storage import rows
from storedvalue.hq.storage.statements import Statement, in_chunks
from storedvalue.hq.storage.tables import parameters, request_log, terminals
from storedvalue.hq.storage.transaction import Transaction

# Listeners (other HQ replicas on PostgreSQL) hear the new version once it commits.
PARAMETERS_CHANNEL = "storedvalue_parameters"

_REQUEST = Statement(
    select(request_log).where(
        request_log.c.caller == bindparam("caller"),
        request_log.c.request_id == bindparam("request_id"),
    )
)
_INSERT_REQUEST = Statement(insert(request_log))

_CURRENT_PARAMETERS = Statement(
    select(parameters).order_by(parameters.c.version.desc()).limit(1)
)
_PARAMETER_VERSIONS = Statement(
    select(parameters).where(parameters.c.version.in_(bindparam("versions", expanding=True))),
    in_list="versions",
)
_PARAMETERS_PAGE = Statement(
    select(parameters)
    .where(parameters.c.version < bindparam("before"))
    .order_by(parameters.c.version.desc())
    .limit(bindparam("limit"))
)
_INSERT_PARAMETERS = Statement(insert(parameters))

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
        self._tx.write(
            _INSERT_REQUEST,
            [{
                "caller": response.caller,
                "request_id": response.request_id,
                "operation": response.operation,
                "fingerprint": response.fingerprint,
                "result_json": response.result_json,
                "created_at": rows.to_micros(response.created_at),
            }],
        )


class SqlParametersRepository:
    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    def current(self) -> Parameters | None:
        row = self._tx.fetch_first(_CURRENT_PARAMETERS, {})
        return None if row is None else rows.parameters_from_row(row)

    def get_versions(self, versions: Collection[int]) -> dict[int, Parameters]:
        found: dict[int, Parameters] = {}
        for chunk in in_chunks(versions):
            for row in self._tx.fetch(_PARAMETER_VERSIONS, {"versions": chunk}):
                found[row.version] = rows.parameters_from_row(row)
        return found

    def add(self, parameters: Parameters) -> None:
        self._tx.write(_INSERT_PARAMETERS, [rows.parameters_values(parameters)])
        self._tx.notify(PARAMETERS_CHANNEL, str(parameters.version))

    def list(self, *, before_version: int, limit: int) -> list[Parameters]:
        # 0: no bound; versions are far below 2**62.
        params = {"before": before_version if before_version > 0 else 2**62, "limit": limit}
        return [rows.parameters_from_row(row) for row in self._tx.fetch(_PARAMETERS_PAGE, params)]


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

    def list(self, *, after_terminal_id: str, limit: int) -> list[Terminal]:
        params = {"after": after_terminal_id, "limit": limit}
        return [rows.terminal_from_row(row) for row in self._tx.fetch(_TERMINALS_PAGE, params)]
