"""Reading an HQ's database from outside the HQ process, for the property-based tests: has
anything changed since, and does every card's journal still sum to its balance."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import psycopg
from psycopg import sql

TABLES = ["cards", "lock_history", "journal", "redemptions", "request_log", "offline_records",
          "offline_exceptions", "parameters", "terminals"]
UNBALANCED_CARDS = (
    "SELECT c.card_number, c.balance_minor, COALESCE(SUM(j.amount_minor), 0) "
    "FROM cards c LEFT JOIN journal j ON j.card_number = c.card_number "
    "GROUP BY c.card_number, c.balance_minor "
    "HAVING c.balance_minor <> COALESCE(SUM(j.amount_minor), 0)"
)


class DatabaseProbe(Protocol):
    def version(self) -> object:
        """Equal values before and after a call mean the call changed nothing."""
        ...

    def unbalanced_cards(self) -> list[tuple[str, int, int]]:
        """Cards whose journal does not sum to their balance (there must be none)."""
        ...


class SqliteProbe:
    """SQLite's data_version changes whenever another connection commits a change."""

    def __init__(self, reader: sqlite3.Connection) -> None:
        self._reader = reader

    def version(self) -> object:
        return self._reader.execute("PRAGMA data_version").fetchone()[0]

    def unbalanced_cards(self) -> list[tuple[str, int, int]]:
        return list(self._reader.execute(UNBALANCED_CARDS).fetchall())


class PostgresProbe:
    """A digest of every row of HQ's tables (PostgreSQL has no cheap change counter)."""

    _DIGEST = sql.SQL("SELECT md5(string_agg(d, '' ORDER BY d)) FROM ({}) digests").format(
        sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {name} || md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), "
                    "'')) AS d FROM {table} t").format(name=sql.Literal(table),
                                                      table=sql.Identifier(table))
            for table in TABLES
        )
    )

    def __init__(self, connection: psycopg.Connection[tuple[object, ...]]) -> None:
        self._connection = connection

    def version(self) -> object:
        row = self._connection.execute(self._DIGEST).fetchone()
        return None if row is None else row[0]

    def unbalanced_cards(self) -> list[tuple[str, int, int]]:
        rows = self._connection.execute(UNBALANCED_CARDS.encode()).fetchall()
        return [(str(r[0]), int(str(r[1])), int(str(r[2]))) for r in rows]


@contextmanager
def sqlite_probe(database: Path) -> Iterator[SqliteProbe]:
    # Autocommit, read-only: every statement sees what HQ has committed by then.
    reader = sqlite3.connect(f"file:{database}?mode=ro", uri=True, isolation_level=None)
    try:
        yield SqliteProbe(reader)
    finally:
        reader.close()


@contextmanager
def postgres_probe(conninfo: str) -> Iterator[PostgresProbe]:
    with psycopg.connect(conninfo, autocommit=True) as connection:
        yield PostgresProbe(connection)
