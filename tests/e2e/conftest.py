"""A real HQ server in this process, on port 0, over a SQLite file, reached through a real
channel; stopped (and its channel closed) after each test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from storedvalue.hq.config import HQConfig
from storedvalue.hq.server import create_server
from storedvalue.hq.services.offline import SyncLimits

from .harness import ADMIN_TOKEN, BackOffice, Till

# Small limits, so the tests can cross them cheaply.
E2E_SYNC_LIMITS = SyncLimits(
    max_transactions_per_batch=10, max_lines_per_transaction=50, max_message_bytes=64 * 1024
)


@dataclass
class RunningHQ:
    address: str
    channel: grpc.Channel
    back_office: BackOffice
    config: HQConfig

    def till(self, terminal_id: str) -> Till:
        return self.back_office.register_till(terminal_id)


@pytest.fixture
def hq(tmp_path: Path) -> Iterator[RunningHQ]:
    config = HQConfig(
        listen="127.0.0.1:0",
        database_url=f"sqlite:///{tmp_path / 'hq.sqlite3'}",
        admin_token=ADMIN_TOKEN,
        parameters_poll_seconds=0.2,
        watch_wakeup_seconds=0.2,
        sync_limits=E2E_SYNC_LIMITS,
        max_workers=8,
    )
    server, port = create_server(config)
    server.start()
    address = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(address)
    try:
        yield RunningHQ(address, channel, BackOffice(channel), config)
    finally:
        channel.close()
        assert server.stop(0).wait(timeout=10), "the server did not stop"
