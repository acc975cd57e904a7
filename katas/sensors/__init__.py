"""Kata 4: real-time sensor data aggregation."""
