"""HQ's one proto mapping layer: protobuf messages to domain objects and back, and nothing
else (no rule, no I/O). Servicers import from here; nothing below them does.

Split along the business lines of the contract: `common` (times, durations, money, card
kinds, enums by name, request digests), `cards` (cards, locks, the journal), `offline`
(offline transactions, their results, sync status, exceptions), `parameters`, `terminals`.

Domain datetimes are aware UTC; proto Timestamps are UTC by definition. An unset message
field becomes None on the way in (the domain decides whether that is allowed), never a zero
value that would look like a real amount or time.
"""
