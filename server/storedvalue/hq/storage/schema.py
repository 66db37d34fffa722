"""Bringing a database to the current schema with Alembic, from the server or the CLI.

The migrations ship inside the package (`migrations/`); `alembic.ini` at the repository root
points at the same scripts for `alembic check` and friends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import URL

from storedvalue.hq.storage.engines import WRITE_OPTION, open_engine

MIGRATIONS = Path(__file__).with_name("migrations")
# pg_advisory_lock key held while upgrading, so HQ replicas starting together take turns
# (the second finds the schema at head and does nothing). Any constant unique to us.
_UPGRADE_LOCK_KEY = 0x5356_4851_0001  # "SVHQ" 1
# Alembic runs migrations through module-level proxies (alembic.context, alembic.op), so one
# thread at a time per process; the database-level locks above order the processes.
_ALEMBIC_IN_USE = threading.Lock()


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade_to_head(target: Engine | str | URL) -> None:
    """Create or upgrade the schema to the newest migration. Safe when several processes
    call it at once: PostgreSQL serializes them with an advisory lock, SQLite with its write
    lock (the whole upgrade runs in one `BEGIN IMMEDIATE` transaction). Threads of one
    process take turns too: Alembic's `context` and `op` are process-wide."""
    engine = open_engine(target, pool_size=1) if not isinstance(target, Engine) else target
    try:
        with _ALEMBIC_IN_USE, engine.connect() as connection, migration_lock(connection):
            connection.execution_options(**{WRITE_OPTION: True})
            with connection.begin():
                config = alembic_config()
                # env.py runs the migrations on this connection, in the transaction begun here.
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
    finally:
        if engine is not target:
            engine.dispose()


@contextmanager
def migration_lock(connection: Connection) -> Iterator[None]:
    """On PostgreSQL, a session-level advisory lock held across the migration's transaction,
    so HQ replicas starting together take turns (the later ones find the schema at head).
    Elsewhere nothing: SQLite's write lock already serializes upgrades."""
    if connection.dialect.name != "postgresql":
        yield
        return
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _UPGRADE_LOCK_KEY})
    connection.commit()
    try:
        yield
    finally:
        if connection.in_transaction():
            connection.rollback()
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _UPGRADE_LOCK_KEY})
        connection.commit()
