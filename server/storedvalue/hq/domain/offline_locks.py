"""The lock history, and the rule that decides which offline lines HQ trusts.

HQ remembers every lock it hands out (a `LockGrant`: which terminal got which fencing token
of a card, for which sale), after the lock ends too. An offline line is trusted only under the
lock its terminal held for that sale with that token: live, or the one it held when the
lease ran out (taken over or not) or the back office released it, or the one the sale's own
online Redeem consumed. Any other line (no token, another terminal's or another sale's
token, a made-up one, one superseded by the terminal's later lock of the card, or a lock the
terminal released itself before the sale) is still applied, since the goods left the store,
but always with a LOCK_NOT_HELD exception for the back office.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from storedvalue.hq.domain.cards import Lock
from storedvalue.hq.domain.moments import rfc3339
from storedvalue.hq.domain.value_objects import value_object


@value_object
class LockGrant:
    """One lock HQ handed out, kept for good."""

    card_number: str
    fencing_token: int
    terminal_id: str
    transaction_id: str
    acquired_at: datetime
    # When the holder itself released it (UnlockCard, or an unlock queued offline). A lock
    # consumed by a debit, ended by its lease or released by the back office has none.
    released_by_holder_at: datetime | None = None

    @classmethod
    def of(cls, lock: Lock) -> LockGrant:
        # Positional, in the fields' order: cheaper by a third than by keyword (LockCard).
        return cls(lock.card_number, lock.fencing_token, lock.terminal_id,
                   lock.transaction_id, lock.acquired_at)

    def released_by_holder(self, at: datetime) -> LockGrant:
        return replace(self, released_by_holder_at=at)


def why_offline_line_is_untrusted(fencing_token: int, grants: Iterable[LockGrant]
                                  ) -> str | None:
    """None when an offline line carrying `fencing_token` is trusted; otherwise why not, for
    the exception's message. `grants`: the locks of the line's card that its terminal got
    for the line's sale (the lock history holds them; another terminal's locks never count)."""
    if fencing_token == 0:
        return "the terminal completed the line offline without holding the card's lock"
    mine = grants if isinstance(grants, list) else list(grants)
    if not mine:
        return (f"fencing token {fencing_token} is not a lock this terminal held on the card "
                "for this sale (it never locked the card for it)")
    latest = mine[0] if len(mine) == 1 else max(mine, key=lambda grant: grant.fencing_token)
    if fencing_token != latest.fencing_token:
        if any(grant.fencing_token == fencing_token for grant in mine):
            return (f"fencing token {fencing_token} was superseded by this terminal's later "
                    f"lock of the card for this sale (token {latest.fencing_token})")
        return (f"fencing token {fencing_token} is not a lock this terminal held on the card "
                "for this sale (another terminal's, or made up)")
    released = latest.released_by_holder_at
    if released is not None:
        return (f"the terminal released this lock itself at {rfc3339(released)}, before "
                "completing the line offline")
    return None
