"""`storedvalue demo` plays the source article's story end to end with real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_the_demo_plays_the_offline_switch_story_and_exits_zero(tmp_path: Path) -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "storedvalue.cli", "demo"],
        capture_output=True, text=True, timeout=90,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )

    assert demo.returncode == 0, demo.stdout + demo.stderr
    story = demo.stdout
    for step in (
        "[HQ] serving",
        "'allow concluding gift card transactions in offline mode' is on",
        "HQ locked it for T1",
        "refused, CARD_LOCKED, held by T1",
        "the link between T1 and HQ is cut",
        'receipt says "completed offline"',
        "the card still shows 50.00 EUR, locked by T1",
        "the link between T1 and HQ is back",
        "the sync debited the card once: balance 30.00 EUR",
        "card unlocked",
        "[T2] locked the card for sale T2-sale-2 and redeemed 15.00 EUR online",
        "[HQ] stopped by SIGTERM, exit code 0",
        "demo finished",
    ):
        assert step in story, f"missing {step!r} in:\n{story}"
    positions = [story.index(marker) for marker in ("CARD_LOCKED", "is cut",
                                                    "completed offline", "is back",
                                                    "debited the card once", "[T2] locked")]
    assert positions == sorted(positions), "the story's steps came out of order"
    assert list(tmp_path.iterdir()) == [], "the demo left temporary files behind"
