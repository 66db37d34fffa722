"""``storedvalue demo``: the source article's story, played with a real HQ process.

An HQ (``storedvalue serve`` on a temporary SQLite file) and two tills. T1 locks a gift card
and T2 is refused; the link between T1 and HQ is cut; T1 completes the sale offline; the link
returns; the sync debits the card once and unlocks it; T2 can now use it. Every step is
narrated and checked: any deviation exits 1. The HQ process is stopped with SIGTERM and the
temporary files are removed whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from storedvalue.terminal import (
    CardKind,
    CardLocked,
    ConnectivityState,
    Money,
    SaleLine,
    Terminal,
    TerminalConfig,
    TerminalError,
)
from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import back_office_service_pb2_grpc as bo_grpc

from ._display import format_money, mask
from ._link import Link
from .serve import hq_missing

TILL = TerminalConfig(
    call_timeout_s=0.5,
    probe_initial_backoff_s=0.05,
    probe_max_backoff_s=0.25,
    sync_initial_backoff_s=0.05,
    sync_max_backoff_s=0.5,
)
"""A till on a store network: half a second before a call counts as lost."""

DEADLINE_S = 15.0
EUR = "EUR"


class Deviation(Exception):
    """The story did not go as the article says."""


def check(condition: object, what: str) -> None:
    if not condition:
        raise Deviation(what)


def say(text: str) -> None:
    print(text, flush=True)


def wait_for(condition: Callable[[], object], what: str) -> float:
    """Poll ``condition`` until true; return how long it took, or deviate at the deadline."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > DEADLINE_S:
            raise Deviation(f"{what} did not happen within {DEADLINE_S:.0f} s")
        time.sleep(0.02)
    return time.monotonic() - started


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def hq_process(workdir: Path, admin_token: str) -> Iterator[str]:
    """``python -m storedvalue.cli serve`` on a free loopback port; yields its address once
    it serves, and stops it with SIGTERM (checking a clean exit) when done."""
    address = f"127.0.0.1:{free_loopback_port()}"
    database = workdir / "hq.sqlite3"
    log_path = workdir / "hq.log"
    env = {**os.environ, "STOREDVALUE_ADMIN_TOKEN": admin_token,
           "XDG_DATA_HOME": str(workdir / "data")}
    say(f"[HQ] starting `storedvalue serve` on {address} with the embedded default "
        f"(SQLite file {database})")
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "storedvalue.cli", "serve", "--listen", address,
             "--database-url", f"sqlite:///{database}", "--grace-period", "2"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        # Redial at most every 250 ms while HQ starts, not with gRPC's default backoff
        # (1 s, then 1.6 times longer after each refusal, calls failing at once meanwhile):
        # an HQ that served 9.5 s after its start on a loaded machine was otherwise seen
        # serving only at about 16 s, past DEADLINE_S.
        with grpc.insecure_channel(address, options=[
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 250),
        ]) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def serving() -> bool:
                if process.poll() is not None:
                    raise Deviation(f"HQ exited with {process.returncode}: "
                                    f"{log_path.read_text(encoding='utf-8')[-2000:]}")
                try:
                    answer = health.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                except grpc.RpcError:
                    return False
                return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

            took = wait_for(serving, "HQ serving")
        say(f"[HQ] serving (pid {process.pid}) after {took:.1f} s")
        yield address
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise Deviation("HQ did not stop within 15 s of SIGTERM") from None
        if code != 0:
            raise Deviation(f"HQ exited with {code} after SIGTERM")
        say("[HQ] stopped by SIGTERM, exit code 0")


class BackOffice:
    def __init__(self, channel: grpc.Channel, admin_token: str) -> None:
        self._stub = bo_grpc.BackOfficeServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {admin_token}"),)

    def call(self, rpc: str, request: Any) -> Any:
        return getattr(self._stub, rpc)(request, metadata=self._metadata, timeout=5.0)

    def register(self, terminal_id: str) -> str:
        token: str = self.call("RegisterTerminal", bo.RegisterTerminalRequest(
            request_id=str(uuid.uuid4()), terminal_id=terminal_id,
        )).credential.bearer_token
        return token

    def journal(self, card_number: str) -> list[bo.JournalEntry]:
        return list(self.call("ListJournalEntries", bo.ListJournalEntriesRequest(
            card_number=card_number, page_size=100,
        )).entries)


