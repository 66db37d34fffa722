"""A real HQ server in this process, on port 0, over a SQLite file, reached through a real
channel; stopped (and its channel closed) after each test. Started by `in_process_hq`, like
every HQ the tests run in their own process."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from in_process_hq import InProcessHQ, hq_config

from storedvalue.hq.config import HQConfig
from storedvalue.hq.services.offline import SyncLimits

from .harness import ADMIN_TOKEN, BackOffice, Till, reap_started

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
    config = hq_config(tmp_path, admin_token=ADMIN_TOKEN, sync_limits=E2E_SYNC_LIMITS)
    with InProcessHQ(config) as server:
        channel = grpc.insecure_channel(server.address)
        try:
            yield RunningHQ(server.address, channel, BackOffice(channel), config)
        finally:
            channel.close()


@pytest.fixture(scope="session", autouse=True)
def serve_processes_reaped() -> Iterator[None]:
    """Whatever `storedvalue serve` a test left behind is killed and its pipe closed once
    the session ends (harness._STARTED keeps them referenced until then)."""
    yield
    reap_started()
