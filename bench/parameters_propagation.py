"""How long a parameters change takes to reach connected tills (DESIGN.md section 7: under
1 s; the original product could take up to 24 hours).

A real HQ in this process on a SQLite file, `--tills` terminal libraries connected to it
(each following WatchParameters), and `--changes` UpdateParameters calls from the back
office. For each change: the time until every till applies the new version. Baseline, same
run: the round trip of one unary GetParameters call, the least any push could take.

    python bench/parameters_propagation.py [--tills 20] [--changes 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from bench_hq import ADMIN_TOKEN, prepare, serving

from storedvalue.terminal import Terminal, TerminalConfig
from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import back_office_service_pb2_grpc as bo_grpc
from storedvalue.v1 import terminal_service_pb2 as ts
from storedvalue.v1 import terminal_service_pb2_grpc as ts_grpc

BUDGET_SECONDS = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tills", type=int, default=20)
    parser.add_argument("--changes", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare(f"sqlite:///{tmp}/hq.sqlite3", card_count=1)
        try:
            with (
                serving(prepared, max_workers=args.tills + 8) as address,
                grpc.insecure_channel(address) as channel,
            ):
                admin = bo_grpc.BackOfficeServiceStub(channel)
                admin_md = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
                terminal_md = (("authorization", f"Bearer {prepared.bearer_token}"),)
                stub = ts_grpc.TerminalServiceStub(channel)
                round_trips = []
                for _ in range(50):
                    started = time.perf_counter()
                    stub.GetParameters(ts.GetParametersRequest(), metadata=terminal_md, timeout=5)
                    round_trips.append(time.perf_counter() - started)
                baseline = statistics.median(round_trips)

                tills = []
                for n in range(args.tills):
                    token = admin.RegisterTerminal(bo.RegisterTerminalRequest(
                        request_id=str(uuid.uuid4()), terminal_id=f"till-{n}"),
                        metadata=admin_md, timeout=5).credential.bearer_token
                    tills.append(Terminal(
                        address=address, terminal_id=f"till-{n}", credential=token,
                        data_dir=Path(tmp) / f"till-{n}",
                        config=TerminalConfig(sync_automatically=False)))
                try:
                    latencies = []
                    for change in range(args.changes):
                        started = time.perf_counter()
                        version = admin.UpdateParameters(bo.UpdateParametersRequest(
                            request_id=str(uuid.uuid4()),
                            credit_memo_offline_completion_allowed=change % 2 == 0),
                            metadata=admin_md, timeout=5).parameters.version
                        for till in tills:
                            if not till.wait_for_parameters(version=version, timeout_s=10):
                                raise SystemExit(f"{till.terminal_id} never saw v{version}")
                        latencies.append(time.perf_counter() - started)
                finally:
                    for till in tills:
                        till.close()
        finally:
            prepared.close()
    latencies.sort()
    p50 = statistics.median(latencies)
    worst = latencies[-1]
    print(f"baseline: one GetParameters round trip  {baseline * 1000:8.2f} ms")
    print(f"change -> all {args.tills} tills applied it: p50 {p50 * 1000:8.2f} ms "
          f"({p50 / baseline:.1f}x baseline), max {worst * 1000:8.2f} ms "
          f"({worst / baseline:.1f}x baseline)")
    verdict = "ok" if worst < BUDGET_SECONDS else "OVER BUDGET"
    print(f"budget: every change under {BUDGET_SECONDS:.0f} s: {verdict}")


if __name__ == "__main__":
    main()
