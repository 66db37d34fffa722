"""The issue 8 checkout, end to end with real processes: `storedvalue serve`, a POS application
process embedding the terminal library, and the TCP link between them.

HQ allows gift cards offline, not credit memos. The till adds memo M and gift card G to a
sale and completes it with L0 (M, 5.00) and L1 (G, 7.00). L0's Redeem reaches HQ, which
debits M (and issues a remainder memo), but the answer is lost and the link goes down; the
till refuses to complete offline because of L0; the cashier takes 5.00 another way and
completes with L1 only. The customer must be charged once: HQ ends with M whole again (its
remainder memo voided) and G debited 7.00, whether the till stays up, or is killed with
SIGKILL and restarted before the link returns.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from storedvalue.cli._link import Link
from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import common_pb2
from storedvalue.v1 import terminal_service_pb2 as ts

from .harness import BackOffice, HQProcess, Till, new_id, wait_until

POS_APP = Path(__file__).with_name("pos_app.py")
LINK_WAIT_S = 30.0


class PosProcess:
    """The POS application process; `ask` sends one command and returns its answer."""

    def __init__(self, address: str, terminal_id: str, token: str, data_dir: Path) -> None:
        self._argv = [sys.executable, str(POS_APP), address, terminal_id, token, str(data_dir)]
        self._process: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        self._process = process = subprocess.Popen(self._argv, stdin=subprocess.PIPE,
                                                   stdout=subprocess.PIPE, text=True)
        try:
            assert self._read() == {"ok": True, "ready": True}
        except BaseException:  # no PosProcess to close: its pipes are closed here
            process.kill()
            process.communicate()
            self._process = None
            raise

    def ask(self, op: str, **arguments: Any) -> dict[str, Any]:
        process = self._process
        assert process is not None and process.stdin is not None
        process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        process.stdin.flush()
        return self._read()

    def kill(self) -> None:
        process = self._process
        assert process is not None
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
        assert process.returncode == -signal.SIGKILL
        self._process = None

    def close(self) -> None:
        process = self._process
        if process is None:
            return
        try:
            process.communicate(timeout=30)  # EOF on stdin: the app closes its terminal
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
        self._process = None

    def _read(self) -> dict[str, Any]:
        process = self._process
        assert process is not None and process.stdout is not None
        line = process.stdout.readline()
        assert line, f"the POS process ended (exit {process.poll()})"
        answer: dict[str, Any] = json.loads(line)
        return answer


@dataclass
class Store:
    hq: HQProcess
    back_office: BackOffice
    desk: Till
    link: Link
    pos: PosProcess
    memo: str
    gift: str

    def card(self, number: str) -> common_pb2.Card:
        return self.desk.get_card(number)

    def sale(self) -> dict[str, Any]:
        view: dict[str, Any] = self.pos.ask("sale", sale="S1")["sale"]
        return view


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    hq = HQProcess(tmp_path)
    hq.start()
    channel = grpc.insecure_channel(hq.address)
    link = Link(hq.address)
    pos: PosProcess | None = None
    try:
        back_office = BackOffice(channel)
        back_office.call("UpdateParameters", bo.UpdateParametersRequest(
            request_id=new_id(), gift_card_offline_completion_allowed=True,
            credit_memo_offline_completion_allowed=False))
        desk = back_office.register_till("desk")
        till = back_office.register_till("till-1")
        memo = desk.call("IssueCard", ts.IssueCardRequest(
            request_id=new_id(), kind=common_pb2.CARD_KIND_CREDIT_MEMO,
            initial_value=common_pb2.Money(amount_minor=2000, currency_code="EUR"))).card
        gift = desk.issue_gift_card(5000)
        pos = PosProcess(link.address, "till-1", till.token, tmp_path / "till-1")
        yield Store(hq, back_office, desk, link, pos, memo.card_number, gift.card_number)
    finally:
        if pos is not None:
            pos.close()
        link.close()
        channel.close()
        hq.stop()


def lines(store: Store, *ids: str) -> list[list[object]]:
    every = {"L0": [store.memo, 500], "L1": [store.gift, 700]}
    return [[line_id, *every[line_id], "EUR"] for line_id in ids]


def lose_l0_answer_and_the_link(store: Store) -> None:
    """L0's Redeem reaches HQ and is applied; its answer is lost; then the link is down."""
    pos = store.pos
    assert pos.ask("add_tender", sale="S1", card=store.memo)["ok"]
    assert pos.ask("add_tender", sale="S1", card=store.gift)["ok"]
    redeem_sent = store.link.drop_answers_after(store.memo.encode())

    refused = pos.ask("complete_sale", sale="S1", lines=lines(store, "L0", "L1"))

    assert redeem_sent.is_set()
    assert (refused["ok"], refused["error"], refused["line_id"], refused["paid"]) == (
        False, "OfflineNotAllowed", "L0", []), "the sale is still open, nothing lost"
    assert store.card(store.memo).balance.amount_minor == 0, "HQ debited M all the same"
    store.link.reset()
    assert pos.ask("state")["state"] == "OFFLINE"


