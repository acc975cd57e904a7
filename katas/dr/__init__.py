"""Kata 7: disaster recovery orchestrator."""
