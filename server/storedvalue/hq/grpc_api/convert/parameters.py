"""Parameters: versions, offline risk limits, per-scope values and the change log."""

from __future__ import annotations

from storedvalue.hq.domain.parameters import (
    OfflineRiskLimits,
    Parameters,
    ParametersChange,
    ParametersChangeRecord,
    ParameterValues,
)
from storedvalue.hq.grpc_api.convert.common import (
    duration_from_proto,
    duration_to_proto,
    money_from_proto,
    optional_money_to_proto,
    timestamp,
)
from storedvalue.v1 import back_office_service_pb2 as bo_pb
from storedvalue.v1 import parameters_pb2


def parameters_to_proto(params: Parameters) -> parameters_pb2.Parameters:
    return parameters_pb2.Parameters(
        version=params.version,
        gift_card_offline_completion_allowed=params.gift_card_offline_completion_allowed,
        credit_memo_offline_completion_allowed=params.credit_memo_offline_completion_allowed,
        lock_lease=duration_to_proto(params.lock_lease),
        updated_at=timestamp(params.updated_at),
        updated_by=params.updated_by,
        gift_card_offline_limits=limits_to_proto(params.gift_card_offline_limits),
        credit_memo_offline_limits=limits_to_proto(params.credit_memo_offline_limits),
        store_id=params.store_id,
    )


def limits_to_proto(limits: OfflineRiskLimits) -> parameters_pb2.OfflineRiskLimits:
    return parameters_pb2.OfflineRiskLimits(
        max_line_amount=optional_money_to_proto(limits.max_line_amount),
        max_unsynced_amount=optional_money_to_proto(limits.max_unsynced_amount),
        max_offline_duration=(
            None if limits.max_offline_duration is None
            else duration_to_proto(limits.max_offline_duration)
        ),
    )


def limits_from_proto(limits: parameters_pb2.OfflineRiskLimits, field: str
                      ) -> OfflineRiskLimits:
    return OfflineRiskLimits(
        max_line_amount=(
            money_from_proto(limits.max_line_amount)
            if limits.HasField("max_line_amount") else None
        ),
        max_unsynced_amount=(
            money_from_proto(limits.max_unsynced_amount)
            if limits.HasField("max_unsynced_amount") else None
        ),
        max_offline_duration=(
            duration_from_proto(limits.max_offline_duration, f"{field}.max_offline_duration")
            if limits.HasField("max_offline_duration") else None
        ),
    )


def values_to_proto(values: ParameterValues) -> parameters_pb2.ParameterValues:
    message = parameters_pb2.ParameterValues(
        gift_card_offline_limits=limits_to_proto(values.gift_card_offline_limits),
        credit_memo_offline_limits=limits_to_proto(values.credit_memo_offline_limits),
    )
    if values.gift_card_offline_completion_allowed is not None:
        message.gift_card_offline_completion_allowed = (
            values.gift_card_offline_completion_allowed)
    if values.credit_memo_offline_completion_allowed is not None:
        message.credit_memo_offline_completion_allowed = (
            values.credit_memo_offline_completion_allowed)
    if values.lock_lease is not None:
        message.lock_lease.CopyFrom(duration_to_proto(values.lock_lease))
    return message


def change_record_to_proto(record: ParametersChangeRecord) -> parameters_pb2.ParametersChange:
    return parameters_pb2.ParametersChange(
        version=record.version,
        store_id=record.store_id,
        changed_at=timestamp(record.changed_at),
        changed_by=record.changed_by,
        old_values=values_to_proto(record.old_values),
        new_values=values_to_proto(record.new_values),
    )


def parameters_change_from_proto(request: bo_pb.UpdateParametersRequest) -> ParametersChange:
    return ParametersChange(
        gift_card_offline_completion_allowed=(
            request.gift_card_offline_completion_allowed
            if request.HasField("gift_card_offline_completion_allowed")
            else None
        ),
        credit_memo_offline_completion_allowed=(
            request.credit_memo_offline_completion_allowed
            if request.HasField("credit_memo_offline_completion_allowed")
            else None
        ),
        lock_lease=(
            duration_from_proto(request.lock_lease, "lock_lease")
            if request.HasField("lock_lease") else None
        ),
        gift_card_offline_limits=limits_from_proto(request.gift_card_offline_limits,
                                                   "gift_card_offline_limits"),
        credit_memo_offline_limits=limits_from_proto(request.credit_memo_offline_limits,
                                                     "credit_memo_offline_limits"),
        cleared=tuple(request.clear_fields),
    )
