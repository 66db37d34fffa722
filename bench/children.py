"""The processes the harness starts, and the promise that none outlives it.

Every child runs in its own session (a Ctrl-C on the terminal reaches the harness only, which
then stops its children in order). ``Children.close()`` sends SIGTERM to each process group
still alive, waits, then SIGKILLs; `run.py` calls it on every way out (normal end, failure,
Ctrl-C, SIGTERM, SIGHUP).

The bench's own client processes speak JSON lines: the spec is the first line on their stdin,
commands follow on stdin, results come back on stdout, progress goes to stderr (the
harness's). They exit when their stdin closes, so they also end if the harness is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent


class ChildFailed(Exception):
    """A child did not answer in time, or exited; the message says which and how."""


class Child:
    """A started process. For bench clients: `send` a JSON line, `receive` one back."""

    def __init__(self, name: str, process: subprocess.Popen[str], log_path: Path | None) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path
        self._lines: queue.Queue[str | None] = queue.Queue()
        if process.stdout is not None:
            threading.Thread(target=self._read, args=(process.stdout,), daemon=True,
                             name=f"read-{name}").start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError) as error:
            raise ChildFailed(f"{self.name} is gone ({error}){self.log_tail()}") from error

    def receive(self, timeout: float) -> dict[str, Any]:
        """The next JSON line the child printed, waiting at most ``timeout`` seconds."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise ChildFailed(f"{self.name} sent nothing within {timeout:.0f} s") from None
        if line is None:
            self._lines.put(None)  # later calls fail the same way
            code = self.process.wait(timeout=5)
            raise ChildFailed(f"{self.name} exited with code {code} before answering"
                              f"{self.log_tail()}")
        message: dict[str, Any] = json.loads(line)
        if "failed" in message:
            raise ChildFailed(f"{self.name}: {message['failed']}")
        return message

    def close_stdin(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()

    def log_tail(self, lines: int = 8) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        return ("; last log lines: " + " | ".join(tail)) if tail else ""


class Children:
    """Every process started for the run."""

    def __init__(self) -> None:
        self._children: list[Child] = []
        self._lock = threading.Lock()

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        unset_prefix: str | None = None,
        stdout_path: Path | None = None,
        log_path: Path | None = None,
    ) -> Child:
        """Start ``argv`` with our environment less the variables named ``unset_prefix*``,
        plus ``env``. Its stdout goes to ``stdout_path`` if given, else to a pipe read by
        `Child.receive`; its stderr to ``log_path`` if given, else to ours."""
        stdout: IO[str] | int = subprocess.PIPE
        stderr: IO[str] | None = None
        with contextlib.ExitStack() as files:
            if stdout_path is not None:
                stdout = files.enter_context(stdout_path.open("w", encoding="utf-8"))
            if log_path is not None:
                stderr = files.enter_context(log_path.open("w", encoding="utf-8"))
            process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=stdout,
                stderr=stderr,
                env={**{name: value for name, value in os.environ.items()
                        if unset_prefix is None or not name.startswith(unset_prefix)},
                     **(env or {})},
                text=True,
                start_new_session=True,
            )
        child = Child(name, process, log_path)
        with self._lock:
            self._children.append(child)
        return child

    def start_client(self, module: str, spec: dict[str, Any], *, name: str | None = None
                     ) -> Child:
        """Start ``bench/<module>.py`` with this interpreter and hand it ``spec``."""
        child = self.start(name or module, [sys.executable, str(BENCH_DIR / f"{module}.py")])
        child.send(spec)
        return child

    def stop(self, child: Child, *, timeout: float = 15.0) -> int:
        """SIGTERM its process group, then SIGKILL after ``timeout``; returns the exit code."""
        child.close_stdin()
        if child.alive():
            _signal_group(child.process, signal.SIGTERM)
            try:
                child.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(child.process, signal.SIGKILL)
        code = child.process.wait()
        with self._lock:
            if child in self._children:
                self._children.remove(child)
        return code

    def close(self) -> None:
        """Stop every child still running: clients first (they hold connections), HQ last."""
        with self._lock:
            remaining = list(reversed(self._children))
        for child in remaining:
            child.close_stdin()
            if child.alive():
                _signal_group(child.process, signal.SIGTERM)
        deadline = time.monotonic() + 15.0
        for child in remaining:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            if child.alive():
                _signal_group(child.process, signal.SIGKILL)
                child.process.wait()
        with self._lock:
            self._children.clear()


def _signal_group(process: subprocess.Popen[str], signum: int) -> None:
    """Signal the child's process group (its session: the child and anything it started),
    only while the child itself has not been reaped, so the group id is still ours."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


# -- the child's side ----------------------------------------------------------------------


def read_spec() -> dict[str, Any]:
    """In a bench client process: the spec the harness sent as the first stdin line."""
    line = sys.stdin.readline()
    if not line:
        raise SystemExit("no spec on stdin (this module is started by bench/run.py)")
    spec: dict[str, Any] = json.loads(line)
    return spec


def reply(message: dict[str, Any]) -> None:
    """In a bench client process: one JSON line to the harness."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def parse_command(line: str) -> dict[str, Any] | None:
    """In a bench client process: a command line from the harness, or None when the harness
    said stop or closed stdin."""
    if not line.strip():
        return None
    command: dict[str, Any] = json.loads(line)
    return None if command.get("stop") else command


def answer(main: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """In a one-shot bench client process: run ``main`` on the spec and reply with its result,
    or with ``{"failed": why}`` (the harness prints it as the metric's error)."""
    try:
        result = main(read_spec())
    except Exception as error:
        traceback.print_exc()
        reply({"failed": f"{type(error).__name__}: {error}"})
        sys.exit(1)
    reply(result)


def progress(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)
