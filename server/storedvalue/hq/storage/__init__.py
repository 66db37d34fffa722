"""HQ storage on SQLAlchemy 2 Core: SQLite (the embedded default) and PostgreSQL.

    upgrade_to_head(url)              # create or migrate the schema (Alembic)
    storage = SqlStorage.from_url(url)
    with storage.unit_of_work(write=True) as uow: ...; uow.commit()
    storage.close()
"""

from storedvalue.hq.storage.engines import open_engine
from storedvalue.hq.storage.schema import upgrade_to_head
from storedvalue.hq.storage.sqlalchemy_storage import SqlStorage, SqlUnitOfWork

__all__ = ["SqlStorage", "SqlUnitOfWork", "open_engine", "upgrade_to_head"]
