"""Per-terminal offline sequence tracking and credentials."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storedvalue.hq.domain.errors import InvalidField
from storedvalue.hq.domain.terminals import (
    SequenceGap,
    Terminal,
    hash_token,
    new_bearer_token,
    sequence_gaps,
    validate_terminal_id,
)

NOW = datetime(2026, 11, 27, tzinfo=UTC)


def terminal() -> Terminal:
    return Terminal("till-1", "Till 1", "", NOW, NOW)


def test_the_contiguous_mark_advances_over_an_unbroken_run() -> None:
    t = terminal()
    assert t.advance_contiguous([1, 2, 3]) == []
    assert t.highest_contiguous_sequence == 3


def test_gaps_are_reported_until_filled() -> None:
    t = terminal()
    assert t.advance_contiguous([1, 2, 5, 6, 9]) == [SequenceGap(3, 4), SequenceGap(7, 8)]
    assert t.highest_contiguous_sequence == 2
    assert t.advance_contiguous([3, 4, 5, 6, 9]) == [SequenceGap(7, 8)]
    assert t.highest_contiguous_sequence == 6
    assert t.advance_contiguous([7, 8, 9]) == []
    assert t.highest_contiguous_sequence == 9


@given(st.sets(st.integers(min_value=1, max_value=60)))
def test_gaps_and_received_numbers_tile_the_range_exactly(received: set[int]) -> None:
    t = terminal()
    gaps = t.advance_contiguous(received)
    missing = {n for g in gaps for n in range(g.first_missing, g.last_missing + 1)}
    top = max(received, default=0)
    assert missing == set(range(1, top + 1)) - received
    assert all(n in received for n in range(1, t.highest_contiguous_sequence + 1))
    assert t.highest_contiguous_sequence + 1 not in received
    assert sequence_gaps(t.highest_contiguous_sequence, received) == gaps


def test_tokens_are_random_and_only_their_hash_is_kept() -> None:
    a, b = new_bearer_token(), new_bearer_token()
    assert a != b and len(a) > 40
    assert hash_token(a) != a and hash_token(a) == hash_token(a)


@pytest.mark.parametrize("bad", ["", "a b", "x" * 65, "till/1"])
def test_terminal_ids_are_short_and_plain(bad: str) -> None:
    with pytest.raises(InvalidField):
        validate_terminal_id(bad)
    assert validate_terminal_id("store-042.till_3") == "store-042.till_3"
