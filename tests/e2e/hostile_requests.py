"""Hypothesis strategies for what hostile or broken clients send: every field of every request
message of the contract, drawn both from values the HQ under test knows (real card numbers,
fencing tokens, sale ids, page tokens), so calls get past the first check, and from values
that break naive code (NUL, line breaks, huge numbers, times out of range, forged page
tokens), and raw bytes that are no valid encoding at all."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from random import Random
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
MAX_DEPTH = 4

NASTY_STRINGS = [
    "", " ", "\x00", "a\x00b", "\n", "\r\n", "\t", "EUR\n", "eur", "EU", "EURO", "XXX", "€",
    "till-1\n", "till 1", "\u00b2", "\u0663", "\uff11\uff12", "\u202e", "\ufeff", "🎁",
    "' OR 1=1 --", "%s%n", "../../etc/passwd", "9" * 19, "9" * 5_000, "0" * 8,
    "79927398713\x00", "4111111111111111 ",
]
# Cursors that break a naive int() or a database: digits that are not ASCII, past int64,
# too many for int(), negative, NUL, another list's name.
NASTY_CURSORS = ["²", "9999999999999999999", "9" * 5_000, "-1", "0", "\x00", "1\x00", "abc",
                 " 1", "1e3", "\u0661"]
LIST_NAMES = ["journal", "versions", "exceptions", "locks", "terminals", "changes"]


@dataclass
class KnownValues:
    """Values for request fields, by field name: real ones of the HQ under test (`strings`,
    `ints`) and hostile ones aimed at that field (`traps`)."""

    strings: dict[str, list[str]] = field(default_factory=dict)
    ints: dict[str, list[int]] = field(default_factory=dict)
    traps: dict[str, list[str]] = field(default_factory=dict)

    def for_list(self, list_name: str | None) -> KnownValues:
        """The same, with page tokens forged for `list_name` (the one the RPC pages)."""
        if list_name is None:
            return self
        forged = [forge_page_token(list_name, cursor) for cursor in NASTY_CURSORS]
        return replace(self, traps={**self.traps, "page_token": forged})


def forge_page_token(list_name: str, cursor: str) -> str:
    return base64.urlsafe_b64encode(f"{list_name}:{cursor}".encode()).decode()


def _edges(bits: int) -> list[int]:
    low, high = INT32 if bits == 32 else INT64
    edges = [0, 1, -1, 2, low, high, low + 1, high - 1, 10**15, 10**15 + 1, -(10**15),
             2**31, 2**53 + 1, 253_402_300_799, 253_402_300_800, -62_135_596_801,
             315_576_000_001, 999_999_999, 1_000_000_000, -1_000_000_000]
    return [e for e in edges if low <= e <= high]


_INT_BITS = {
    FieldDescriptor.TYPE_INT32: 32, FieldDescriptor.TYPE_SINT32: 32,
    FieldDescriptor.TYPE_SFIXED32: 32, FieldDescriptor.TYPE_INT64: 64,
    FieldDescriptor.TYPE_SINT64: 64, FieldDescriptor.TYPE_SFIXED64: 64,
}
_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
_SANE_TEXT = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


def _sane(draw: st.DrawFn, rnd: Random, f: FieldDescriptor, known: KnownValues) -> Any:
    """A value a well-behaved client could send (a real one where HQ has some)."""
    kind = f.type
    if kind == FieldDescriptor.TYPE_STRING:
        if f.name == "request_id" and rnd.random() < 0.7:
            return str(uuid.UUID(int=rnd.getrandbits(128)))
        values = known.strings.get(f.name)
        return rnd.choice(values) if values else draw(_SANE_TEXT)
    if kind == FieldDescriptor.TYPE_BOOL:
        return rnd.random() < 0.5
    if kind == FieldDescriptor.TYPE_ENUM:
        enum = f.enum_type
        assert enum is not None
        return rnd.choice([v.number for v in enum.values if v.number != 0] or [0])
    if kind in _INT_BITS:
        numbers = known.ints.get(f.name)
        return rnd.choice(numbers) if numbers else rnd.randint(0, 1_000)
    raise AssertionError(f"no strategy for {f.full_name}")


def _hostile(draw: st.DrawFn, rnd: Random, f: FieldDescriptor, known: KnownValues) -> Any:
    """A value that breaks naive code: aimed at the field where there are traps for it."""
    kind = f.type
    if kind == FieldDescriptor.TYPE_STRING:
        roll = rnd.random()
        traps = known.traps.get(f.name)
        if traps and roll < 0.45:
            return rnd.choice(traps)
        if roll < 0.65:
            return rnd.choice(NASTY_STRINGS)
        if roll < 0.75:
            return forge_page_token(rnd.choice(LIST_NAMES), rnd.choice(NASTY_CURSORS))
        if roll < 0.8:
            return "x" * rnd.randint(120, 70_000)
        return draw(_TEXT)
    if kind == FieldDescriptor.TYPE_BOOL:
        return rnd.random() < 0.5
    bits = 32 if kind == FieldDescriptor.TYPE_ENUM else _INT_BITS.get(kind)
    if bits is None:
        raise AssertionError(f"no strategy for {f.full_name}")
    if kind == FieldDescriptor.TYPE_ENUM and rnd.random() < 0.5:
        return rnd.randint(-3, 12)
    low, high = INT32 if bits == 32 else INT64
    return rnd.choice(_edges(bits)) if rnd.random() < 0.6 else rnd.randint(low, high)


@st.composite
def messages(draw: st.DrawFn, descriptor: Descriptor, known: KnownValues, depth: int = 0,
             sane: bool = False) -> Message:
    """A message of `descriptor`. Most are well formed but for one field (so they reach the
    rules behind the first check), some are hostile throughout; `sane` asks for a
    well-formed one (the parent's hostile field is elsewhere). The structure is chosen with
    a seeded Random rather than drawn, so every field is as likely to be the bad one."""
    message_class = message_factory.GetMessageClass(descriptor)
    fields = list(descriptor.fields)
    if depth > MAX_DEPTH or not fields:
        return message_class()
    rnd = draw(st.randoms(use_true_random=False))
    style = "sane" if sane else rnd.choice(["sane", "one", "one", "one", "any"])
    target = rnd.choice(fields) if style == "one" else None
    values: dict[str, Any] = {}
    for f in fields:
        wild = style == "any" or f is target
        # Wild fields are often left out too (a missing required field is bad input).
        if rnd.random() < (0.3 if wild else 0.05):
            continue
        count = rnd.randint(0 if wild else 1, 4 if wild else 2) if f.is_repeated else 1
        items: list[Any] = []
        for _ in range(count):
            if f.message_type is not None:
                items.append(draw(messages(f.message_type, known, depth + 1, sane=not wild)))
            else:
                items.append(_hostile(draw, rnd, f, known) if wild
                             else _sane(draw, rnd, f, known))
        values[f.name] = items if f.is_repeated else items[0]
    return _build(message_class, values)


def _build(message_class: Callable[[], Message], values: Mapping[str, Any]) -> Message:
    message = message_class()
    for name, value in values.items():
        target = getattr(message, name)
        if isinstance(value, list):
            if value and isinstance(value[0], Message):
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif isinstance(value, Message):
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def undecodable_bytes(valid: st.SearchStrategy[Message]) -> st.SearchStrategy[bytes]:
    """Raw request bodies: random bytes, and encodings of real requests truncated or with
    bytes flipped (some of which still decode: HQ must answer those by the rules too)."""

    def damage(data: bytes, cut: int, flips: Sequence[tuple[int, int]]) -> bytes:
        damaged = bytearray(data[: max(0, len(data) - cut)] if cut else data)
        for position, value in flips:
            if damaged:
                damaged[position % len(damaged)] = value
        return bytes(damaged)

    encoded = valid.map(lambda message: message.SerializeToString())
    return st.one_of(
        st.binary(max_size=64),
        st.sampled_from([bytes.fromhex("0a02fffe"), b"\x0a\x05ab", b"\xff", b"\x08",
                         b"\x0a\xff\xff\xff\xff\x0f"]),
        st.builds(damage, encoded, st.integers(0, 8),
                  st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                           max_size=3)),
    )
