"""Endpoints come from the environment, and a missing one is named, not discovered as a timeout."""

from __future__ import annotations

import pytest

from katas.infra.settings import ENDPOINT_VARIABLES, InfraSettings


def test_reads_katas_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KATAS_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    monkeypatch.setenv("KATAS_MQTT_BROKERS", "127.0.0.1:1883, 127.0.0.1:1884,")
    settings = InfraSettings()
    assert settings.require("kafka_bootstrap") == "127.0.0.1:9092"
    assert InfraSettings.split(settings.mqtt_brokers) == ["127.0.0.1:1883", "127.0.0.1:1884"]


def test_a_missing_endpoint_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KATAS_REDIS_URL", raising=False)
    with pytest.raises(RuntimeError, match="KATAS_REDIS_URL is not set"):
        InfraSettings().require("redis_url")


def test_services_listen_on_loopback_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KATAS_SERVICE_BIND_HOST", raising=False)
    assert InfraSettings().service_bind_host == "127.0.0.1"
    assert "KATAS_SERVICE_BIND_HOST" in ENDPOINT_VARIABLES
