"""A till process for the SIGKILL test: locks the cards it is given, waits for "GO", then
completes one sale per card (offline once the test cut the link), printing
"<transaction id> <sequence number>" after each returned sale, until killed.

Usage: python offline_seller.py ADDRESS TOKEN DATA_DIR PREFIX CARD_NUMBER...
"""

from __future__ import annotations

import sys

from storedvalue.terminal import Money, SaleLine, Terminal, TerminalConfig


def main(address: str, token: str, data_dir: str, prefix: str, cards: list[str]) -> None:
    config = TerminalConfig(call_timeout_s=0.5, sync_automatically=False, watch_parameters=False)
    with Terminal(
        address=address, terminal_id="T1", credential=token, data_dir=data_dir, config=config
    ) as terminal:
        for index, number in enumerate(cards):
            terminal.add_tender(transaction_id=f"{prefix}-{index}", card_number=number)
        print("LOCKED", flush=True)
        sys.stdin.readline()
        for index, number in enumerate(cards):
            transaction_id = f"{prefix}-{index}"
            result = terminal.complete_sale(
                transaction_id=transaction_id,
                lines=[SaleLine("L1", number, Money(100, "EUR"))],
            )
            assert result.completed_offline
            print(transaction_id, result.sequence_number, flush=True)
        print("DONE", flush=True)
        sys.stdin.readline()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
