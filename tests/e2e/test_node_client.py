"""A client in another language reads HQ's errors: the Node.js example in examples/node,
generated at run time from protos/ and decoding ErrorInfo with the vendored google.rpc protos.

Needs `node` and the npm packages @grpc/grpc-js and @grpc/proto-loader; CI installs them in
.ci/node (STOREDVALUE_NODE_MODULES names another node_modules folder)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import RunningHQ

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "node" / "read_errors.js"
UNKNOWN_CARD = "4111111111111111"  # Luhn-valid, never issued


def _node_modules() -> Path:
    default = REPO / ".ci" / "node" / "node_modules"
    folder = Path(os.environ.get("STOREDVALUE_NODE_MODULES", default))
    if shutil.which("node") is None or not (folder / "@grpc" / "grpc-js").is_dir():
        pytest.skip(f"node and @grpc/grpc-js in {folder} are needed (CI installs them)")
    return folder


def _run_example(hq: RunningHQ, token: str, card_number: str) -> dict[str, object]:
    env = {**os.environ, "NODE_PATH": str(_node_modules())}
    done = subprocess.run(
        ["node", str(EXAMPLE), hq.address, token, card_number],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_node_client_reads_the_reason_and_its_enum_value_from_an_error(
    hq: RunningHQ,
) -> None:
    till = hq.till("node-till")

    result = _run_example(hq, till.token, UNKNOWN_CARD)

    assert result["ok"] is False
    assert result["code"] == "NOT_FOUND"
    assert result["reason"] == "CARD_NOT_FOUND"
    assert result["domain"] == "storedvalue.dev"
    assert result["reason_enum_value"] == 10  # ERROR_REASON_CARD_NOT_FOUND in errors.proto
    metadata = result["metadata"]
    assert isinstance(metadata, dict) and metadata["card"].endswith("1111")


def test_a_node_client_reads_a_card_it_issued_through_python(hq: RunningHQ) -> None:
    till = hq.till("node-till")
    card = till.issue_gift_card(2500)

    result = _run_example(hq, till.token, card.card_number)

    assert result["ok"] is True
    card_seen = result["card"]
    assert isinstance(card_seen, dict)
    assert card_seen["balance"] == {"amount_minor": "2500", "currency_code": "EUR"}
