"""An offline result as the till receives it: every outcome under its contract name."""

from __future__ import annotations

import pytest

from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.offline import (
    OfflineLineOutcome,
    OfflineLineResult,
    OfflineOutcome,
    OfflineTransactionResult,
)
from storedvalue.hq.grpc_api.convert.offline import offline_result_to_proto
from storedvalue.v1 import offline_pb2


@pytest.mark.parametrize("outcome", list(OfflineOutcome))
@pytest.mark.parametrize("original", list(OfflineOutcome))
@pytest.mark.parametrize("line_outcome", list(OfflineLineOutcome))
def test_every_outcome_reaches_the_till_under_its_contract_name(
    outcome: OfflineOutcome, original: OfflineOutcome, line_outcome: OfflineLineOutcome,
) -> None:
    result = OfflineTransactionResult(
        "sale-1", 7, outcome, original,
        line_results=(OfflineLineResult("1", line_outcome, "", Money(-5, "EUR")),))

    message = offline_result_to_proto(result)

    assert offline_pb2.OfflineOutcome.Name(message.outcome) == f"OFFLINE_OUTCOME_{outcome.value}"
    assert (offline_pb2.OfflineOutcome.Name(message.original_outcome)
            == f"OFFLINE_OUTCOME_{original.value}")
    (line,) = message.line_results
    assert (offline_pb2.OfflineLineOutcome.Name(line.outcome)
            == f"OFFLINE_LINE_OUTCOME_{line_outcome.value}")
    assert (message.transaction_id, message.sequence_number, line.line_id) == ("sale-1", 7, "1")
    assert (line.balance_after.amount_minor, line.balance_after.currency_code) == (-5, "EUR")
