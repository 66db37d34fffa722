"""HQ as a user deploys it: `storedvalue serve` processes started with this interpreter (so a
bench run from another checkout's virtual environment measures that checkout's HQ), on a
fresh database, listening on a port the OS picked, the admin token in the environment.

- SQLite (the default): one `serve` process on the embedded default database in a fresh
  data directory (XDG_DATA_HOME points into the run's temporary directory);
  ``--hq-processes 2`` makes it ``serve --processes 2``: two worker processes on the one
  file and the one address (the kernel spreads the load's connections over them).
- PostgreSQL (``--database-url``): a scratch database is created beside the one the URL
  names and dropped afterwards; ``--hq-processes 2`` starts two separate HQ processes on it
  (the second once the first has migrated the schema), each on its own address.

The CPU figures count every HQ process: those started and their children (the workers of
``serve --processes N``), found in /proc.
"""

from __future__ import annotations

import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
from children import Child, ChildFailed, Children, progress
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

_LISTENING = re.compile(r"listening on (\[[^\]]+\]|[\w.\-]+):(\d+)")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Deployment:
    """How HQ is deployed for the run."""

    database_url: str | None
    """None for the embedded SQLite default; else a PostgreSQL server to make scratch
    databases on (``postgresql+psycopg://USER@HOST:PORT/DB``)."""
    hq_processes: int = 1

    @property
    def database(self) -> str:
        return "sqlite" if self.database_url is None else "postgresql"


class ScratchDatabase:
    """A PostgreSQL database made for one HQ group, dropped when it is done."""

    def __init__(self, server_url: str) -> None:
        url = make_url(server_url)
        self._admin_conninfo = url.set(drivername="postgresql").render_as_string(
            hide_password=False)
        self.name = f"sv_bench_{secrets.token_hex(4)}"
        self.url = url.set(database=self.name).render_as_string(hide_password=False)
        with psycopg.connect(self._admin_conninfo, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.name}")

    def drop(self) -> None:
        with psycopg.connect(self._admin_conninfo, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


class HQUnderTest:
    """The HQ processes of one measurement, on one fresh database."""

    def __init__(self, children: Children, deployment: Deployment, workdir: Path,
                 launcher: list[str] | None = None) -> None:
        self._children = children
        # What `serve ...` follows on the command line (bench/hq_timeline.py puts its probe).
        self._launcher = launcher or [sys.executable, "-m", "storedvalue.cli"]
        self._deployment = deployment
        self._workdir = workdir
        self.admin_token = "bench-admin-" + secrets.token_urlsafe(16)
        self.addresses: list[str] = []
        self._processes: list[Child] = []
        self._scratch: ScratchDatabase | None = None

    @property
    def address(self) -> str:
        return self.addresses[0]

    def __enter__(self) -> HQUnderTest:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._workdir.mkdir(parents=True, exist_ok=True)
        args = ["--listen", "127.0.0.1:0"]
        if self._deployment.database_url is not None:
            self._scratch = ScratchDatabase(self._deployment.database_url)
            args += ["--database-url", self._scratch.url]
        separate = self._deployment.hq_processes
        if self._deployment.database_url is None and separate > 1:
            # SQLite: one HQ of several worker processes, as a user deploys it on one machine.
            args += ["--processes", str(separate)]
            separate = 1
        for index in range(separate):
            home = self._workdir / f"hq-{index}"
            home.mkdir(exist_ok=True)
            child = self._children.start(
                f"HQ {index}",
                [*self._launcher, "serve", *args],
                # The caller's own STOREDVALUE_* settings (a database URL above all) must not
                # reach the HQ under test.
                env={"XDG_DATA_HOME": str(home), "STOREDVALUE_ADMIN_TOKEN": self.admin_token},
                unset_prefix="STOREDVALUE_",
                stdout_path=home / "serve.out",
                log_path=home / "serve.log",
            )
            self._processes.append(child)
            address = _wait_listening(child, home / "serve.out")
            _wait_serving(child, address)
            self.addresses.append(address)
        progress(f"HQ serving on {', '.join(self.addresses)} ({self._deployment.database}, "
                 f"{sys.executable})")

    def check_alive(self) -> None:
        for child in self._processes:
            if not child.alive():
                raise ChildFailed(f"{child.name} exited with code {child.process.returncode}"
                                  f"{child.log_tail()}")

    @property
    def processes(self) -> int:
        """HQ processes serving (worker processes included)."""
        return self._deployment.hq_processes

    def pids(self) -> list[int]:
        """Every HQ process: those started and their descendants (the workers of
        ``serve --processes N``), so that CPU figures include the workers'."""
        return [pid for child in self._processes for pid in _with_descendants(child.pid)]

    def stop(self) -> None:
        for child in self._processes:
            self._children.stop(child, timeout=STOP_TIMEOUT_S)
        self._processes.clear()
        if self._scratch is not None:
            self._scratch.drop()
            self._scratch = None


def _wait_listening(child: Child, stdout_path: Path) -> str:
    """The address `serve` printed (it was given port 0)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = stdout_path.read_text(encoding="utf-8") if stdout_path.exists() else ""
        found = _LISTENING.search(text)
        if found is not None:
            return f"{found.group(1)}:{found.group(2)}"
        if not child.alive():
            raise ChildFailed(f"storedvalue serve exited with code {child.process.returncode}"
                              f"{child.log_tail()}")
        time.sleep(0.05)
    raise ChildFailed(f"storedvalue serve printed no listening address within "
                      f"{START_TIMEOUT_S:.0f} s{child.log_tail()}")


def _wait_serving(child: Child, address: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if not child.alive():
                raise ChildFailed(f"storedvalue serve exited with code "
                                  f"{child.process.returncode}{child.log_tail()}")
            try:
                response = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            except grpc.RpcError:
                time.sleep(0.05)
                continue
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                return
    raise ChildFailed(f"HQ at {address} not SERVING within {START_TIMEOUT_S:.0f} s")


def _with_descendants(pid: int) -> list[int]:
    """`pid` and the processes below it, from /proc/PID/task/TID/children (just `pid`
    where /proc cannot tell)."""
    found = [pid]
    for parent in found:  # grows as children are found
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                found += [int(child) for child in children.read_text().split()]
            except (OSError, ValueError):  # the thread or the process ended meanwhile
                continue
    return found
