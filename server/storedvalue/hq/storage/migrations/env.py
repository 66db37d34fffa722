"""Alembic environment for the HQ schema.

Programmatic runs (`upgrade_to_head`) hand over an open connection in
`config.attributes["connection"]`. The `alembic` command line (from the repository root)
connects to $STOREDVALUE_DATABASE_URL, or to a SQLite file in the temporary directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from alembic import context
from sqlalchemy import Connection

from storedvalue.hq.storage.engines import WRITE_OPTION, open_engine
from storedvalue.hq.storage.schema import migration_lock
from storedvalue.hq.storage.tables import METADATA

config = context.config


def database_url() -> str:
    url = os.environ.get("STOREDVALUE_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{Path(tempfile.gettempdir()) / 'storedvalue-alembic.sqlite3'}"


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=METADATA,
        compare_type=True,
        # We begin SQLite transactions ourselves, so DDL is transactional there too: a
        # failed upgrade leaves nothing half-done.
        transactional_ddl=True,
        # SQLite alters tables by copying them; batch mode makes later migrations do that.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(url=database_url(), target_metadata=METADATA, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        run_on(given)
        return
    engine = open_engine(database_url(), pool_size=1)
    try:
        with engine.connect() as connection, migration_lock(connection):
            connection.execution_options(**{WRITE_OPTION: True})
            run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