def complete_with_l1_only(store: Store) -> dict[str, Any]:
    """The cashier took 5.00 another way: the sale completes offline with L1 alone."""
    done = store.pos.ask("complete_sale", sale="S1", lines=lines(store, "L1"))
    assert (done["ok"], done["completed_offline"], done["lines"], done["reversed"]) == (
        True, True, ["L1"], ["L0"])
    return done


def assert_charged_once(store: Store) -> None:
    """After the link returns: M is whole again, its remainder memo voided, G debited 7.00,
    no lock left, and every card's journal sums to its balance."""
    store.link.pass_through()

    def synced() -> dict[str, Any] | None:
        view = store.sale()
        return view if view["synced"] else None

    view = wait_until(synced, timeout=LINK_WAIT_S, what="the till to sync S1")
    states = {line["line_id"]: line for line in view["lines"]}
    assert states["L1"]["state"] == "APPLIED_AT_SYNC"
    assert states["L0"]["state"] == "REVERSED"
    remainder = states["L0"]["voided_memo"]
    assert remainder
    memo = store.card(store.memo)
    assert (memo.balance.amount_minor, memo.status) == (2000, common_pb2.CARD_STATUS_ACTIVE)
    assert store.card(remainder).balance.amount_minor == 0
    assert store.card(store.gift).balance.amount_minor == 4300
    for number in (store.memo, remainder, store.gift):
        journal = store.back_office.journal(number)
        assert sum(e.amount.amount_minor for e in journal) == \
            store.card(number).balance.amount_minor
    locks = store.back_office.call("ListLocks", bo.ListLocksRequest(include_expired=True))
    assert list(locks.locks) == []


def test_the_unknown_memo_line_is_reversed_when_the_link_returns(store: Store) -> None:
    lose_l0_answer_and_the_link(store)
    complete_with_l1_only(store)
    assert_charged_once(store)


def test_a_till_killed_after_completing_offline_keeps_the_reversal(store: Store) -> None:
    lose_l0_answer_and_the_link(store)
    first = complete_with_l1_only(store)

    store.pos.kill()
    store.pos.start()  # the link is still down

    view = store.sale()
    assert (view["status"], view["synced"]) == ("COMPLETED_OFFLINE", False)
    assert {line["line_id"]: line["state"] for line in view["lines"]} == {
        "L0": "REVERSAL_QUEUED", "L1": "QUEUED_OFFLINE"}
    again = store.pos.ask("complete_sale", sale="S1", lines=lines(store, "L1"))
    assert again == first, "a retry gets the same result, nothing new is queued"
    assert_charged_once(store)


def test_a_till_killed_before_the_cashier_decided_finishes_the_sale_after_restart(
    store: Store,
) -> None:
    lose_l0_answer_and_the_link(store)

    store.pos.kill()
    store.pos.start()  # the link is still down

    (open_sale,) = store.pos.ask("open_sales")["sales"]
    assert {line["line_id"]: line["state"] for line in open_sale["lines"]} == {
        "L0": "ATTEMPTED", "L1": "PENDING"}
    complete_with_l1_only(store)
    assert_charged_once(store)