def story(workdir: Path, hq: str, back_office: BackOffice) -> None:
    link = Link(hq)
    with contextlib.ExitStack() as stack:
        stack.callback(link.close)
        t1 = stack.enter_context(Terminal(
            address=link.address, terminal_id="T1", credential=back_office.register("T1"),
            data_dir=workdir / "T1", config=TILL))
        t2 = stack.enter_context(Terminal(
            address=hq, terminal_id="T2", credential=back_office.register("T2"),
            data_dir=workdir / "T2", config=TILL))
        say(f"[back office] registered tills T1 (through a link the demo can cut, "
            f"{link.address}) and T2")
        for till in (t1, t2):
            check(till.wait_for_state(ConnectivityState.ONLINE, timeout_s=DEADLINE_S),
                  f"{till.terminal_id} could not reach HQ")

        started = time.monotonic()
        version: int = back_office.call("UpdateParameters", bo.UpdateParametersRequest(
            request_id=str(uuid.uuid4()), gift_card_offline_completion_allowed=True,
        )).parameters.version
        for till in (t1, t2):
            check(till.wait_for_parameters(version=version, timeout_s=DEADLINE_S),
                  f"{till.terminal_id} never received parameters version {version}")
        say(f"[back office] 'allow concluding gift card transactions in offline mode' is on "
            f"(version {version}); both tills applied it {time.monotonic() - started:.2f} s "
            "later, not up to 24 hours")

        card = t1.issue_card(kind=CardKind.GIFT_CARD, initial_value=Money(5000, EUR))
        number = card.card_number
        say(f"[T1] sold gift card {mask(number)} loaded with {format_money(card.balance)}")

        tender = t1.add_tender(transaction_id="T1-sale-1", card_number=number)
        say(f"[T1] added the card to sale T1-sale-1: HQ locked it for T1 (fencing token "
            f"{tender.fencing_token}, balance {format_money(tender.balance)})")

        try:
            t2.add_tender(transaction_id="T2-sale-1", card_number=number)
        except CardLocked as refused:
            check(refused.holder_terminal_id == "T1",
                  f"T2 was refused but the lock names {refused.holder_terminal_id!r}, not T1")
            say(f"[T2] tried to add the same card to sale T2-sale-1: refused, CARD_LOCKED, "
                f"held by {refused.holder_terminal_id} for {refused.holder_transaction_id}")
        else:
            raise Deviation("T2 locked a card T1 holds")

        link.reset()
        say("[link] the link between T1 and HQ is cut")
        started = time.monotonic()
        price = Money(2000, EUR)
        result = t1.complete_sale(transaction_id="T1-sale-1",
                                  lines=[SaleLine("L1", number, price)])
        took = time.monotonic() - started
        check(result.completed_offline, "T1 completed the sale online through a cut link")
        check(t1.state is ConnectivityState.OFFLINE, "T1 does not know it is offline")
        check(len(t1.outbox()) == 1, "the offline sale is not in T1's outbox")
        say(f"[T1] switched itself to OFFLINE and completed sale T1-sale-1 "
            f"({format_money(price)} on the gift card) in {took:.2f} s: receipt says "
            "\"completed offline\"; T1's outbox holds 1 transaction")

        at_hq = t2.balance(card_number=number)
        check(at_hq.balance == Money(5000, EUR) and at_hq.lock is not None
              and at_hq.lock.terminal_id == "T1", "HQ changed the card while T1 was cut off")
        say(f"[HQ] meanwhile the card still shows {format_money(at_hq.balance)}, locked by T1")

        link.pass_through()
        say("[link] the link between T1 and HQ is back")
        back = wait_for(lambda: t1.state is ConnectivityState.ONLINE, "T1 reconnecting")
        synced = wait_for(lambda: not t1.outbox(), "T1's sync")
        say(f"[T1] reconnected after {back:.2f} s and synced its outbox "
            f"{synced:.2f} s later")

        after = t2.balance(card_number=number)
        journal = back_office.journal(number)
        redeems = [e for e in journal if e.kind == bo.JOURNAL_ENTRY_KIND_REDEEM]
        check(after.balance == Money(3000, EUR), f"balance is {format_money(after.balance)}, "
              "not 30.00 EUR")
        check([(e.amount.amount_minor, e.offline, e.terminal_id) for e in redeems]
              == [(-2000, True, "T1")], "the journal does not show one offline debit by T1")
        check(sum(e.amount.amount_minor for e in journal) == 3000,
              "the journal does not add up to the balance")
        check(after.lock is None, "the card is still locked after the sync")
        say(f"[HQ] the sync debited the card once: balance {format_money(after.balance)}, "
            "one offline redemption by T1 in the journal, card unlocked")

        t2.add_tender(transaction_id="T2-sale-2", card_number=number)
        spent = t2.complete_sale(transaction_id="T2-sale-2",
                                 lines=[SaleLine("L1", number, Money(1500, EUR))])
        left = spent.lines[0].balance_after
        if spent.completed_offline or left != Money(1500, EUR):
            raise Deviation("T2 could not redeem the card online")
        say(f"[T2] locked the card for sale T2-sale-2 and redeemed 15.00 EUR online: balance "
            f"{format_money(left)}")


def run(args: argparse.Namespace) -> int:
    if (missing := hq_missing("demo")) is not None:  # the demo runs a real HQ
        print(missing, file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="storedvalue-demo-"))
    admin_token = "demo-" + secrets.token_urlsafe(24)
    try:
        say("storedvalue demo: a gift card, two tills, and a link that drops (the seamless "
            "offline switch)")
        with hq_process(workdir, admin_token) as hq, grpc.insecure_channel(hq) as channel:
            story(workdir, hq, BackOffice(channel, admin_token))
    except Deviation as deviation:
        print(f"DEVIATION: {deviation}", file=sys.stderr, flush=True)
        return 1
    except (TerminalError, grpc.RpcError) as failure:
        print(f"DEVIATION: unexpected failure: {failure}", file=sys.stderr, flush=True)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    say("demo finished: every step went as the article says")
    return 0


def register(subparsers: Any, summary: str) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo", help=summary,
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=run)
