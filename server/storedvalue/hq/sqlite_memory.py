"""SQLite's memory statistics, switched off for the whole HQ process.

SQLite as distributions build it (Debian's libsqlite3: SQLITE_THREADSAFE=1, the serialized
mode, and memory statistics on by default) counts every allocation it makes under one global
mutex: each sqlite3_malloc and sqlite3_free takes and releases it, about 90 times for a synced
offline transaction. HQ never reads those statistics. `sqlite3_config(SQLITE_CONFIG_MEMSTATUS,
0)` stops the counting; the threading mode stays serialized (each connection's own mutex is
what makes a statement freed by the garbage collector on one thread safe while another thread
steps that connection with the GIL released). What stops working: sqlite3_memory_used,
sqlite3_status64's memory figures and the heap limits, none of which Python's sqlite3 exposes
or HQ uses.

sqlite3_config works only before SQLite is initialized, and Python's sqlite3 module
initializes it as it is imported (the _sqlite3 extension calls sqlite3_initialize). So the
call goes through ctypes to the library of the _sqlite3 extension found but not imported:
looking a symbol up in the extension's own file reaches the libsqlite3 it links to (or the
SQLite built into it, when its symbols are exported), the very library the sqlite3 module
then uses. Where that cannot be done (sqlite3 already imported, no such symbol, no SQLite in
this Python) nothing changes: SQLite keeps counting, correctly, a little slower.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging

log = logging.getLogger(__name__)

SQLITE_OK = 0
SQLITE_MISUSE = 21
SQLITE_CONFIG_MEMSTATUS = 9


def disable_memory_statistics() -> bool:
    """Turn SQLite's memory statistics off for this process, before the first `import
    sqlite3` (anywhere in the process). Returns whether they are now off; when not, the
    reason is logged at debug level and SQLite is left as it was."""
    spec = importlib.util.find_spec("_sqlite3")
    if spec is None or spec.origin is None:
        log.debug("SQLite memory statistics left on: this Python has no sqlite3 module")
        return False
    try:
        # A module built into the interpreter has origin "built-in": its symbols are the
        # program's own (CDLL(None)).
        library = ctypes.CDLL(spec.origin if spec.has_location else None)
        config = library.sqlite3_config
    except (OSError, AttributeError) as error:
        log.debug("SQLite memory statistics left on: sqlite3_config not found (%s)", error)
        return False
    config.restype = ctypes.c_int
    # int sqlite3_config(int, ...): the option is the one fixed argument, the value variadic
    # (ctypes passes arguments beyond argtypes as variadic ones).
    config.argtypes = [ctypes.c_int]
    result = config(SQLITE_CONFIG_MEMSTATUS, ctypes.c_int(0))
    if result == SQLITE_MISUSE:
        log.debug("SQLite memory statistics left on: SQLite was already initialized")
        return False
    if result != SQLITE_OK:
        log.debug("SQLite memory statistics left on: sqlite3_config returned %d", result)
        return False
    return True
