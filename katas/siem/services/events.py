"""Reading `siem.events` records, shared by the stages that consume them (store, correlator)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiokafka import ConsumerRecord

from katas.infra.service import log
from katas.siem.normalize import NormalizedEvent


def read_events(records: Sequence[ConsumerRecord[bytes, bytes]]) -> list[dict[str, Any]]:
    """The normalized events of a batch. Only the normalizer writes the topic, so a record that is not an
    event is a bug there: it is logged loudly and skipped, never allowed to stop the stage."""
    events = []
    for record in records:
        try:
            events.append(NormalizedEvent.from_json(record.value or b"").fields)
        except ValueError as exc:
            log("unreadable_event", offset=record.offset, partition=record.partition, error=str(exc))
    return events
