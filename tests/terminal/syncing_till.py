"""A till process for the sync SIGKILL test: opens the terminal whose outbox the test filled,
prints "SYNCING", syncs it in batches of BATCH_SIZE, printing "<done>" after each batch it
recorded, then "SYNCED", until killed.

Usage: python syncing_till.py ADDRESS TOKEN DATA_DIR BATCH_SIZE
"""

from __future__ import annotations

import sys

from storedvalue.terminal import ConnectivityState, SyncProgress, Terminal, TerminalConfig


def main(address: str, token: str, data_dir: str, batch_size: int) -> None:
    config = TerminalConfig(call_timeout_s=5.0, sync_automatically=False,
                            watch_parameters=False, sync_batch_size=batch_size)
    with Terminal(
        address=address, terminal_id="T1", credential=token, data_dir=data_dir, config=config
    ) as terminal:
        if not terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=10):
            raise SystemExit("never ONLINE")

        def report(progress: SyncProgress) -> None:
            print(progress.done, flush=True)

        terminal.on_sync_progress(report)
        print("SYNCING", flush=True)
        summary = terminal.sync_now()
        print("SYNCED" if summary.error is None else f"FAILED {summary.error}", flush=True)
        sys.stdin.readline()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
