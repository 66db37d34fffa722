"""The HQ schema, as SQLAlchemy Core tables. Alembic migrations reproduce it exactly.

Timestamps are BIGINT microseconds since the epoch, UTC (portable, indexable, exact); money is
BIGINT minor units. A card's lock lives on the card row, so "at most one lock per card" holds
by construction and locking a card is locking one row.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.types import TypeEngine

# Explicit constraint names, so migrations can name what they alter on every backend.
METADATA = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _row_id() -> TypeEngine[int]:
    """BIGINT on PostgreSQL; INTEGER on SQLite so the column aliases the rowid and
    autoincrements (SQLite only does that for an INTEGER PRIMARY KEY)."""
    return BigInteger().with_variant(Integer(), "sqlite")


CARD_NUMBER = 19  # the longest valid card number
ID = 128  # client-chosen transaction, line and request ids (validated to this length)
TERMINAL_ID = 64
STORE_ID = 64
CALLER = 200  # a terminal id or "admin:<name>"
CURRENCY = 3
ENUM = 32

cards = Table(
    "cards",
    METADATA,
    Column("card_number", String(CARD_NUMBER), primary_key=True),
    Column("kind", String(ENUM), nullable=False),
    Column("status", String(ENUM), nullable=False),
    Column("currency", String(CURRENCY), nullable=False),
    Column("balance_minor", BigInteger, nullable=False),
    Column("issued_at", BigInteger, nullable=False),
    Column("last_fencing_token", BigInteger, nullable=False),
    Column("remainder_of_card_number", String(CARD_NUMBER), nullable=False),
    # The lock: all five NULL when the card is free.
    Column("lock_terminal_id", String(CALLER), nullable=True),
    Column("lock_transaction_id", String(ID), nullable=True),
    Column("lock_fencing_token", BigInteger, nullable=True),
    Column("lock_lease_expires_at", BigInteger, nullable=True),
    Column("lock_acquired_at", BigInteger, nullable=True),
    # The card's newest journal entry (NULL before its first), where its history starts
    # (kept by the journal's trigger, or by the writer that chained the entry: see
    # `journal`).
    Column("last_entry_id", BigInteger, nullable=True),
    # The back office lists locks, all or one terminal's (sorted by card number). Only locked
    # cards are in it: locking adds an entry and releasing removes it, instead of moving the
    # entry between the terminal's range and NULL's (two random index pages written each time).
    # By the time a lock was taken within a terminal's range, not by card number: a terminal
    # releases its locks in about the order it took them, so the entries come and go on the
    # range's newest and oldest pages instead of random ones (see migration 0007).
    Index(None, "lock_terminal_id", "lock_acquired_at", "card_number",
          sqlite_where=text("lock_terminal_id IS NOT NULL"),
          postgresql_where=text("lock_terminal_id IS NOT NULL")),
)

# Every lock ever handed out (the fencing token of a card, to which terminal, for which
# sale), kept after it ends: offline lines are trusted only under their own sale's lock.
#
# Keyed by sale: (terminal_id, transaction_id, card_number, fencing_token), one B-tree (on
# SQLite WITHOUT ROWID: the rows are the key's B-tree, no rowid table beside it). Every
# reader looks locks up by sale (a sync: the locks a terminal got for the sales it
# delivers), and so does the one writer after LockCard (a release by its holder: UnlockCard
# or an unlock the terminal queued offline, which know the sale). Keyed by (card_number,
# fencing_token) with an index by sale, as until migration 0010, each LockCard wrote the
# row, its key (at a random page: card numbers are random) and the index; now a lock goes
# to one B-tree, in its terminal's range. The database no longer checks that a card's
# fencing token is recorded once: it need not, since a token is cards.last_fencing_token
# + 1, written to the card's row (locked: FOR UPDATE on PostgreSQL, the one writer on
# SQLite) in the transaction that records the lock, so no two locks of a card get the
# same token.
lock_history = Table(
    "lock_history",
    METADATA,
    # In this order (the key's is below): the repository binds rows in it.
    Column("card_number", String(CARD_NUMBER), nullable=False),
    Column("fencing_token", BigInteger, nullable=False),
    Column("terminal_id", String(CALLER), nullable=False),
    Column("transaction_id", String(ID), nullable=False),
    Column("acquired_at", BigInteger, nullable=False),
    Column("released_by_holder_at", BigInteger, nullable=True),
    PrimaryKeyConstraint("terminal_id", "transaction_id", "card_number", "fencing_token"),
    sqlite_with_rowid=False,
)

journal = Table(
    "journal",
    METADATA,
    Column("entry_id", _row_id(), primary_key=True, autoincrement=True),
    Column("card_number", String(CARD_NUMBER), nullable=False),
    Column("kind", String(ENUM), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),  # signed: + credits, - debits
    Column("currency", String(CURRENCY), nullable=False),
    Column("balance_after_minor", BigInteger, nullable=False),
    Column("terminal_id", String(CALLER), nullable=False),
    Column("transaction_id", String(ID), nullable=False),
    Column("line_id", String(ID), nullable=False),
    Column("offline", Boolean, nullable=False),
    Column("occurred_at", BigInteger, nullable=False),
    Column("recorded_at", BigInteger, nullable=False),
    Column("note", Text, nullable=False),  # e.g. who forced an unlock, and why
    # The card's entry before this one (NULL for its first): a card's history is a chain
    # from cards.last_entry_id, walked over the primary key, rather than an index on
    # (card_number, entry_id), which every entry written updated at a random page (cards
    # are used at random): ~0.35 WAL pages a synced sale. A trigger on INSERT (migration
    # 0008, not described here: Alembic does not compare triggers) sets it and the card's
    # last_entry_id for an entry written without it (0009); the writers that chain their
    # entries themselves (an offline batch's, an online Redeem's on SQLite: see
    # card_repositories' JournaledDebits and OnlineChain) bind it and write the card's
    # last_entry_id in the UPDATE of its balance. Along a chain ids increase.
    Column("previous_entry_id", BigInteger, nullable=True),
)

# What HQ decided for each tender line, by (terminal, transaction, line): a debit, possibly
# reversed since, or a reversal's tombstone. The primary key is what makes a line apply once.
redemptions = Table(
    "redemptions",
    METADATA,
    Column("terminal_id", String(CALLER), primary_key=True),
    Column("transaction_id", String(ID), primary_key=True),
    Column("line_id", String(ID), primary_key=True),
    Column("card_number", String(CARD_NUMBER), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", String(CURRENCY), nullable=False),
    Column("remainder_card_number", String(CARD_NUMBER), nullable=False),
    Column("offline", Boolean, nullable=False),
    Column("recorded_at", BigInteger, nullable=False),
    # A reversal of the line (OfflineReversal): NULL while it stands, REVERSED once its debit
    # was credited back, NEVER_APPLIED for a line reversed before any debit (a tombstone).
    Column("reversal", String(ENUM), nullable=True),
    Column("reversed_at", BigInteger, nullable=True),
)

request_log = Table(
    "request_log",
    METADATA,
    Column("caller", String(CALLER), primary_key=True),
    Column("request_id", String(ID), primary_key=True),
    Column("operation", String(64), nullable=False),
    Column("fingerprint", LargeBinary, nullable=False),
    Column("result_json", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

offline_records = Table(
    "offline_records",
    METADATA,
    Column("terminal_id", String(TERMINAL_ID), primary_key=True),
    Column("transaction_id", String(ID), primary_key=True),
    Column("sequence_number", BigInteger, nullable=False),
    Column("fingerprint", LargeBinary, nullable=False),
    Column("outcome", String(ENUM), nullable=False),
    Column("result_json", Text, nullable=False),
    Column("received_at", BigInteger, nullable=False),
    # One transaction per sequence number per terminal; also serves gap detection.
    UniqueConstraint("terminal_id", "sequence_number"),
)

offline_exceptions = Table(
    "offline_exceptions",
    METADATA,
    # Insertion order, the pagination cursor. The primary key because SQLite only
    # autoincrements an INTEGER PRIMARY KEY; exception_id is the business key.
    Column("position", _row_id(), primary_key=True, autoincrement=True),
    Column("exception_id", String(64), nullable=False, unique=True),
    Column("kind", String(ENUM), nullable=False),
    Column("terminal_id", String(TERMINAL_ID), nullable=False),
    Column("transaction_id", String(ID), nullable=False),
    Column("line_id", String(ID), nullable=False),
    Column("card_number", String(CARD_NUMBER), nullable=False),
    Column("amount_minor", BigInteger, nullable=True),  # NULL with currency: no amount
    Column("currency", String(CURRENCY), nullable=True),
    Column("reason", String(64), nullable=False),
    Column("message", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("resolved_at", BigInteger, nullable=True),  # NULL while open
    Column("resolved_by", String(CALLER), nullable=False),
    Column("resolution", Text, nullable=False),
    Column("transaction_json", Text, nullable=True),  # the transaction kept for review
    Index(None, "card_number", "resolved_at"),
    Index(None, "terminal_id", "position"),
    # The back office's default view: open exceptions, oldest first.
    Index(None, "resolved_at", "position"),
)

def _limit_columns() -> list[Column[object]]:
    """A scope's offline risk limits per tender kind: NULL when not set (global: unlimited;
    a store's override: the global value). An amount is its minor units and currency."""
    columns: list[Column[object]] = []
    for kind in ("gift_card", "credit_memo"):
        for limit in ("max_line", "max_unsynced"):
            columns.append(Column(f"{kind}_{limit}_minor", BigInteger, nullable=True))
            columns.append(Column(f"{kind}_{limit}_currency", String(CURRENCY), nullable=True))
        columns.append(Column(f"{kind}_max_offline_seconds", BigInteger, nullable=True))
    return columns


