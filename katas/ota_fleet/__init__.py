"""Kata 2: edge device fleet management (OTA updates and telemetry)."""
