"""Re-run the bench's offline sync (``sync_tx_per_s_100k``, ``sync_time_ratio_10x``) without
filling the tills' outboxes each time: the fill is kept, the sync replayed on copies.

Not a budget of bench/run.py: a tool for working on how the sync's time grows with its size.

    python bench/sync_replay.py prepare WORKDIR [--sizes 10000,100000]
    python bench/sync_replay.py replay WORKDIR [--py-spy PATH] [--py-spy-args "--native"]

``prepare`` starts ``storedvalue serve`` (this interpreter, SQLite in WORKDIR/kept/hq), issues
the cards, registers a till per size and fills each till's outbox as bench/syncing_till.py
does (every sale locked online, then completed offline), the tills in parallel on their own
cards (the bench's small till reuses the large one's first cards after syncing them: here
they are distinct, so that both can hold their locks at once). HQ is then stopped and
everything kept. ``replay`` copies the kept directories, starts HQ on the copy and syncs
each till in turn, smallest first, each from its own process with a fresh Terminal
(syncing_till.timed_sync, the bench's own timing), and prints the times and their ratio.
With ``--py-spy``, both HQ and the syncing till are recorded (raw collapsed stacks in
WORKDIR/run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
from fleet import issue_gift_cards, register_tills, update_parameters
from grpc_health.v1 import health_pb2, health_pb2_grpc
from syncing_till import fill_outbox, timed_sync

ADMIN_TOKEN = "bench-admin-sync-replay"  # noqa: S105 (a local HQ of the tool's own)
_LISTENING = re.compile(r"listening on ([\w.\-]+):(\d+)")


def start_hq(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    home.mkdir(parents=True, exist_ok=True)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("STOREDVALUE_")}
    env.update(XDG_DATA_HOME=str(home), STOREDVALUE_ADMIN_TOKEN=ADMIN_TOKEN)
    out = home / "serve.out"
    process = subprocess.Popen(
        [sys.executable, "-m", "storedvalue.cli", "serve", "--listen", "127.0.0.1:0"],
        env=env, stdout=out.open("wb"), stderr=(home / "serve.log").open("wb"),
        start_new_session=True)
    deadline = time.monotonic() + 60
    address = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((home / "serve.log").read_text())
        found = address or _LISTENING.search(out.read_text())
        if isinstance(found, re.Match):
            address = f"{found.group(1)}:{found.group(2)}"
        if address is not None and _serving(address):
            return process, address
        time.sleep(0.05)
    raise RuntimeError("HQ did not serve within 60 s")


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


def fill(spec: dict[str, Any], data_dir: str) -> dict[str, float]:
    return fill_outbox(spec, Path(data_dir))


def prepare(work: Path, sizes: list[int]) -> None:
    kept = work / "kept"
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(parents=True)
    process, address = start_hq(kept / "hq")
    try:
        version = update_parameters(address, ADMIN_TOKEN, gift_card_offline=True)
        issuer, *tills = register_tills(address, ADMIN_TOKEN, 1 + len(sizes))
        cards = issue_gift_cards(address, issuer, sum(sizes))
        specs, start = [], 0
        for size, till in zip(sizes, tills, strict=True):
            specs.append({"address": address, "admin_token": ADMIN_TOKEN,
                          "terminal_id": till.terminal_id, "token": till.token,
                          "cards": cards[start:start + size], "parameters_version": version,
                          "data_dir": str(kept / f"till-{size}")})
            start += size
        with ProcessPoolExecutor(len(specs)) as pool:
            fills = list(pool.map(fill, specs, [s["data_dir"] for s in specs]))
        print("filled", fills, flush=True)
    finally:
        stop(process)
    (kept / "specs.json").write_text(json.dumps(specs))


def sync_one(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    print(json.dumps(timed_sync(spec, Path(spec["data_dir"]))), flush=True)


def replay(work: Path, py_spy: str, py_spy_args: list[str]) -> None:
    kept, run = work / "kept", work / "run"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(kept, run)
    specs = json.loads((kept / "specs.json").read_text())
    load = os.getloadavg()
    process, address = start_hq(run / "hq")
    results = []
    try:
        for spec in specs:
            size = len(spec["cards"])
            spec = {**spec, "address": address, "hq_pids": [process.pid],
                    "data_dir": str(run / f"till-{size}")}
            spec_path = run / f"spec-{size}.json"
            spec_path.write_text(json.dumps(spec))
            command = [sys.executable, __file__, "sync-one", str(spec_path)]
            spies = []
            if py_spy:
                command = [py_spy, "record", "-o", str(run / f"till-{size}.raw"),
                           "-f", "raw", *py_spy_args, "--", *command]
                spies.append(subprocess.Popen(
                    [py_spy, "record", "-p", str(process.pid), "-o",
                     str(run / f"hq-{size}.raw"), "-f", "raw", *py_spy_args],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                time.sleep(1.0)
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            for spy in spies:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=120)
            result = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
            results.append((size, result))
            print(f"{size}: {result['seconds']:.3f} s, {size / result['seconds']:.0f} tx/s, "
                  f"till {result['till_cpu_s'] / size * 1e6:.1f} us/tx, "
                  f"HQ {result['hq_cpu_s'] / size * 1e6:.1f} us/tx", flush=True)
    finally:
        stop(process)
    (small, first), (large, last) = results[0], results[-1]
    print(f"ratio {last['seconds'] / first['seconds']:.2f} ({large} over {small}); "
          f"load before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("phase", choices=["prepare", "replay", "sync-one"])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--py-spy", default="")
    parser.add_argument("--py-spy-args", default="")
    args = parser.parse_args()
    if args.phase == "prepare":
        prepare(args.workdir, [int(size) for size in args.sizes.split(",")])
    elif args.phase == "replay":
        replay(args.workdir, args.py_spy, args.py_spy_args.split())
    else:
        sync_one(args.workdir)


if __name__ == "__main__":
    main()