# Every change of the parameters, one row per version: the values of its scope (the global
# parameters, store_id '', or one store's override) as the change left them. The global rows
# set every flag and the lease; an override's NULLs take the global value. The rows are never
# updated: they are the change log, and what a terminal applied at any version.
parameters = Table(
    "parameters",
    METADATA,
    Column("version", BigInteger, primary_key=True, autoincrement=False),
    Column("gift_card_offline_completion_allowed", Boolean, nullable=True),
    Column("credit_memo_offline_completion_allowed", Boolean, nullable=True),
    Column("lock_lease_seconds", BigInteger, nullable=True),
    Column("updated_at", BigInteger, nullable=False),
    Column("updated_by", String(CALLER), nullable=False),
    Column("store_id", String(STORE_ID), nullable=False, server_default=""),
    *_limit_columns(),
    # A scope's latest row at or before a version, without a sort.
    Index(None, "store_id", "version"),
)

terminals = Table(
    "terminals",
    METADATA,
    Column("terminal_id", String(TERMINAL_ID), primary_key=True),
    Column("display_name", String(200), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("registered_at", BigInteger, nullable=False),
    Column("credential_issued_at", BigInteger, nullable=False),
    Column("highest_contiguous_sequence", BigInteger, nullable=False),
    Column("highest_sequence_seen", BigInteger, nullable=False),
    Column("last_synced_at", BigInteger, nullable=True),
    Column("store_id", String(STORE_ID), nullable=False, server_default=""),
    Column("revoked_at", BigInteger, nullable=True),  # NULL while the credential is valid
    Column("revoked_by", String(CALLER), nullable=False, server_default=""),
    Column("revocation_reason", Text, nullable=False, server_default=""),
)

# The last status report of each terminal (ReportTerminalStatus), kept apart from the
# terminals row that offline sync locks: a report never waits for a sync.
terminal_reports = Table(
    "terminal_reports",
    METADATA,
    Column("terminal_id", String(TERMINAL_ID), primary_key=True),
    Column("reported_at", BigInteger, nullable=False),  # the terminal's clock
    Column("received_at", BigInteger, nullable=False),
    Column("report_json", Text, nullable=False),
)

# What one HQ process tells the others on the same SQLite file: a parameters version made,
# a terminal revoked or moved to another store (the channels and payloads of
# configuration_repositories). A row is written in the transaction that makes the change,
# so a row means a committed change; every process reads the rows above the last id it saw
# (parameter_changes.NotificationTableFollower). Ids are never reused (AUTOINCREMENT), so a
# reader can tell rows it missed (pruned: only the newest NOTIFICATIONS_KEPT are kept) from
# rows not yet written. PostgreSQL replicas hear the same through LISTEN/NOTIFY and write
# no rows here: on PostgreSQL this table stays empty.
NOTIFICATIONS_KEPT = 10_000
NOTIFICATION_CHANNEL = 64

notifications = Table(
    "notifications",
    METADATA,
    Column("id", _row_id(), primary_key=True, autoincrement=True),
    Column("channel", String(NOTIFICATION_CHANNEL), nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),  # HQ's clock, for people reading it
    sqlite_autoincrement=True,
)
