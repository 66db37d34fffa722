"""Storage backends for integration tests: every test asking for `storage` runs once per
backend (the in-memory fake, a SQLite file, SQLite memory, PostgreSQL), each starting from
an empty database built by the real migrations.

PostgreSQL runs when STOREDVALUE_TEST_POSTGRES_URL is set; each test gets its own schema
(dropped afterwards), so tests never see each other's rows.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeStorage
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from storedvalue.hq.services.unit_of_work import Storage
from storedvalue.hq.storage import SqlStorage, upgrade_to_head

POSTGRES_ENV = "STOREDVALUE_TEST_POSTGRES_URL"
SQL_BACKENDS = [
    "sqlite-file",
    "sqlite-memory",
    pytest.param("postgresql", marks=pytest.mark.postgres),
]


def postgres_base_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    return url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL whose connections work in a fresh, empty schema of their own."""
    base = postgres_base_url()
    schema = f"sv_test_{secrets.token_hex(6)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


def sql_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite-file":
        return f"sqlite:///{tmp_path / 'hq.sqlite3'}"
    if backend == "sqlite-memory":
        return "sqlite://"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(params=SQL_BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each SQL backend (no schema yet; SQLite memory: see sql_storage,
    a memory URL opens a new database per engine)."""
    return sql_url(str(request.param), tmp_path, request)


@pytest.fixture(params=SQL_BACKENDS)
def sql_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStorage]:
    storage = SqlStorage.from_url(sql_url(str(request.param), tmp_path, request))
    try:
        upgrade_to_head(storage.engine)
        yield storage
    finally:
        storage.close()


@pytest.fixture(params=["fake", *SQL_BACKENDS])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """An empty database on every backend, schema at head."""
    if request.param == "fake":
        yield FakeStorage()
        return
    sql = SqlStorage.from_url(sql_url(str(request.param), tmp_path, request))
    try:
        upgrade_to_head(sql.engine)
        yield sql
    finally:
        sql.close()
