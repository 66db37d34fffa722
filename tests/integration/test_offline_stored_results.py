"""Offline records keep their results in `offline_records.result_json`, in the forms of
`storedvalue.hq.storage.offline_results`: the common result compactly, any other as a JSON
object, and those earlier versions wrote (a JSON object, or an array, for every result) still
answer a resent request and a redelivered transaction exactly as when they were written."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from offline_scenarios import HQ, TILL, line, offline
from sqlalchemy import select, update

from storedvalue.hq import records
from storedvalue.hq.domain.offline import OfflineOutcome, OfflineTransactionResult
from storedvalue.hq.services.offline import SyncOutcome
from storedvalue.hq.storage import SqlStorage
from storedvalue.hq.storage.tables import offline_records


@pytest.fixture
def hq(sql_storage: SqlStorage) -> Iterator[HQ]:
    hq = HQ(sql_storage)
    try:
        yield hq
        hq.assert_conservation()
    finally:
        hq.close()


def stored_texts(storage: SqlStorage) -> dict[str, str]:
    with storage.engine.connect() as connection:
        return {transaction_id: text for transaction_id, text in connection.execute(
            select(offline_records.c.transaction_id, offline_records.c.result_json))}


def as_array(result: OfflineTransactionResult) -> str:
    """The array form earlier versions stored (no reversals here)."""
    return json.dumps([
        result.transaction_id, result.sequence_number, result.outcome.value,
        result.original_outcome.value, result.reason, result.message,
        [[line.line_id, line.outcome.value, line.reason,
          None if line.balance_after is None else line.balance_after.amount_minor,
          None if line.balance_after is None else line.balance_after.currency,
          line.remainder_credit_memo_number] for line in result.line_results],
        list(result.exception_ids)])


@pytest.mark.parametrize("earlier_form", ["object", "array"])
def test_records_stored_by_an_earlier_version_answer_resends_as_they_did(
    hq: HQ, sql_storage: SqlStorage, earlier_form: str,
) -> None:
    cards = [hq.issue(10_000) for _ in range(3)]
    # Two common sales (applied in bulk), then one the general path applies with an overdraft.
    common = [offline(1, line(cards[0], 1_000, token=hq.lock(cards[0], "sale-1"))),
              offline(2, line(cards[1], 2_500, token=hq.lock(cards[1], "sale-2")))]
    overdraft = [offline(3, line(cards[2], 12_000, token=hq.lock(cards[2], "sale-3")))]
    keys = [hq.key(TILL, "SyncOfflineBatch") for _ in range(2)]

    def answers() -> list[SyncOutcome]:
        resent = [hq.run(hq.offline.sync(key=key, terminal_id=TILL, transactions=txns))
                  for key, txns in zip(keys, (common, overdraft), strict=True)]
        return [*resent, hq.sync(*common, *overdraft)]  # the same requests; a new one

    first = [hq.run(hq.offline.sync(key=key, terminal_id=TILL, transactions=txns))
             for key, txns in zip(keys, (common, overdraft), strict=True)]
    results = [result for outcome in first for result in outcome.results]
    assert [r.outcome for r in results] == [
        OfflineOutcome.APPLIED, OfflineOutcome.APPLIED, OfflineOutcome.APPLIED_WITH_EXCEPTION]
    texts = stored_texts(sql_storage)
    assert texts["sale-1"] == "A9000 EUR 1" and texts["sale-2"] == "A7500 EUR 1"
    assert texts["sale-3"] == records.dumps(results[2])
    now = answers()
    assert [o.results for o in now[:2]] == [o.results for o in first]  # the status is now's
    assert [r.outcome for r in now[2].results] == [OfflineOutcome.ALREADY_APPLIED] * 3
    assert [r.line_results for r in now[2].results] == [r.line_results for r in results]

    # As an earlier version stored the same results.
    encode = records.dumps if earlier_form == "object" else as_array
    with sql_storage.engine.begin() as connection:
        for result in results:
            connection.execute(update(offline_records).where(
                offline_records.c.transaction_id == result.transaction_id,
            ).values(result_json=encode(result)))
    assert not any(text.startswith("A") for text in stored_texts(sql_storage).values())
    assert answers() == now
