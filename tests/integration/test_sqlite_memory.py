"""SQLite's memory statistics off for HQ's process (storedvalue.hq.sqlite_memory): each case
runs in a fresh interpreter, since the setting is process-wide and only takes before SQLite
is initialized (which this test process did long ago).

Whether SQLite counts is read from sqlite3_memory_used(): with the statistics off it stays 0
however much SQLite allocates; with them on, any open connection makes it positive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="sqlite3_config is reached through the _sqlite3 extension's file (ELF symbol lookup)",
)

# queried(url): opens an HQ engine on a SQLite file, writes and reads some rows through it,
# and returns what sqlite3_memory_used() says then. Nothing that loads SQLite is imported
# before a script calls it.
_QUERIES = """
import ctypes, importlib.util, json

def memory_used():
    library = ctypes.CDLL(importlib.util.find_spec("_sqlite3").origin)
    library.sqlite3_memory_used.restype = ctypes.c_int64
    return library.sqlite3_memory_used()

def queried(url):
    from sqlalchemy import text
    from storedvalue.hq.storage.engines import open_engine

    engine = open_engine(url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (n INTEGER PRIMARY KEY, s TEXT)"))
        connection.execute(text("INSERT INTO t VALUES (:n, :s)"),
                           [{"n": n, "s": "x" * n} for n in range(500)])
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT count(*), sum(length(s)) FROM t")).one()
    used = memory_used()
    engine.dispose()
    return {"rows": list(rows), "memory_used": used}
"""


def _run(script: str, *args: str) -> dict[str, object]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("STOREDVALUE_")}
    done = subprocess.run([sys.executable, "-c", _QUERIES + textwrap.dedent(script), *args],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_a_fresh_process_counts_nothing_once_statistics_are_off(tmp_path: Path) -> None:
    result = _run("""
        import sys
        from storedvalue.hq.sqlite_memory import disable_memory_statistics
        off = disable_memory_statistics()
        print(json.dumps({"off": off, **queried(sys.argv[1])}))
        """, f"sqlite:///{tmp_path / 'hq.sqlite3'}")
    assert result == {"off": True, "rows": [500, sum(range(500))], "memory_used": 0}


def test_without_it_sqlite_counts(tmp_path: Path) -> None:
    """The control: the same queries with SQLite as it comes do show memory in use."""
    result = _run("""
        import sys
        print(json.dumps(queried(sys.argv[1])))
        """, f"sqlite:///{tmp_path / 'hq.sqlite3'}")
    assert result["rows"] == [500, sum(range(500))]
    assert isinstance(result["memory_used"], int) and result["memory_used"] > 0


def test_too_late_once_sqlite3_is_imported(tmp_path: Path) -> None:
    """Python's sqlite3 module initializes SQLite as it is imported: the call then changes
    nothing, says why at debug level, and SQLite keeps counting."""
    result = _run("""
        import logging, sqlite3, sys
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
        from storedvalue.hq.sqlite_memory import disable_memory_statistics
        off = disable_memory_statistics()
        print(json.dumps({"off": off, **queried(sys.argv[1])}))
        """, f"sqlite:///{tmp_path / 'hq.sqlite3'}")
    assert result["off"] is False
    assert isinstance(result["memory_used"], int) and result["memory_used"] > 0


def test_storedvalue_serve_turns_them_off_before_hq_loads_sqlite(tmp_path: Path) -> None:
    """`storedvalue serve` as the CLI runs it, with HQ's process module replaced by a probe
    that runs queries on the configured database where HQ would start serving: everything
    the CLI imports on its way there (HQ's configuration, the check for the hq extra) comes
    after the setting."""
    database = tmp_path / "hq.sqlite3"
    result = _run("""
        import sys, types
        from storedvalue.cli import main

        def serve(config):
            print(json.dumps(queried(config.database_url)))
            return 0

        sys.modules["storedvalue.hq.process"] = types.SimpleNamespace(serve=serve)
        code = main(["serve", "--listen", "127.0.0.1:0", "--database-url", sys.argv[1]])
        assert code == 0, code
        """, f"sqlite:///{database}")
    assert result == {"rows": [500, sum(range(500))], "memory_used": 0}


def test_a_spawned_worker_configures_sqlite_before_loading_it() -> None:
    """A `serve --processes` worker is spawned: the child imports its target's module and
    unpickles the target's arguments (HQ's configuration) before the target runs. None of
    that may load SQLite, or the worker could not switch the statistics off."""
    done = subprocess.run(
        [sys.executable, "-c",
         "import sys, pickle\n"
         "from storedvalue.hq.config import HQConfig\n"
         "from storedvalue.hq.worker_entry import worker_main\n"
         "pickle.loads(pickle.dumps((worker_main, HQConfig())))\n"
         "print('_sqlite3' in sys.modules)\n"],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
