"""The sensors kata's topics on the Kafka-protocol broker (see contracts in katas/sensors/README.md)."""

READINGS = "sensors.readings"
"""Every valid reading, in its stored unit (`Reading.to_json`), keyed by tenant/building: one building's
readings stay in order on one partition, so one aggregator worker sees all of a building's zones."""
DEADLETTER = "sensors.deadletter"
"""Every MQTT message that was not a reading: the original topic and bytes, with the reason."""

TOPIC_PARTITIONS: dict[str, int] = {READINGS: 4, DEADLETTER: 1}
"""Four partitions let up to four aggregator workers share the readings on a 2-core machine."""
