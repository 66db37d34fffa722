"""HQ's reading of a SyncOfflineBatch request's usual transactions from its bytes: the columns
read from the serialization are exactly those read from protobuf's decoding, and any request
the fast reading is not sure of (another shape, hostile bytes) is left to the messages."""

from __future__ import annotations

import uuid

import pytest
from google.protobuf.message import DecodeError

from storedvalue.hq.domain.offline_common import CommonSales
from storedvalue.hq.grpc_api.convert.offline import (
    _common_sales,
    _fingerprints,
    offline_batch_from_proto,
    offline_transactions_from_proto,
    usual_sales,
)
from storedvalue.v1 import common_pb2, offline_pb2
from storedvalue.v1 import terminal_service_pb2 as ts

GIFT = common_pb2.CARD_KIND_GIFT_CARD


def sale(number: int, *, transaction_id: str | None = None, line_id: str = "1",
         card_number: str = "6000000000000006", minor: int = 100, currency: str = "EUR",
         token: int = 7, seconds: int = 1_750_000_000, nanos: int = 123_456_000,
         reached: tuple[int, int] | None = (1_749_999_000, 5_000), unsynced: int = 1,
         **fields: object) -> offline_pb2.OfflineTransaction:
    message = offline_pb2.OfflineTransaction(
        transaction_id=f"sale-{number}" if transaction_id is None else transaction_id,
        sequence_number=number, parameters_version=3,
        redeem_lines=[offline_pb2.OfflineRedeemLine(
            line_id=line_id, card_number=card_number, card_kind=GIFT,
            amount=common_pb2.Money(amount_minor=minor, currency_code=currency),
            fencing_token=token)],
        unsynced_amounts=[offline_pb2.UnsyncedAmount(
            card_kind=GIFT, amount=common_pb2.Money(amount_minor=100 * number + n,
                                                    currency_code="EUR"),
            line_count=number) for n in range(unsynced)])
    message.completed_at.seconds = seconds
    message.completed_at.nanos = nanos
    if reached is not None:
        message.last_reached_hq_at.seconds, message.last_reached_hq_at.nanos = reached
    for name, value in fields.items():
        setattr(message, name, value)
    return message


def request(*transactions: offline_pb2.OfflineTransaction, request_id: str = "batch-1"
            ) -> bytes:
    return ts.SyncOfflineBatchRequest(request_id=request_id, transactions=transactions
                                      ).SerializeToString(deterministic=True)


def from_messages(data: bytes, *, fingerprints: bool = False) -> CommonSales | None:
    """What the messages' reading (`_common_sales`) gives, with the fingerprints the
    request's bytes give (`_fingerprints`) or none."""
    sent = list(ts.SyncOfflineBatchRequest.FromString(data).transactions)
    return _common_sales(sent, _fingerprints(sent, data) if fingerprints else [])


def check_agrees(data: bytes) -> CommonSales | None:
    """The fast reading of the request `data` holds, as the servicer makes it (protobuf's
    deterministic serialization of the request it decoded: it refuses bytes that do not
    decode), checked: it reads the messages' columns or none, and only for the request's
    count of transactions."""
    try:
        decoded = ts.SyncOfflineBatchRequest.FromString(data)
    except DecodeError:
        return None
    serialized = decoded.SerializeToString(deterministic=True)
    count = len(decoded.transactions)
    for claimed in {count, 1, 2, 3}:
        fast = usual_sales(serialized, claimed)
        if fast is not None:
            assert count == claimed, data
            assert fast == from_messages(serialized), data
    return usual_sales(serialized, count) if count else None


def batch_of(*transactions: bytes) -> bytes:
    """A request of transactions given as their bytes (each under 128)."""
    return b"".join(b"\x12" + bytes((len(body),)) + body for body in transactions)


def uuid_sale(number: int) -> offline_pb2.OfflineTransaction:
    return sale(number, transaction_id=str(uuid.UUID(int=number)),
                line_id=str(uuid.UUID(int=number + 10**6)))


USUAL = {
    "short ids": [sale(n) for n in range(1, 4)],
    "UUID ids (two-byte transaction lengths)": [uuid_sale(n) for n in range(1, 4)],
    "large numbers": [sale(2**40 + n, token=2**50, minor=10**15, parameters_version=2**33)
                      for n in range(3)],
    "no unsynced amounts, three": [sale(1, unsynced=0), sale(2, unsynced=3)],
    "a non-ASCII printable id": [sale(1, transaction_id="vente-é-1")],
    "a control character in an id": [sale(1, transaction_id="sale\x85")],
    "an id with a control byte": [sale(1, transaction_id="a\x10b")],
    "an id that looks like the fields after it": [sale(1, transaction_id="a\x10\x01\x1a\x00")],
    "an id of 200 bytes": [sale(1, transaction_id="x" * 200), sale(2)],
    "a card number with letters": [sale(1, card_number="60000000000000A6")],
    "a lower-case currency": [sale(1, currency="eur")],
    "no request id": [sale(1)],
    "a negative sequence number": [sale(-5)],
    "a negative token": [sale(1, token=-3)],
}
OTHER = {
    "no last contact": [sale(1, reached=None)],
    "a last contact at the epoch": [sale(1, reached=(0, 0)), sale(2)],
    "no fencing token": [sale(1, token=0)],
    "a whole second": [sale(1, nanos=0)],
    "a completion at the epoch": [sale(1, seconds=0, nanos=0)],
    "two lines": [sale(1)],
    "an unlock": [sale(1)],
    "a reversal": [sale(1)],
    "no completion time": [sale(1)],
    "an unreadable completion": [sale(1, seconds=2**40)],
    "negative nanos": [sale(1, nanos=-1)],
    "an unreadable last contact": [sale(1, reached=(-(2**40), 1))],
    "a zero amount": [sale(1, minor=0)],
    "a negative amount": [sale(1, minor=-100)],
    "no currency": [sale(1, currency="")],
    "no transaction id": [sale(1, transaction_id="")],
    "no line id": [sale(1, line_id="")],
    "no sequence number": [sale(0)],
    "version 0": [sale(1, parameters_version=0)],
}
OTHER["two lines"][0].redeem_lines.add(line_id="2", card_number="6000000000000014")
OTHER["an unlock"][0].unlocks.add(card_number="6000000000000006", transaction_id="x",
                                  fencing_token=1)
