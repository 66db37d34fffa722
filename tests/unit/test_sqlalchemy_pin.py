"""The storage leans on SQLAlchemy internals in one module, written for one range of
versions: the dependency pin and that module must name the same range."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from storedvalue.hq.storage.sqlalchemy_internals import SUPPORTED_SQLALCHEMY

ROOT = Path(__file__).resolve().parents[2]


def test_the_sqlalchemy_pin_is_the_range_the_internals_module_was_written_for() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    # SQLAlchemy is HQ's alone: pinned in the `hq` extra.
    pins = [Requirement(dep) for dep in project["project"]["optional-dependencies"]["hq"]]
    (sqlalchemy,) = [pin for pin in pins if pin.name.lower() == "sqlalchemy"]

    assert sqlalchemy.specifier == SpecifierSet(SUPPORTED_SQLALCHEMY)
    assert version("SQLAlchemy") in sqlalchemy.specifier
