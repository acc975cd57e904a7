"""Kata 1: security event pipeline (SIEM-like)."""