OTHER["a reversal"][0].reversals.add(line_id="1", card_number="6000000000000006")
OTHER["no completion time"][0].ClearField("completed_at")


@pytest.mark.parametrize("name", list(USUAL))
def test_the_usual_transactions_read_as_protobuf_decodes_them(name: str) -> None:
    data = request(*USUAL[name], request_id="" if name == "no request id" else "batch-1")
    fast = check_agrees(data)
    assert fast is not None
    assert fast == from_messages(data)


@pytest.mark.parametrize("name", list(OTHER))
def test_other_transactions_are_read_from_the_messages(name: str) -> None:
    data = request(sale(10), *OTHER[name])
    assert check_agrees(data) is None


def test_the_batch_decoder_reads_the_same_columns_and_fingerprints_either_way() -> None:
    messages = [uuid_sale(n) for n in range(1, 6)]
    data = request(*messages)
    sent = ts.SyncOfflineBatchRequest.FromString(data).transactions
    transactions, sales = offline_batch_from_proto(sent, data)
    assert sales
    assert sales.fingerprints == [t.fingerprint for t in offline_transactions_from_proto(sent)]
    assert sales == from_messages(data, fingerprints=True)
    # Without the request's bytes, the messages are read: the same columns.
    assert offline_batch_from_proto(sent)[1] == sales
    assert list(transactions) == offline_transactions_from_proto(sent, data)


def test_unusual_bytes_are_read_as_protobuf_reads_them_or_left_to_it() -> None:
    """Every truncation of a usual request, and every byte of it replaced by a few others
    (lengths one off, tags of other fields, a continuation bit, a byte outside UTF-8): the
    fast reading either agrees with protobuf's or leaves the request to it."""
    data = request(sale(1), uuid_sale(2), sale(3, token=2**40))
    assert check_agrees(data) is not None
    for end in range(len(data)):
        check_agrees(data[:end])
    for index, byte in enumerate(data):
        for other in {byte ^ 1, byte + 1 & 0xFF, byte - 1 & 0xFF, byte | 0x80, 0x00, 0x32,
                      0x3A, 0xFF}:
            check_agrees(data[:index] + bytes((other,)) + data[index + 1:])


@pytest.mark.parametrize("hostile", [
    b"\x12\x05\x0a\x01a\x10",  # truncated inside
    b"\x12\xff\xff\xff\xff\x0f" + b"\x00" * 8,  # a huge length
    b"\x12\x80\x00",  # a non-minimal length of 0
    b"\x0a\x01\xff" + request(sale(1), request_id=""),  # a request id not UTF-8
    request(sale(1)).replace(b"sale-1", b"sale\xff1"),  # a transaction id not UTF-8
    request(sale(1)).replace(b"\x10\x01", b"\x10\x81\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00"),
    request(sale(1)) + b"\x1a\x00",  # an unknown field of the request
    request(sale(1)) + request(sale(2), request_id="batch-2"),  # a second request id
])
def test_hostile_bytes_are_never_read_unlike_protobuf(hostile: bytes) -> None:
    check_agrees(hostile)


def record(tag: int, body: bytes) -> bytes:
    return bytes((tag, len(body))) + body


PACKED = {
    "a sequence number": (b"\x12\x01\x05", b"", b""),
    "a sequence number, empty": (b"\x12\x00", b"", b""),
    "a line's fencing token": (b"", b"\x2a\x01\x07", b""),
    "an amount": (b"", b"", b"\x0a\x01\x64"),
}


@pytest.mark.parametrize("name", list(PACKED))
def test_a_number_written_packed_is_not_read(name: str) -> None:
    """A number's field written length-delimited is an unknown field of the message (its
    singular field does not read it); the fast reading must not read it either."""
    in_transaction, in_line, in_money = PACKED[name]
    usual = sale(1, reached=None, unsynced=0)
    line = usual.redeem_lines[0]
    money = (line.amount.SerializeToString() if not in_money
             else record(0x12, b"EUR") + in_money)
    line_bytes = (record(0x0A, b"1") + record(0x12, line.card_number.encode())
                  + record(0x22, money) + (in_line or b"\x28\x07"))
    changed = (record(0x0A, b"sale-1") + (in_transaction or b"\x10\x01")
               + record(0x1A, usual.completed_at.SerializeToString()) + b"\x20\x03"
               + record(0x2A, line_bytes)
               + record(0x42, usual.completed_at.SerializeToString()))
    offline_pb2.OfflineTransaction.FromString(changed)  # decodes
    for data in (batch_of(sale(2).SerializeToString(), changed), batch_of(changed)):
        assert check_agrees(data) is None


def test_huge_varints_read_as_protobuf_reads_them() -> None:
    # A sequence number's varint of ten bytes (a negative int64), and one padded with
    # continuation bytes (valid protobuf, not a deterministic serialization).
    data = request(sale(1, token=-(2**63)))
    assert check_agrees(data) is not None
    padded = data.replace(b"\x28\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
                          b"\x28\x81\x80\x80\x80\x80\x80\x80\x80\x80\x00")
    assert padded != data
    check_agrees(padded)
