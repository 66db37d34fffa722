"""The real HQ the terminal benchmarks talk to, in their own process.

A SQLite file (WAL, synchronous=FULL) is prepared through HQ's own services: parameters that
allow completing gift card sales offline, one registered till, and funded gift cards with
known numbers; ``record_sale_locks`` adds the locks the till held for its offline sales.
``serving`` then puts HQ's gRPC server on a loopback port over that file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from storedvalue.hq.config import HQConfig
from storedvalue.hq.domain.cards import CardKind, luhn_check_digit
from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.offline_locks import LockGrant
from storedvalue.hq.domain.parameters import ParametersChange
from storedvalue.hq.server import create_server
from storedvalue.hq.services.back_office import BackOfficeService
from storedvalue.hq.services.cards import CardService
from storedvalue.hq.services.idempotency import RequestKey
from storedvalue.hq.services.parameters import ParametersService
from storedvalue.hq.storage import SqlStorage, upgrade_to_head

ADMIN_TOKEN = "bench-admin-token"  # noqa: S105 - a loopback-only bench credential
TERMINAL_ID = "bench-till"
CARD_BALANCE_MINOR = 10**9


def request_key(operation: str, n: int) -> RequestKey:
    digest = hashlib.sha256(f"{operation}{n}".encode()).digest()
    return RequestKey("admin:bench", f"{operation}-{n}", operation, digest)


def card_numbers(count: int) -> list[str]:
    """``count`` Luhn-valid 16-digit numbers, the same in every run."""
    bodies = [f"7{n:014d}" for n in range(1, count + 1)]
    return [body + luhn_check_digit(body) for body in bodies]


def record_sale_locks(storage: SqlStorage, sales: list[tuple[str, str]]) -> list[int]:
    """The locks a till took before going offline: for each (card, sale) a lock of the till
    in HQ's lock history (ended, as once the sale consumed it), so its offline lines are
    trusted as a real till's are. Returns each sale's fencing token."""
    tokens: list[int] = []
    issued: dict[str, int] = {}
    now = datetime.now(UTC)
    grants = []
    for number, sale in sales:
        token = issued[number] = issued.get(number, 0) + 1
        tokens.append(token)
        grants.append(LockGrant(number, token, TERMINAL_ID, sale, now))
    with storage.unit_of_work(write=True) as uow:
        cards = uow.cards.get_many_for_update(issued)
        for number, card in cards.items():
            card.last_fencing_token = issued[number]
        uow.cards.save(cards.values())
        uow.lock_history.add(grants)
        uow.commit()
    return tokens


@dataclass
class PreparedHQ:
    url: str
    storage: SqlStorage
    bearer_token: str
    """The till's credential."""
    parameters_version: int
    cards: list[str]

    def close(self) -> None:
        self.storage.close()


def prepare(url: str, *, card_count: int) -> PreparedHQ:
    upgrade_to_head(url)
    storage = SqlStorage.from_url(url)
    try:
        parameters = ParametersService(storage)
        parameters.ensure_initialized()
        version = parameters.update(
            key=request_key("UpdateParameters", 0), updated_by="bench",
            change=ParametersChange(True, True), expected_version=0,
        ).version
        token = BackOfficeService(storage).register_terminal(
            key=request_key("RegisterTerminal", 0), terminal_id=TERMINAL_ID, display_name="",
        ).bearer_token
        service = CardService(storage)
        numbers = card_numbers(card_count)
        for index, number in enumerate(numbers):
            service.issue_card(
                key=request_key("IssueCard", index), terminal_id=TERMINAL_ID,
                kind=CardKind.GIFT_CARD, initial_value=Money(CARD_BALANCE_MINOR, "EUR"),
                card_number=number, transaction_id=f"issue-{index}",
            )
    except BaseException:
        storage.close()
        raise
    return PreparedHQ(url, storage, token, version, numbers)


@contextlib.contextmanager
def serving(prepared: PreparedHQ, *, max_workers: int = 8) -> Iterator[str]:
    """HQ's gRPC server over the prepared database; yields its loopback address. Each
    connected till's WatchParameters stream holds one of the `max_workers` threads."""
    config = HQConfig(listen="127.0.0.1:0", database_url=prepared.url, admin_token=ADMIN_TOKEN,
                      max_workers=max_workers)
    server, port = create_server(config, storage=prepared.storage)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait(timeout=10)


def filesystem_of(path: Path) -> str:
    """"ext4 on /" for the mount holding ``path`` (from /proc/mounts; "?" elsewhere)."""
    target = os.path.realpath(path)
    mounts: list[tuple[int, str, str]] = []
    try:
        with open("/proc/mounts", encoding="utf-8") as table:
            for line in table:
                _device, mount_point, kind, *_ = line.split()
                if target == mount_point or target.startswith(mount_point.rstrip("/") + "/"):
                    mounts.append((len(mount_point), kind, mount_point))
    except OSError:
        return "?"
    if not mounts:
        return "?"
    _, kind, mount_point = max(mounts)
    return f"{kind} on {mount_point}"
