"""Kata 5: multi-tenant SaaS platform."""
