"""A point-of-sale application in its own process, embedding the terminal library the way a
POS does, driven by the tests one JSON command per stdin line, one JSON answer per stdout
line. A test can SIGKILL it at any moment and start it again on the same data directory.

Usage: python pos_app.py ADDRESS TERMINAL_ID TOKEN DATA_DIR

Commands ({"op": ...}): add_tender(sale, card), complete_sale(sale, lines: [[id, card,
amount_minor, currency], ...]), abandon_sale(sale), sale(sale), open_sales(), state(),
wait_online(timeout_s). Answers: {"ok": true, ...} or {"ok": false, "error": class name,
"reason", "line_id", "paid": [line ids]}.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from storedvalue.terminal import (
    ConnectivityState,
    Money,
    Sale,
    SaleLine,
    Terminal,
    TerminalConfig,
    TerminalError,
)

CONFIG = TerminalConfig(
    # Long enough for HQ to commit on a loaded machine: the lost-answer case needs the
    # Redeem committed before the till gives up (gRPC cancels it at HQ at the deadline).
    call_timeout_s=2.0,
    probe_initial_backoff_s=0.05,
    probe_max_backoff_s=0.25,
    sync_initial_backoff_s=0.05,
    sync_max_backoff_s=0.25,
)


def sale_view(sale: Sale | None) -> dict[str, Any] | None:
    if sale is None:
        return None
    return {
        "sale": sale.transaction_id,
        "status": sale.status.value,
        "synced": sale.synced,
        "lines": [
            {"line_id": line.line_id, "card": line.card_number,
             "amount_minor": line.amount.amount_minor, "currency": line.amount.currency_code,
             "state": line.state.value, "paid": line.state.paid, "reason": line.hq_reason,
             "voided_memo": line.voided_credit_memo_number,
             "remainder_memo": line.remainder_credit_memo_number}
            for line in sale.lines
        ],
    }


def handle(terminal: Terminal, command: dict[str, Any]) -> dict[str, Any]:
    op = command["op"]
    if op == "add_tender":
        tender = terminal.add_tender(transaction_id=command["sale"], card_number=command["card"])
        return {"ok": True, "fencing_token": tender.fencing_token}
    if op == "complete_sale":
        lines = [SaleLine(line_id, card, Money(minor, currency))
                 for line_id, card, minor, currency in command["lines"]]
        result = terminal.complete_sale(transaction_id=command["sale"], lines=lines)
        return {"ok": True, "completed_offline": result.completed_offline,
                "lines": [line.line_id for line in result.lines],
                "reversed": [line.line_id for line in result.reversed_lines],
                "sequence_number": result.sequence_number}
    if op == "abandon_sale":
        terminal.abandon_sale(transaction_id=command["sale"])
        return {"ok": True}
    if op == "sale":
        return {"ok": True, "sale": sale_view(terminal.sale(transaction_id=command["sale"]))}
    if op == "open_sales":
        return {"ok": True, "sales": [sale_view(sale) for sale in terminal.open_sales()]}
    if op == "state":
        return {"ok": True, "state": terminal.state.value, "outbox": len(terminal.outbox())}
    if op == "wait_online":
        online = terminal.wait_for_state(ConnectivityState.ONLINE,
                                         timeout_s=float(command["timeout_s"]))
        return {"ok": online}
    raise ValueError(f"unknown op {op!r}")


def main(address: str, terminal_id: str, token: str, data_dir: str) -> None:
    with Terminal(address=address, terminal_id=terminal_id, credential=token,
                  data_dir=data_dir, config=CONFIG) as terminal:
        print(json.dumps({"ok": True, "ready": True}), flush=True)
        for text in sys.stdin:
            try:
                answer = handle(terminal, json.loads(text))
            except TerminalError as error:
                answer = {"ok": False, "error": type(error).__name__, "reason": error.reason,
                          "line_id": error.line_id,
                          "paid": [line.line_id for line in error.paid_lines]}
            print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
