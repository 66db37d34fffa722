"""Connected tills as a store runs them: one process holding ``len(tills)`` instances of the
public terminal library, each with its own channel, credential and data directory, each
following WatchParameters. A change counts as arrived at a till when the library applied it
(saved on disk and told its listeners).

Same protocol as watch_streams.py: spec ``{"addresses", "tills": [{"terminal_id", "token"}],
"data_dir", "initial_version", "ready_timeout_s"}``, a ``ready`` reply, then one reply per
``{"version", "timeout_s"}`` line with the latest arrival (``time.monotonic()``).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import Any

from children import parse_command, read_spec, reply

from storedvalue.terminal import Parameters, Terminal, TerminalConfig

CONFIG = TerminalConfig(sync_automatically=False)


class Arrivals:
    """When each till applied each version."""

    def __init__(self, count: int) -> None:
        self._lock = threading.Lock()
        self._seen: list[list[tuple[int, float]]] = [[] for _ in range(count)]

    def listener(self, index: int) -> Any:
        def applied(parameters: Parameters) -> None:
            at = time.monotonic()
            with self._lock:
                self._seen[index].append((parameters.version, at))
        return applied

    def latest(self, version: int) -> tuple[int, float | None]:
        with self._lock:
            firsts = [next((at for seen, at in arrivals if seen >= version), None)
                      for arrivals in self._seen]
        seen = [at for at in firsts if at is not None]
        return len(seen), max(seen, default=None)


def main(spec: dict[str, Any]) -> None:
    addresses: list[str] = spec["addresses"]
    tills: list[dict[str, str]] = spec["tills"]
    arrivals = Arrivals(len(tills))
    with contextlib.ExitStack() as stack:
        terminals = []
        for index, till in enumerate(tills):
            terminal = stack.enter_context(Terminal(
                address=addresses[index % len(addresses)], terminal_id=till["terminal_id"],
                credential=till["token"], data_dir=Path(spec["data_dir"]) / f"till-{index}",
                config=CONFIG))
            terminal.on_parameters_change(arrivals.listener(index))
            terminals.append(terminal)
        started = time.monotonic()
        deadline = started + float(spec["ready_timeout_s"])
        ready = sum(terminal.wait_for_parameters(
            version=int(spec["initial_version"]),
            timeout_s=max(0.0, deadline - time.monotonic())) for terminal in terminals)
        reply({"event": "ready", "open": ready, "of": len(terminals),
               "seconds": time.monotonic() - started})
        while (command := parse_command(sys.stdin.readline())) is not None:
            version = int(command["version"])
            deadline = time.monotonic() + float(command["timeout_s"])
            for terminal in terminals:
                terminal.wait_for_parameters(version=version,
                                             timeout_s=max(0.0, deadline - time.monotonic()))
            seen, latest = arrivals.latest(version)
            reply({"version": version, "seen": seen, "of": len(terminals), "latest": latest})


if __name__ == "__main__":
    main(read_spec())
