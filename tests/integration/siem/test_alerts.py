"""Alert routing on the real stack: a new alert pages once, an unacknowledged one is escalated on a timer,
and acknowledging it through the API stops the escalation."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from katas.catalog import get_card
from katas.infra.stack import Stack
from katas.siem.samples import SourceFleet

from .test_pipeline import send, wait_for, webhook_alerts

pytestmark = pytest.mark.integration
ESCALATE_AFTER_S = 4


def test_unacknowledged_alerts_escalate_until_acknowledged(run_dir: Path) -> None:
    card = get_card("siem")
    spec = card.stack.model_copy(
        update={"env": {**card.stack.env, "SIEM_ESCALATE_AFTER_S": str(ESCALATE_AFTER_S)}}
    )
    with Stack("siem", spec, run_dir / "siem") as stack:
        endpoints: dict[str, Any] = stack.endpoints()
        fleet = SourceFleet(n_sources=10, seed=3)
        send(endpoints, fleet.brute_force_then_success("dave", "192.0.2.44", "linux", attempts=6))

        first = wait_for(lambda: webhook_alerts(endpoints), 60, "the first page")[0]
        assert first["kind"] == "new"
        escalated = wait_for(
            lambda: [a for a in webhook_alerts(endpoints) if a["kind"].startswith("escalated")],
            ESCALATE_AFTER_S * 6,
            "an escalation of the unacknowledged alert",
        )
        assert escalated[0]["fingerprint"] == first["fingerprint"]
        assert escalated[0]["escalation_level"] >= 1

        headers = {"Authorization": f"Bearer {endpoints['analyst_token']}"}
        acked = httpx.post(
            f"{endpoints['query']}/alerts/{first['fingerprint']}/ack", headers=headers, timeout=30
        )
        assert acked.status_code == 200, acked.text
        pages = len(webhook_alerts(endpoints))
        time.sleep(ESCALATE_AFTER_S * 2.5)
        assert len(webhook_alerts(endpoints)) == pages, "an acknowledged alert must not page again"
        listed = httpx.get(f"{endpoints['query']}/alerts", headers=headers, timeout=30).json()
        mine = next(a for a in listed if a["fingerprint"] == first["fingerprint"])
        assert mine["status"] == "acknowledged", json.dumps(mine)
