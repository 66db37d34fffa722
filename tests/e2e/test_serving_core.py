"""What the serving core promises a fleet: callers that stall cost memory, not service;
HQ's own call deadline; a cap on parameter watchers; a change reaching hundreds of open
watch streams at once. A real HQ in this process, clients from their own event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from storedvalue.hq.config import HQConfig
from storedvalue.hq.server import create_server
from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import terminal_service_pb2 as ts
from storedvalue.v1 import terminal_service_pb2_grpc as ts_grpc

from .harness import ADMIN_TOKEN, BackOffice, Till, failure_of, new_id, wait_until

GET_CARD = "/storedvalue.v1.TerminalService/GetCard"
STALLED = 300
CONNECTIONS = 10  # 30 calls each, within HQ's default of 100 streams per connection


@pytest.fixture
def config(tmp_path: Path) -> HQConfig:
    return HQConfig(
        listen="127.0.0.1:0",
        database_url=f"sqlite:///{tmp_path / 'hq.sqlite3'}",
        admin_token=ADMIN_TOKEN,
        call_deadline_seconds=2.0,
        max_watchers=400,
    )


@pytest.fixture
def hq_address(config: HQConfig) -> Iterator[str]:
    server, port = create_server(config)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        assert server.stop(0).wait(timeout=10), "the server did not stop"


@pytest.fixture
def channel(hq_address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(hq_address) as opened:
        yield opened


@pytest.fixture
def till(channel: grpc.Channel) -> Till:
    return BackOffice(channel).register_till("till-1")


async def never_sends() -> AsyncIterator[bytes]:
    """A request stream that never yields: the call's request never comes."""
    await asyncio.Event().wait()
    yield b""  # pragma: no cover


async def stall_calls(address: str, metadata: tuple[tuple[str, str], ...]) -> list[Any]:
    """STALLED GetCard calls over CONNECTIONS connections, none ever sending its request;
    how each ended."""
    channels = [
        # A subchannel pool of its own: a connection of its own.
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CONNECTIONS)
    ]

    async def stall(channel: grpc.aio.Channel) -> Any:
        call = channel.stream_unary(GET_CARD, None, None)(never_sends(), metadata=metadata)
        try:
            await call
        except grpc.RpcError as error:
            return error
        return None

    try:
        return await asyncio.gather(
            *(stall(channels[n % CONNECTIONS]) for n in range(STALLED))
        )
    finally:
        for channel in channels:
            await channel.close(None)


