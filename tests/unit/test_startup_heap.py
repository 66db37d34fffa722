"""HQ's heap after startup (process.freeze_startup_heap): what starting left behind in
cycles is freed, and what is alive is left out of every later collection, so that a full
collection while serving walks only what serving made."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from storedvalue.hq.process import freeze_startup_heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def unfrozen_afterwards() -> Iterator[None]:
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.mark.usefixtures("unfrozen_afterwards")
def test_garbage_left_by_startup_is_freed_not_frozen() -> None:
    first, second = Node(), Node()
    first.other, second.other = second, first  # a cycle: reference counts never free it
    gone = weakref.ref(first)
    del first, second

    freeze_startup_heap()

    assert gone() is None


@pytest.mark.usefixtures("unfrozen_afterwards")
def test_what_startup_keeps_is_left_out_of_later_collections() -> None:
    kept = Node()
    assert any(found is kept for found in gc.get_objects())

    freeze_startup_heap()
    made_while_serving = Node()

    tracked = gc.get_objects()  # what collections walk (the frozen are not among them)
    assert not any(found is kept for found in tracked)
    assert any(found is made_while_serving for found in tracked)
    assert gc.get_freeze_count() > 0
