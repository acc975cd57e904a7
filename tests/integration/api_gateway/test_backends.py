"""The five backend services as the stack runs them (real processes, real HTTP): six endpoints each, the
echo the gateway's tests rely on, internal fields for the gateway to strip, XML from the legacy one, and
clear errors for bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from katas.api_gateway.services.backend import BACKENDS
from katas.infra.servers import ServerError, ServiceProcess
from tests.integration.api_gateway.conftest import BACKEND_MODULE, start_backend


@pytest.fixture
def backends(launch: Callable[[Any], Any], run_dir: Path) -> dict[str, str]:
    started = {name: start_backend(launch, run_dir, name) for name in BACKENDS}
    return {name: f"http://{service.client_address}" for name, service in started.items()}


def test_every_backend_serves_six_endpoints(backends: dict[str, str]) -> None:
    for name, url in backends.items():
        with httpx.Client(base_url=url, timeout=5) as client:
            echo = client.post(f"/{name}/echo?trace=1", content=b"hello", headers={"X-Client": "acme"}).json()
            assert echo["service"] == name
            assert (echo["method"], echo["path"], echo["query"], echo["body"]) == (
                "POST", f"/{name}/echo", {"trace": "1"}, "hello"
            )  # fmt: skip
            assert echo["headers"]["x-client"] == "acme"
            assert client.get(f"/{name}/items").status_code == 200
            assert client.get(f"/{name}/items/1").status_code == 200
            created = client.post(f"/{name}/items", json={"name": "new"})
            assert created.status_code == 201
            assert client.put(f"/{name}/items/1", json={"name": "renamed"}).status_code == 200
            assert client.delete(f"/{name}/items/2").status_code == 204
            assert client.get(f"/{name}/items/2").status_code == 404


def test_answers_carry_internal_fields_and_the_legacy_backend_answers_xml(backends: dict[str, str]) -> None:
    orders = httpx.get(f"{backends['orders']}/orders/items/3", timeout=5).json()
    assert {"_internal", "cost_cents"} <= orders.keys()
    invoices = httpx.get(f"{backends['invoices']}/invoices/items", timeout=5)
    assert invoices.headers["content-type"].startswith("application/xml")
    assert invoices.text.startswith('<?xml version="1.0"?><items><item id="1">')


def test_bad_bodies_get_a_clear_400(backends: dict[str, str]) -> None:
    with httpx.Client(base_url=backends["orders"], timeout=5) as client:
        not_json = client.post("/orders/items", content=b"{nope")
        assert not_json.status_code == 400
        assert "not JSON" in not_json.json()["detail"]
        assert client.post("/orders/items", json=[1, 2]).status_code == 400
        assert client.put("/orders/items/99", json={}).status_code == 404


def test_an_unknown_backend_refuses_to_start_and_says_why(run_dir: Path) -> None:
    with pytest.raises(ServerError, match="unknown backend 'shipping'"):
        ServiceProcess("shipping", run_dir, module=BACKEND_MODULE, args=["shipping"]).start()
