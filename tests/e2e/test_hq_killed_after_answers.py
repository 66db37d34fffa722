"""A real HQ process killed (SIGKILL) while tills keep getting answers: every change a till was
told is done is in the database afterwards. Group commit answers a caller only once the
commit that carries its change returned, so a kill at any moment loses nothing answered."""

from __future__ import annotations

import signal
import sqlite3
import threading
from pathlib import Path

import grpc

from storedvalue.v1 import terminal_service_pb2 as ts

from .harness import (
    ADMIN_TOKEN,
    BackOffice,
    Till,
    eur,
    free_port,
    new_id,
    reap,
    start_serve,
    wait_serving,
    wait_until,
)

TILLS = 16
ANSWERS_BEFORE_THE_KILL = 400


def test_every_answered_change_survives_a_kill_at_any_moment(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    database = tmp_path / "hq.sqlite3"
    process = start_serve(
        ["--listen", address, "--database-url", f"sqlite:///{database}"],
        {"XDG_DATA_HOME": str(tmp_path / "data"), "STOREDVALUE_ADMIN_TOKEN": ADMIN_TOKEN},
        tmp_path / "logs",
    )
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    channels: list[grpc.Channel] = []
    try:
        wait_serving(process, address)
        admin = grpc.insecure_channel(address)
        channels.append(admin)
        till = BackOffice(admin).register_till("till-1")
        card = till.issue_gift_card(1_000).card_number

        def add_value_until_stopped() -> None:
            # A connection per till, as a fleet has.
            channel = grpc.insecure_channel(address,
                                            options=[("grpc.use_local_subchannel_pool", 1)])
            channels.append(channel)
            mine = Till(channel, till.terminal_id, till.token)
            while not stop.is_set():
                request_id = new_id()
                try:
                    mine.call("AddValue", ts.AddValueRequest(
                        request_id=request_id, card_number=card, amount=eur(1),
                        transaction_id="top-up",
                    ))
                except grpc.RpcError:
                    return  # HQ is gone
                with lock:
                    answered.append(request_id)
                    if len(answered) == ANSWERS_BEFORE_THE_KILL:
                        # The moment an answer arrives, with other calls in flight: an
                        # answer given before its commit would be lost now.
                        process.send_signal(signal.SIGKILL)

        workers = [threading.Thread(target=add_value_until_stopped) for _ in range(TILLS)]
        for worker in workers:
            worker.start()
        wait_until(lambda: len(answered) >= ANSWERS_BEFORE_THE_KILL, timeout=120,
                   what=f"{ANSWERS_BEFORE_THE_KILL} answers")
        process.communicate(timeout=30)
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
    finally:
        stop.set()
        reap(process)
        for channel in channels:
            channel.close()

    with lock:
        told_done = set(answered)
    stored = sqlite3.connect(database)
    try:
        committed = {row[0] for row in stored.execute(
            "SELECT request_id FROM request_log WHERE caller = ? AND operation = 'AddValue'",
            ("till-1",))}
        (balance,) = stored.execute(
            "SELECT balance_minor FROM cards WHERE card_number = ?", (card,)).fetchone()
        (top_ups,) = stored.execute(
            "SELECT count(*) FROM journal WHERE card_number = ? AND kind = 'ADD_VALUE'",
            (card,)).fetchone()
    finally:
        stored.close()

    assert len(told_done) >= ANSWERS_BEFORE_THE_KILL
    assert told_done <= committed, f"{len(told_done - committed)} answered changes lost"
    assert balance == 1_000 + top_ups == 1_000 + len(committed)
