"""Pages and page tokens: the one codec between the wire and the use cases' cursors."""

from __future__ import annotations

import pytest

from storedvalue.hq.domain.errors import InvalidField
from storedvalue.hq.domain.paging import Page, page_of
from storedvalue.hq.grpc_api.paging import decode_int_token, decode_token, next_page_token


def test_a_page_has_a_next_cursor_only_when_a_row_past_it_was_found() -> None:
    assert page_of([1, 2, 3], 3, str) == Page((1, 2, 3), "")
    assert page_of([1, 2, 3, 4], 3, lambda n: n * 10) == Page((1, 2, 3), "30")
    assert page_of([], 3, str) == Page((), "")


def test_a_next_page_token_decodes_to_its_cursor_for_its_own_list_only() -> None:
    token = next_page_token("journal", Page((7,), "7"))

    assert decode_int_token("journal", token) == 7
    assert decode_token("journal", token, str.isdigit) == "7"
    with pytest.raises(InvalidField) as refused:
        decode_int_token("versions", token)
    assert refused.value.field == "page_token"


def test_the_last_page_has_no_token_and_no_token_means_the_first_page() -> None:
    assert next_page_token("locks", Page(("x",), "")) == ""
    assert decode_token("locks", "", str.isdigit) == ""
    assert decode_int_token("journal", "") == 0


@pytest.mark.parametrize("cursor", ["abc", "-1", "1e3", "9" * 40, " 1", "\u0661"])
def test_a_position_cursor_this_server_never_issued_is_an_invalid_page_token(cursor: str) -> None:
    with pytest.raises(InvalidField):
        decode_int_token("exceptions", next_page_token("exceptions", Page((), cursor)))
