"""Kata 3: hybrid cloud deployment orchestrator."""
