"""storedvalue's benchmarks, measured as a user deploys: HQ as `storedvalue serve` processes
(started with this interpreter), load from separate client processes, every figure beside a
baseline measured in the same run. One JSON line per metric on stdout, progress on stderr.

    python bench/run.py [--quick] [--only METRIC[,METRIC]] [--json-out FILE]
                        [--database-url postgresql+psycopg://USER@HOST/DB] [--hq-processes N]

See bench/README.md for what each metric measures and its budget.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from children import progress
from hq_under_test import Deployment
from metrics import SPECS, Metric, failed
from offline import offline_completion
from online import online_cycle, stalled_getcard
from parameters import parameter_propagation
from session import Session, Settings
from sync import offline_sync

Scenario = Callable[[Session, list[str]], list[Metric]]

SCENARIOS: tuple[tuple[tuple[str, ...], Scenario], ...] = (
    (("online_cycle_vs_echo", "online_cycle_p99_vs_echo", "online_cycle_vs_echo_c1",
      "online_cycle_vs_echo_c64"), online_cycle),
    (("stalled_300_getcard_p99_ratio",), stalled_getcard),
    (("offline_complete_p99_ms", "first_offline_over_deadline_ms"), offline_completion),
    (("sync_tx_per_s_100k", "sync_time_ratio_10x"), offline_sync),
    (("param_propagation_ms", "watchers_5000_propagation_ms"), parameter_propagation),
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog="metrics: " + ", ".join(spec.name for spec in SPECS))
    parser.add_argument("--quick", action="store_true",
                        help="shorter runs and a 20,000-transaction sync (a few minutes)")
    parser.add_argument("--only", metavar="METRIC[,METRIC]",
                        help="measure only these metrics")
    parser.add_argument("--json-out", type=Path, metavar="FILE",
                        help="also write the result lines to FILE")
    parser.add_argument("--database-url", metavar="URL",
                        help="run HQ on PostgreSQL: a scratch database is created on this "
                             "server for each measurement and dropped afterwards "
                             "(default: the embedded SQLite default in a fresh data dir)")
    parser.add_argument("--hq-processes", type=int, default=1, metavar="N",
                        help="HQ processes on the one database, load spread over them: "
                             "SQLite, one `serve --processes N` on one address; PostgreSQL, "
                             "N separate `serve` processes (default 1)")
    args = parser.parse_args(argv)
    known = {spec.name for spec in SPECS}
    if args.only:
        args.only = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(args.only) - known)
        if unknown:
            parser.error(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(known)}")
    else:
        args.only = [spec.name for spec in SPECS]
    if args.hq_processes < 1:
        parser.error("--hq-processes must be at least 1")
    return args


def _stop_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop_on_signal)
    session = Session(Settings.for_run(args.quick),
                      Deployment(database_url=args.database_url,
                                 hq_processes=args.hq_processes))
    out = args.json_out.open("w", encoding="utf-8") if args.json_out else None
    started = time.monotonic()
    try:
        for names, scenario in SCENARIOS:
            wanted = [name for name in names if name in args.only]
            if not wanted:
                continue
            progress(f"measuring {', '.join(wanted)}")
            try:
                metrics = scenario(session, wanted)
            except Exception as error:  # one broken measurement must not hide the others
                progress("".join(traceback.format_exception(error)).rstrip())
                metrics = [failed(name, f"{type(error).__name__}: {error}") for name in wanted]
            for metric in metrics:
                line = metric.as_json(session.context())
                print(line, flush=True)
                if out is not None:
                    out.write(line + "\n")
                    out.flush()
    except KeyboardInterrupt as interrupt:
        progress(f"interrupted ({interrupt or 'Ctrl-C'}): stopping every process started")
        return 130
    finally:
        session.close()
        if out is not None:
            out.close()
    progress(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
