"""Offline sync from a till's outbox to HQ (``sync_tx_per_s_100k``, ``sync_time_ratio_10x``):
one fresh HQ, two tills in their own processes (syncing_till.py), the first with a tenth of
the sales of the second; both sync to the same HQ, one after the other."""

from __future__ import annotations

from children import progress
from fleet import issue_gift_cards, register_tills, update_parameters
from metrics import Metric
from online import echo_servers
from session import Session


def offline_sync(session: Session, names: list[str]) -> list[Metric]:
    large = session.settings.sync_size
    small = large // 10
    with session.hq("sync") as hq, echo_servers(session, 1) as (echo_address,):
        version = update_parameters(hq.address, hq.admin_token, gift_card_offline=True)
        issuer, small_till, large_till = register_tills(hq.address, hq.admin_token, 3)
        cards = issue_gift_cards(hq.address, issuer, large)
        results = {}
        for size, till in ((small, small_till), (large, large_till)):
            progress(f"sync of {size} offline transactions")
            child = session.children.start_client("syncing_till", {
                "address": hq.address, "echo_address": echo_address,
                "admin_token": hq.admin_token, "terminal_id": till.terminal_id,
                "token": till.token, "cards": cards[:size],
                "data_dir": str(session.workdir / f"sync-till-{size}"),
                "parameters_version": version, "hq_pids": hq.pids(),
            }, name=f"syncing till ({size})")
            try:
                # Filling the outbox goes at the pace of LockCard: be generous.
                results[size] = child.receive(timeout=300 + size * 0.02)
            finally:
                session.children.stop(child)
            hq.check_alive()
    big, little = results[large], results[small]
    rate = large / big["seconds"]
    note = ({} if large == 100_000 else
            {"note": f"measured with {large:,} transactions, not 100,000 (--quick)"})
    metrics = {
        "sync_tx_per_s_100k": Metric(
            "sync_tx_per_s_100k", rate,
            baseline={"what": "the same batches echoed by the grpc.aio echo server: the wire "
                              "alone", "value": large / big["echo_seconds"], "unit": "tx/s"},
            details={"transactions": large, "seconds": big["seconds"], "batch": big["batch"],
                     "till_cpu_us_per_tx": round(big["till_cpu_s"] / large * 1e6, 1),
                     "hq_cpu_us_per_tx": round(big["hq_cpu_s"] / large * 1e6, 1),
                     "applied": big["applied"],
                     "applied_with_exception": big["applied_with_exception"],
                     "rejected": big["rejected"], **note}),
        "sync_time_ratio_10x": Metric(
            "sync_time_ratio_10x", big["seconds"] / little["seconds"],
            baseline={"what": f"sync time for {small:,} transactions", "unit": "s",
                      "value": little["seconds"]},
            details={"transactions": [small, large],
                     "seconds": [little["seconds"], big["seconds"]],
                     "echo_ratio": big["echo_seconds"] / little["echo_seconds"], **note}),
    }
    return [metrics[name] for name in names]
