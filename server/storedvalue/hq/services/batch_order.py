"""One till's offline batches applied in sequence order, though it sends them a few at a time.

A till keeps more than one SyncOfflineBatch in flight, so that HQ decodes the next batch
while it applies the one before. Over one HTTP/2 connection the later request can still be
read, or checked, first: a small last batch finishes arriving before a large one. Order is
not what makes a sync correct (each transaction applies once by its id, whatever the order;
HQ records sequence gaps and fills them later), but it keeps the ledger in the order the
till sold, keeps a later batch from being judged against a sequence number the earlier one
has not yet raised (`max_sequence_jump`), and keeps the outcome of two transactions on one
card from depending on network timing. So before it goes to the database a batch waits:

- for every batch of the same till already here with lower sequence numbers, until it is
  done (applied or failed);
- when it starts past the highest sequence number of the till's batches done so far, for
  the batch that fills the gap to arrive, at most `arrival_wait_s` (a till that sends two
  batches sends them together; a real gap, after a till lost transactions, costs that wait
  once).

Per process: with several HQ replicas, a till's connection goes to one of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

ARRIVAL_WAIT_S = 0.05
MAX_ORDERED = 16
"""Batches of one till kept in order at once; more (a till sends two or three at a time)
go straight on, so that a till sending hundreds at once costs no more than this many."""


@dataclass
class _Till:
    done_through: int | None = None
    """The highest sequence number of this till's batches done in this process."""
    here: list[tuple[int, int]] = field(default_factory=list)
    """The (first, last) sequence numbers of its batches waiting or being applied."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set (and replaced) at each change of the above."""

    def change(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class BatchOrder:
    def __init__(self, *, arrival_wait_s: float = ARRIVAL_WAIT_S) -> None:
        self._arrival_wait_s = arrival_wait_s
        self._tills: dict[str, _Till] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def _till(self, terminal_id: str) -> _Till:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # events belong to one event loop
            self._loop, self._tills = loop, {}
        till = self._tills.get(terminal_id)
        if till is None:
            till = self._tills[terminal_id] = _Till()
        return till

    @asynccontextmanager
    async def turn(self, terminal_id: str, sequence_numbers: list[int]) -> AsyncIterator[None]:
        """Wait for this batch's turn (see the module); the batch is done when the block
        exits, whether it applied or failed."""
        till = self._till(terminal_id)
        if not sequence_numbers or len(till.here) >= MAX_ORDERED:
            yield
            return
        mine = (min(sequence_numbers), max(sequence_numbers))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._arrival_wait_s
        till.here.append(mine)
        till.change()
        try:
            while True:
                changed = till.changed
                if any(other[0] < mine[0] for other in till.here if other is not mine):
                    await changed.wait()  # an earlier batch is here: until it is done
                    continue
                through, left = till.done_through, deadline - loop.time()
                if through is None or mine[0] <= through + 1 or left <= 0:
                    break
                try:  # a gap before this batch: what fills it may be on its way
                    await asyncio.wait_for(changed.wait(), left)
                except TimeoutError:
                    break
            yield
        finally:
            till.here.remove(mine)
            if till.done_through is None or mine[1] > till.done_through:
                till.done_through = mine[1]
            till.change()
        if till.here:
            # A later batch waited for this one: let it reach the database before this
            # one's answer is built (a yield, so the writer is not idle meanwhile).
            await asyncio.sleep(0)
