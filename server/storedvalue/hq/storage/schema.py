"""Bringing a database to the current schema with Alembic, from the server or the CLI.

The migrations ship inside the package (`migrations/`); `alembic.ini` at the repository root
points at the same scripts for `alembic check` and friends.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import URL

from storedvalue.hq.storage.database import WRITE_OPTION, open_engine

MIGRATIONS = Path(__file__).with_name("migrations")
# pg_advisory_lock key held while upgrading, so HQ replicas starting together take turns
# (the second finds the schema at head and does nothing). Any constant unique to us.
_UPGRADE_LOCK_KEY = 0x5356_4851_0001  # "SVHQ" 1


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
    lock (the whole upgrade runs in one `BEGIN IMMEDIATE` transaction)."""
    engine = open_engine(target, pool_size=1) if not isinstance(target, Engine) else target
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                _upgrade_under_advisory_lock(connection)
            else:
                connection.execution_options(**{WRITE_OPTION: True})
                with connection.begin():
                    _run_upgrade(connection)
    finally:
        if engine is not target:
            engine.dispose()


def _upgrade_under_advisory_lock(connection: Connection) -> None:
    # A session-level lock: it outlives the transactions below, until unlocked.
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _UPGRADE_LOCK_KEY})
    connection.commit()
    try:
        with connection.begin():
            _run_upgrade(connection)
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _UPGRADE_LOCK_KEY})
        connection.commit()


def _run_upgrade(connection: Connection) -> None:
    config = alembic_config()
    # env.py runs the migrations on this connection, inside the transaction begun here.
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