async def get_card_times(address: str, till: Till, card: str, count: int) -> list[float]:
    """Seconds each of `count` GetCards took, one after another, from this loop."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub: Any = ts_grpc.TerminalServiceStub(channel)
        times = []
        for _ in range(count):
            started = time.monotonic()
            await stub.GetCard(ts.GetCardRequest(card_number=card), metadata=till.metadata,
                               timeout=10)
            times.append(time.monotonic() - started)
        return times


def test_three_hundred_stalled_unauthenticated_calls_are_refused_at_once_and_cost_no_service(
    hq_address: str, till: Till,
) -> None:
    card = till.issue_gift_card(1_000).card_number

    async def scenario() -> tuple[list[Any], list[float]]:
        stalled = asyncio.create_task(stall_calls(hq_address, ()))
        times = await get_card_times(hq_address, till, card, 20)
        ended = await asyncio.wait_for(stalled, timeout=30)
        return ended, times

    ended, times = asyncio.run(scenario())

    assert {error.code() for error in ended} == {grpc.StatusCode.UNAUTHENTICATED}
    assert {failure_of(error).reason for error in ended} == {"UNAUTHENTICATED"}
    assert max(times) < 2.0  # the thread-per-call server timed everyone out at 5 s


def test_authenticated_callers_that_stall_cost_no_service_and_end_at_the_call_deadline(
    hq_address: str, till: Till, config: HQConfig,
) -> None:
    card = till.issue_gift_card(1_000).card_number

    async def scenario() -> tuple[list[Any], list[float], float]:
        started = time.monotonic()
        stalled = asyncio.create_task(stall_calls(hq_address, till.metadata))
        times = await get_card_times(hq_address, till, card, 20)
        ended = await asyncio.wait_for(stalled, timeout=60)
        return ended, times, time.monotonic() - started

    ended, times, took = asyncio.run(scenario())

    assert max(times) < 2.0
    assert {error.code() for error in ended} == {grpc.StatusCode.DEADLINE_EXCEEDED}
    assert {failure_of(error).reason for error in ended} == {"CALL_TOO_LONG"}
    assert config.call_deadline_seconds <= took < config.call_deadline_seconds + 20


def test_calls_past_the_streams_of_a_connection_wait_for_a_free_one_and_are_answered(
    config: HQConfig,
) -> None:
    """A load generator with more calls in flight on one connection than HQ's
    max_streams_per_connection: the client holds the extra calls until a stream is free
    (HTTP/2 MAX_CONCURRENT_STREAMS) and every one is answered; none is refused with a bare
    UNAVAILABLE (REFUSED_STREAM, no ErrorInfo) because HQ had not yet let go of a finished
    stream the client already counted as closed."""
    streams = 4
    server, port = create_server(replace(config, max_streams_per_connection=streams))
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            till = BackOffice(channel).register_till("till-1")
            card = till.issue_gift_card(1_000).card_number

        async def burst() -> list[Any]:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub: Any = ts_grpc.TerminalServiceStub(channel)
                request = ts.GetCardRequest(card_number=card)
                # One call first: the client has read HQ's settings (the stream limit).
                await stub.GetCard(request, metadata=till.metadata, timeout=10)

                async def get_card() -> Any:
                    try:
                        return await stub.GetCard(request, metadata=till.metadata, timeout=30)
                    except grpc.RpcError as error:
                        return failure_of(error)

                return await asyncio.gather(*(get_card() for _ in range(30 * streams)))

        answers = asyncio.run(burst())
    finally:
        assert server.stop(0).wait(timeout=10)

    refused = [answer for answer in answers if not isinstance(answer, ts.GetCardResponse)]
    assert refused == []


def test_a_watcher_over_the_cap_is_refused_with_too_many_watchers_until_one_leaves(
    config: HQConfig,
) -> None:
    server, port = create_server(replace(config, max_watchers=3))
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        till = BackOffice(channel).register_till("till-1")
        watches: list[Any] = [
            till.stub.WatchParameters(ts.WatchParametersRequest(), metadata=till.metadata,
                                      timeout=30)
            for _ in range(3)
        ]
        for watch in watches:
            next(watch)  # the current version: the stream is open
        refused: Any = till.stub.WatchParameters(ts.WatchParametersRequest(),
                                                 metadata=till.metadata, timeout=30)
        with pytest.raises(grpc.RpcError) as caught:
            next(refused)
        failure = failure_of(caught.value)

        watches.pop().cancel()

        def admitted() -> bool:
            again: Any = till.stub.WatchParameters(ts.WatchParametersRequest(),
                                                   metadata=till.metadata, timeout=30)
            try:
                next(again)
            except grpc.RpcError:
                return False
            finally:
                again.cancel()
            return True

        wait_until(admitted, timeout=10, what="the place of the watcher that left")
        for watch in watches:
            watch.cancel()
    finally:
        channel.close()
        assert server.stop(0).wait(timeout=10)

    assert failure.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (failure.reason, failure.metadata) == ("TOO_MANY_WATCHERS", {"limit": "3"})


def test_a_parameter_change_reaches_three_hundred_open_watch_streams_at_once(
    hq_address: str, till: Till,
) -> None:
    version = till.call("GetParameters", ts.GetParametersRequest()).parameters.version

    async def scenario() -> tuple[list[float], int]:
        channels = [grpc.aio.insecure_channel(hq_address,
                                              options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(CONNECTIONS)]
        try:
            stubs: list[Any] = [ts_grpc.TerminalServiceStub(channel) for channel in channels]
            streams = [
                stubs[n % CONNECTIONS].WatchParameters(
                    ts.WatchParametersRequest(known_version=version), metadata=till.metadata)
                for n in range(STALLED)
            ]
            arrivals: list[float] = []

            async def follow(stream: Any) -> int:
                message = await stream.read()
                arrivals.append(time.monotonic())
                stream.cancel()
                return int(message.parameters.version)

            followers = [asyncio.create_task(follow(stream)) for stream in streams]
            await asyncio.sleep(0.5)  # let every stream open
            with grpc.insecure_channel(hq_address) as admin_channel:
                changed_at = time.monotonic()
                BackOffice(admin_channel).call("UpdateParameters", bo.UpdateParametersRequest(
                    request_id=new_id(), gift_card_offline_completion_allowed=True))
            versions = await asyncio.wait_for(asyncio.gather(*followers), timeout=30)
        finally:
            for channel in channels:
                await channel.close(None)
        return [arrival - changed_at for arrival in arrivals], min(versions)

    delays, newest = asyncio.run(scenario())

    assert newest == version + 1
    assert len(delays) == STALLED
    assert max(delays) < 2.0  # budget 1 s for 5,000 streams, measured by bench/run.py
