"""HQ's order of one till's offline batches (services/batch_order.py)."""

from __future__ import annotations

import asyncio

from storedvalue.hq.services.batch_order import BatchOrder

DEADLINE_S = 5.0


def run_batches(order: BatchOrder, batches: list[tuple[str, list[int]]], *,
                failing: frozenset[int] = frozenset()) -> list[int]:
    """Start the batches in the order given (each runs up to where it waits before the
    next starts); return the first sequence number of each, in the order they ran."""
    ran: list[int] = []

    async def batch(terminal_id: str, numbers: list[int]) -> None:
        async with order.turn(terminal_id, numbers):
            ran.append(numbers[0])
            await asyncio.sleep(0)  # the database's turn: others may run meanwhile
            if numbers[0] in failing:
                raise RuntimeError("the batch failed")

    async def scenario() -> None:
        tasks = []
        for terminal_id, numbers in batches:
            tasks.append(asyncio.create_task(batch(terminal_id, numbers)))
            await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), DEADLINE_S)

    asyncio.run(scenario())
    return ran


def test_batches_that_arrive_out_of_order_run_in_sequence_order() -> None:
    order = BatchOrder(arrival_wait_s=DEADLINE_S)
    ran = run_batches(order, [("T1", [1, 2]), ("T1", [7, 8]), ("T1", [5, 6]), ("T1", [3, 4])])
    assert ran == [1, 3, 5, 7]


def test_other_tills_batches_do_not_wait_for_each_other() -> None:
    order = BatchOrder(arrival_wait_s=DEADLINE_S)
    ran = run_batches(order, [("T1", [1]), ("T2", [1]), ("T1", [2]), ("T2", [2])])
    assert sorted(ran) == [1, 1, 2, 2]


def test_a_gap_that_nothing_fills_holds_a_batch_only_for_the_arrival_wait() -> None:
    order = BatchOrder(arrival_wait_s=0.01)
    ran = run_batches(order, [("T1", [1]), ("T1", [50])])
    assert ran == [1, 50]


def test_a_failed_batch_does_not_hold_the_ones_after_it() -> None:
    order = BatchOrder(arrival_wait_s=DEADLINE_S)
    ran = run_batches(order, [("T1", [1]), ("T1", [3]), ("T1", [2])], failing=frozenset({2}))
    assert ran == [1, 2, 3]
