"""An embedded HQ (`create_server`) that fails to start leaves nothing of itself running:
the database executor it opened (SQLite's writer and reader threads) is stopped, not left
behind in the embedding application."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from in_process_hq import hq_config

from storedvalue.hq.server import create_server

from .harness import ADMIN_TOKEN


class SynchronousInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """grpc's synchronous kind, where HQ (on grpc.aio) needs an asyncio one: a mistake an
    embedding application can make, and one gRPC refuses only once HQ has opened its
    database."""

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        return continuation(handler_call_details)


def executor_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith("hq-sqlite")}


def test_an_embedded_hq_that_fails_to_start_stops_the_threads_of_its_database_executor(
    tmp_path: Path,
) -> None:
    before = executor_threads()

    with pytest.raises(ValueError, match="ServerInterceptor"):
        create_server(hq_config(tmp_path, admin_token=ADMIN_TOKEN),
                      interceptors=[cast(Any, SynchronousInterceptor())])

    assert executor_threads() - before == set()
