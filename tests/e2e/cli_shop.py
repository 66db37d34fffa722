"""A shop run from a shell, as support staff and the back office do: one `storedvalue serve`
process (stopped and restarted on the same port and database) and `storedvalue terminal` and
`storedvalue admin` processes acting as its tills and its back office."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from .harness import ADMIN_TOKEN, free_port, start_serve, stop_process, wait_serving


class Shop:
    """One `storedvalue serve` process (stopped and restarted on the same port and database)
    and the tills support staff act as, each with its own data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.address = f"127.0.0.1:{free_port()}"
        self.env = {"STOREDVALUE_ADMIN_TOKEN": ADMIN_TOKEN, "XDG_DATA_HOME": str(root / "xdg")}
        self.process: subprocess.Popen[str] | None = None
        self.credentials: dict[str, str] = {}

    def start_hq(self) -> None:
        self.process = start_serve(
            ["--listen", self.address, "--database-url", f"sqlite:///{self.root / 'hq.db'}",
             "--grace-period", "1"],
            self.env, self.root / "logs",
        )
        wait_serving(self.process, self.address)

    def stop_hq(self) -> None:
        assert self.process is not None
        code, _, log = stop_process(self.process, timeout=15)
        self.process = None
        assert code == 0, log

    def cli(self, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "storedvalue.cli", *args],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, **self.env, **(env or {})},
        )

    def register(self, terminal_id: str, *options: str) -> None:
        done = self.cli("admin", "--target", self.address, "terminals", "register",
                        terminal_id, *options)
        assert done.returncode == 0, done.stderr
        self.credentials[terminal_id] = json.loads(done.stdout)["credential"]["bearer_token"]

    def till(self, terminal_id: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`storedvalue terminal ARGS` as ``terminal_id``, its credential in the environment."""
        return self.cli(
            "terminal", "--hq", self.address, "--terminal-id", terminal_id,
            "--data-dir", str(self.root / terminal_id), "--timeout", "0.5", *args,
            env={"STOREDVALUE_TERMINAL_TOKEN": self.credentials.get(terminal_id, "")},
        )

    def ok(self, terminal_id: str, *args: str) -> str:
        done = self.till(terminal_id, *args)
        assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
        return done.stdout

    def issue(self, amount: str) -> str:
        match = re.search(r"issued gift card (\d+) with", self.ok("T1", "issue", amount))
        assert match
        return match.group(1)

    def admin(self, *args: str) -> str:
        """`storedvalue admin ARGS` against this HQ; its output (it must succeed)."""
        done = self.cli("admin", "--target", self.address, *args)
        assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
        return done.stdout

    def admin_json(self, *args: str) -> Any:
        return json.loads(self.admin(*args))
