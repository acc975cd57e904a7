"""The platform's own services under bad input: a clear error, nothing stored, nothing crashed."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from katas.catalog import StackSpec
from katas.infra.clickhouse import ClickHouse, ClickHouseError
from katas.infra.servers import ChdbStore
from katas.infra.stack import Stack

WEBHOOK = StackSpec.model_validate(
    {"services": [{"name": "webhook", "module": "katas.infra.webhook_receiver"}]}
)


@pytest.fixture
def webhook(run_dir: Path) -> Iterator[tuple[str, Path]]:
    with Stack("hooks", WEBHOOK, run_dir / "hooks") as stack:
        endpoints = stack.endpoints()
        yield endpoints["webhook"], Path(endpoints["webhook_log"])


def test_webhook_refuses_bad_bodies_and_keeps_serving(webhook: tuple[str, Path]) -> None:
    url, log = webhook
    with httpx.Client(base_url=url) as client:
        not_json = client.post("/hooks/alerts", content=b"\xff{not json")
        assert not_json.status_code == 400
        assert "not JSON" in not_json.json()["error"]
        too_big = client.post("/hooks/alerts", content=b"[" + b"1," * 600_000 + b"1]")
        assert too_big.status_code == 413
        assert client.post("/nowhere", json={}).status_code == 404
        assert client.post("/hooks/alerts", json={"rule": "ok"}).status_code == 200
        metrics = client.get("/metrics").text
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["payload"] for line in lines] == [{"rule": "ok"}]
    assert "webhook_rejected_total 2" in metrics
    assert "webhook_received_total 1" in metrics


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=2048), channel=st.text(alphabet="abcxyz-_0123", min_size=1, max_size=20))
def test_webhook_never_fails_on_arbitrary_bytes(webhook: tuple[str, Path], body: bytes, channel: str) -> None:
    url, _ = webhook
    reply = httpx.post(f"{url}/hooks/{channel}", content=body)
    try:
        json.loads(body)
    except ValueError:
        assert reply.status_code == 400
    else:
        assert reply.status_code == 200


def test_chdb_store_answers_bad_sql_with_the_error_and_stays_up(
    run_dir: Path, launch: Callable[[Any], Any]
) -> None:
    store = launch(ChdbStore("chdb", run_dir))

    async def scenario() -> None:
        async with ClickHouse(store.endpoint) as ch:
            with pytest.raises(ClickHouseError, match=r"UNKNOWN_TABLE|Unknown table"):
                await ch.rows("SELECT * FROM missing_table")
            with pytest.raises(ClickHouseError, match="Syntax error"):
                await ch.execute("SELEKT 1")
            assert await ch.scalar("SELECT 40 + 2") == 42

    asyncio.run(scenario())
    empty = httpx.post(f"{store.endpoint}/", content=b"   ")
    assert empty.status_code == 400


def test_webhook_refuses_a_malformed_content_length(webhook: tuple[str, Path]) -> None:
    url, log = webhook
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}")
        assert sock.recv(1024).startswith(b"HTTP/1.1 400")
    assert log.read_text() == ""
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_a_service_stops_gracefully_on_sigterm(run_dir: Path) -> None:
    with Stack("hooks", WEBHOOK, run_dir / "hooks") as stack:
        service = stack["webhook"]
        service.stop()
        assert service.process is not None
        assert service.process.returncode == 0, service.log_tail()
        assert '"event": "stopped"' in service.log_tail(), "the worker runtime did not finish its shutdown"
