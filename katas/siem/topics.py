"""The SIEM's topics (see contracts.md for what each carries)."""

RAW = "siem.raw"
EVENTS = "siem.events"
DEADLETTER = "siem.deadletter"
ALERTS = "siem.alerts"

TOPIC_PARTITIONS: dict[str, int] = {RAW: 4, EVENTS: 4, DEADLETTER: 1, ALERTS: 2}
"""Partitions per topic: four lets up to four workers of a stage share the load on a 2-core machine."""
