"""Completing sales offline on the till (``offline_complete_p99_ms``,
``first_offline_over_deadline_ms``): the terminal library in its own process (offline_till.py)
against a fresh HQ process, tills and cards set up through the wire."""

from __future__ import annotations

import statistics
from typing import Any

from children import progress
from fleet import issue_gift_cards, register_tills, update_parameters
from metrics import Metric, percentile
from session import Session


def offline_completion(session: Session, names: list[str]) -> list[Metric]:
    settings = session.settings
    sales, trials = settings.offline_sales, settings.offline_trials
    with session.hq("offline") as hq:
        version = update_parameters(hq.address, hq.admin_token, gift_card_offline=True)
        (till,) = register_tills(hq.address, hq.admin_token, 1)
        cards = issue_gift_cards(hq.address, till, sales + 1 + trials)
        progress(f"offline till: {sales} sales and {trials} link drops")
        child = session.children.start_client("offline_till", {
            "address": hq.address, "terminal_id": till.terminal_id, "token": till.token,
            "cards": cards, "data_dir": str(session.workdir / "offline-till"),
            "sales": sales, "trials": trials, "parameters_version": version,
        }, name="offline till")
        try:
            result = child.receive(timeout=120 + sales * 0.05 + trials * 20)
        finally:
            session.children.stop(child)
    offline_ms: list[float] = result["offline_ms"]
    commit_ms: list[float] = result["commit_ms"]
    drop_ms: list[float] = result["drop_ms"]
    deadline_ms = float(result["deadline_ms"])
    over = [ms - deadline_ms for ms in drop_ms]
    metrics = {
        "offline_complete_p99_ms": Metric(
            "offline_complete_p99_ms", percentile(offline_ms, 0.99),
            baseline={"what": "one durable SQLite commit on the till's filesystem, p99, "
                              "interleaved with the sales",
                      "value": percentile(commit_ms, 0.99), "unit": "ms"},
            details=_spread("sale", offline_ms) | _spread("commit", commit_ms)
            | {"sales": len(offline_ms)}),
        "first_offline_over_deadline_ms": Metric(
            "first_offline_over_deadline_ms", max(over),
            baseline={"what": "the terminal's configured call deadline", "value": deadline_ms,
                      "unit": "ms"},
            details={"trials": len(over), "over_deadline_median_ms": statistics.median(over),
                     "over_deadline_min_ms": min(over)}),
    }
    return [metrics[name] for name in names]


def _spread(prefix: str, samples: list[float]) -> dict[str, Any]:
    return {f"{prefix}_p50_ms": percentile(samples, 0.5), f"{prefix}_max_ms": max(samples)}
